"""Undo what a daemon that did not stop cleanly left behind."""

from __future__ import annotations

import logging
from pathlib import Path

from daetui.dataplane.journal import Journal, JournalError
from daetui.dataplane.system import SystemChanges, describe
from daetui.net.netns import current_netns_inode
from daetui.paths import pid_is_daetui

log = logging.getLogger("daetui.dataplane")


def cleanup_leftovers(state_file: Path, discard_foreign: bool = False) -> list[str]:
    """Undo, newest first, every change in a journal whose daemon is gone.

    Returns one line per change undone. Refuses a journal written by a daemon
    that is still running, and one written in another network namespace --
    unless `discard_foreign`: in a default run dir (one per namespace) such a
    journal is from a namespace that no longer exists, and so are its changes.
    """
    if not state_file.exists():
        return []
    header, changes = Journal.read(state_file)
    if header.get("netns") not in (None, current_netns_inode()):
        if discard_foreign:
            log.warning("%s was written in a network namespace that is gone; discarding it", state_file)
            state_file.unlink()
            return []
        raise JournalError(f"{state_file} was written in another network namespace; run cleanup there "
                           "(or pass the right --run-dir)")
    pid = int(header.get("pid", 0))
    if pid_is_daetui(pid):
        raise JournalError(f"daetui (pid {pid}) is still running; stop it instead of cleaning up after it")
    journal = Journal(state_file)
    journal.changes = changes
    done = [describe(c) for c in reversed(changes)]
    sc = SystemChanges(journal)
    try:
        problems = sc.undo_all()
    finally:
        journal.close()
        sc.close()
    for p in problems:
        log.error("cleanup: %s", p)
    return done
