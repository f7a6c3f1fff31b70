"""The journal of every change daetui makes to the system.

A change is written here before it is made (after checking that the thing
does not exist yet, so the journal never claims what someone else made), and
removed once undone. After a crash the next start, or `daetui cleanup`,
reads the journal and undoes what it lists, in reverse order.
The file is rewritten atomically (temp file + rename) on every change.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from daetui.net.netns import current_netns_inode

Change = dict[str, Any]


class JournalError(RuntimeError):
    """The journal belongs elsewhere or cannot be written."""


class Journal:
    """An append-and-remove list of changes, persisted as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.netns = current_netns_inode()
        self.changes: list[Change] = []

    @classmethod
    def read(cls, path: Path) -> tuple[dict[str, Any], list[Change]]:
        """The header and changes of an existing journal."""
        data = json.loads(path.read_text())
        return data.get("header", {}), list(data.get("changes", []))

    def _flush(self) -> None:
        data = {"header": {"pid": os.getpid(), "netns": self.netns, "written": time.time()},
                "changes": self.changes}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def record(self, change: Change) -> Change:
        """Note a change that is about to be made."""
        self.changes.append(change)
        self._flush()
        return change

    def forget(self, change: Change) -> None:
        """Drop a change that was undone (or never happened)."""
        try:
            self.changes.remove(change)
        except ValueError:
            return
        self._flush()

    def close(self) -> None:
        """Remove the file once nothing is left to undo."""
        if not self.changes:
            self.path.unlink(missing_ok=True)
        else:
            self._flush()
