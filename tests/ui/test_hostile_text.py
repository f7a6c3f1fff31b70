"""Names and errors from the network, in a real terminal: shown with their controls escaped, never obeyed.

The console runs on a pty (tests/ui/terminal_bytes.py) over a recorded daemon
whose node names (a subscription's), sniffed domain, DNS names, device label,
log line, errors, the name a process on the router gave itself (its comm, shown
for the router's own flows) and a WAN interface's name hold terminal control
sequences -- a window title (OSC 0), a clipboard write (OSC 52), a hyperlink
(OSC 8), a screen clear and colours (CSI), reverse video, a cursor report
request, a one-byte C1 CSI (U+009B), a carriage return -- and Rich/Textual
markup (`[bold]`, `[b]`, `[link=...]`). Every pane that shows them is visited,
with its details (a flow's, a DNS entry's, a node's) and a notification that
quotes a node. Every byte the console writes is read: no
ESC outside Textual's own CSI drawing, none of the injected sequences, and
the markup shown as written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from frozen import FIXTURE
from terminal_bytes import Pty, stray_escapes

HERE = Path(__file__).resolve().parent

NODE = "lab\x1b]0;PWNED-TITLE\x07\x9b2Jsocks"
NODE_ERROR = "refused \x1b[2J\x1b[31mRED [bold]MARKUP-ERR[/bold] \rCR-OVER"
DOMAIN = "dom\x1b]8;;http://evil.example/\x1b\\LINK\x1b]8;;\x1b\\.test"
CONN_ERROR = "[link=http://evil.example/]LINKED[/link] \x1b[5mBLINK"
DNS_NAME = "www\x1b[6n.evil.test"
LOG = "sniffed \x1b]52;c;cGF3bmVk\x07 host [bold]MARKUP-LOG[/bold]"
DEVICE = "lap\x1b[8mHIDDEN"
# Any process on the router names itself (prctl(PR_SET_NAME), 15 bytes at most); anyone who may make an
# interface names it (no '/', ':' or spaces; ESC and '[' are allowed, 15 bytes at most).
PROCESS = "sh\x1b]0;OWNED\x07"
IFNAME = "w[b]\x1b[7mREV"

# Sequences that must never reach the terminal as bytes (each would be obeyed).
INJECTED = [b"\x1b]0;PWNED", b"\xc2\x9b2J", b"\x1b[31mRED", b"\rCR-OVER", b"\x1b]8;;http://evil", b"\x1b[5mBLINK",
            b"\x1b[6n.evil", b"\x1b]52;", b"\x1b[8mHIDDEN", b"\x1b]0;OWNED", b"\x1b[7mREV"]


def hostile_recording(path: Path) -> None:
    """The lab's recording with hostile text in every field the network (or a subscription) writes."""
    data = json.loads(FIXTURE.read_text())
    snap = data["snapshot"]
    old = snap["nodes"][0]["name"]
    snap["nodes"][0]["name"] = NODE
    snap["nodes"][0]["last_error"] = NODE_ERROR
    for g in snap["groups"]:
        g["members"] = [NODE if m == old else m for m in g["members"]]
        for k in ("selected4", "selected6", "pinned"):
            if g[k] == old:
                g[k] = NODE
    newest = max(c["started"] for c in snap["connections"])
    conn = snap["connections"][0]
    conn.update(started=newest + 10, domain=DOMAIN, error=CONN_ERROR, state="failed", node=NODE)
    snap["devices"] = {mac: DEVICE for mac in snap["devices"]}
    # The router's own traffic: a WAN interface bound, and the shown flow opened by a process on the router.
    wan = next(i for i in snap["interfaces"] if i["name"] == "wan0")
    wan.update(name=IFNAME, configured=True, bound=True, side="wan", programs=["wan_egress (egress)"])
    conn.update(pid=4242, process=PROCESS)
    row = snap["dns"]["cache"][0]
    row.update(name=DNS_NAME, stored=max(r["stored"] for r in snap["dns"]["cache"]) + 10)
    data["logs"].append({"time": data["logs"][-1]["time"] + 1, "level": "warn", "logger": "daetui.sniff",
                         "message": LOG})
    path.write_text(json.dumps(data))


def test_hostile_names_never_reach_the_terminal(tmp_path):
    recording = tmp_path / "hostile.json"
    hostile_recording(recording)
    term = Pty([sys.executable, str(HERE / "frozen_in_terminal.py"), str(recording)], size=(200, 50))
    try:
        term.wait_for(b"wan_egress")      # Overview: the interfaces, the WAN one's name
        # Each step waits (bounded) until the console has drawn what the step is for.
        term.keys(b"2")                   # Connections: the sniffed domain, the device's label, the process
        term.wait_for(b"Destination")
        term.keys(b"\r")                  # the flow's details: domain, error, node, device, process
        term.wait_for(b"Why")
        term.keys(b"\x1b")
        term.keys(b"5")                   # Logs
        term.wait_for(b"MARKUP-LOG")
        term.keys(b"6")                   # DNS: the cache
        term.wait_for(b"Upstreams")
        term.keys(b"\r")                  # the entry in full
        term.wait_for(" hits · from ".encode())
        term.keys(b"7")                   # Dialers: the group's line names the node
        term.wait_for(b"Last error")
        term.keys(b"j")                   # the node's line and its details with the last error
        term.wait_for(b"MARKUP-ERR")
        term.keys(b"c", pause=2.0)        # check it: the notification quotes its name and error
        out = term.output
    finally:
        term.close()

    assert b"Destination" in out and b"Last error" in out  # the panes were drawn
    found = [seq for seq in INJECTED if seq in out]
    assert not found, f"control sequences from the data reached the terminal: {found}"
    assert stray_escapes(out) == 0, "ESC bytes that are not Textual's own drawing reached the terminal"
    # Shown, escaped, where the whole text fits (the details lines, the log).
    assert b"lab\\x1b]0;PWNED-TITLE\\x07\\x9b2Jsocks" in out
    assert b"\\x1b]52;c;cGF3bmVk\\x07" in out
    assert b"sh\\x1b]0;OWNED\\x07" in out
    # Markup is shown as written, not read.
    assert b"w[b]\\x1b[7mREV" in out     # the interface's name, whole (Overview)
    assert b"[bold]MARKUP-LOG[/bold]" in out
    assert b"[bold]MARKUP-ERR[/bold]" in out
    assert b"[link=http://evil.example/]LINKED[/link]" in out
