"""The memory suite's names part: a subscription whose node names hold control characters, in a captured console.

A subscription list is served over HTTP from the router's loopback (a real
fetch by the daemon, as from a provider); its share links are named with
terminal control sequences: a window title (OSC 0), a clipboard write
(OSC 52), a hyperlink (OSC 8), a screen clear, colours, a one-byte C1 CSI
(U+009B), a carriage return, a bidi override, and Textual markup. The daemon
takes the nodes into a group; the console (`daetui attach`) runs on a real
terminal (a pty) and every byte it writes is read while the Dialers pane lists
the nodes and the details of each are shown, and the Logs pane shows the fetch.
Pass: 0 ESC bytes from the names reach the terminal, and the names are shown
(escaped).
"""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import quote

from helpers import Daemon, wait_for
from terminal_bytes import Pty, stray_escapes

from daetui.control.client import call_once
from daetui.lab.topology import ADDR

PORT = 8711
NAMES = [
    "tokyo\x1b]0;PWNED-TITLE\x07",
    "paste\x1b]52;c;cGF3bmVk\x07",
    "link\x1b]8;;http://evil.example/\x1b\\x\x1b]8;;\x1b\\",
    "clear\x1b[2J\x1b[H\x1b[31mRED",
    "c1\x9b2J\x9b31m",
    "rewind\rOVERWRITE",
    "bidi\u202eevil",
    "[bold]MARKUP[/bold][link=http://evil.example/]L[/link]",
]
INJECTED = [b"\x1b]0;PWNED", b"\x1b]52;", b"\x1b]8;;http://evil", b"\x1b[31mRED", b"\xc2\x9b", b"\rOVERWRITE",
            "\u202e".encode()]
WEB4 = ADDR.hosts4[0]


def test_control_characters_in_subscription_names_never_reach_the_terminal(lab, daemon: Daemon, tmp_path,
                                                                              figures):
    served = tmp_path / "served"
    served.mkdir()
    links = [f"socks5://{ADDR.hosts4[1]}:{1100 + i}#{quote(name, safe='')}" for i, name in enumerate(NAMES)]
    (served / "list.txt").write_text("\n".join(links) + "\n")
    server = subprocess.Popen(["ip", "netns", "exec", lab.router, sys.executable, "-m", "http.server", str(PORT),
                               "--bind", "127.0.0.1", "--directory", str(served)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        daemon.config_path.write_text(f"""
[global]
lan_interface = ["lan0"]
tcp_check_url = ["http://{WEB4}/", "{WEB4}", "{ADDR.hosts6[0]}"]
check_interval = "10m"

[subscription]
evil = "http://127.0.0.1:{PORT}/list.txt"

[group.proxy]
filter = ["subtag(evil)"]
policy = "min"

[routing]
rules = ["dport(9) -> proxy"]
fallback = "direct"
""")
        daemon.start()
        control = daemon.run_dir / "control.sock"
        wait_for(lambda: len(call_once(control, lambda c: c.snapshot(flows=False)).nodes) == len(NAMES), timeout=30)
        term = Pty([sys.executable, "-m", "daetui", "attach", "--run-dir", str(daemon.run_dir)], size=(180, 45))
        try:
            term.wait_for(b"Overview")
            term.keys(b"7")                              # Dialers: the group and its nodes
            term.wait_for(b"Last error")
            for _ in NAMES:
                term.keys(b"j", pause=0.6)               # each node, with its details under the table
            term.wait_for(b"tokyo")
            term.keys(b"5")                              # Logs: the fetch, the checks
            term.wait_for(b"subscription evil")
            out = term.output
        finally:
            term.close()
    finally:
        server.terminate()
        server.wait(10)

    stray = stray_escapes(out)
    found = [seq for seq in INJECTED if seq in out]
    figures.add("ESC bytes from names in the console", stray, "0")
    figures.add("injected sequences on the terminal", len(found), "0")
    assert stray == 0 and not found, f"control sequences from node names reached the terminal: {found}"
    assert b"tokyo\\x1b]0;PWNED-TITLE\\x07" in out      # the name is shown, escaped
    assert b"[bold]MARKUP[/bold]" in out                 # markup shown as written
