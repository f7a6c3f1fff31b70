"""Text from the network made safe to put on a terminal.

Node names from subscriptions, sniffed names (TLS SNI, HTTP Host, QUIC), DNS
names, log lines and error texts are written by whoever is on the other end.
A terminal obeys the control characters in them: ESC starts a sequence that
can retitle the window, redraw or hide the screen, or (in some terminals)
write to the clipboard; C1 controls (U+0080-U+009F, e.g. U+009B, a one-byte
CSI) do the same in terminals that read them; CR rewinds a line; bidi
overrides reorder what is shown. `printable` writes every such character as a
visible escape (`\\x1b`, `\\r`, `\\u202e`), so it is shown, never obeyed, and
a name that holds one is plainly odd on the screen.

`printable` is the one function the console (daetui.ui) and the command line
(daetui.cli) use for such text; Rich markup in it is a separate matter,
handled where text is given to a widget that reads markup.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# Non-printable by Python's measure (Unicode "Other" and "Separator" but space): controls, format
# characters (bidi overrides, zero-width marks), line and paragraph separators, unassigned code points.
# Joiners stay: emoji sequences (flags, families) are common in node names and harmless.
_KEEP = {"\u200c", "\u200d"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def printable(text: object, newlines: bool = False) -> str:
    """`text` with every control and format character written as an escape; `newlines` keeps line breaks
    (for multi-line texts such as an error with its source line; a table cell must stay one line)."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():  # the usual case, and a fast one
        return s
    out = []
    for ch in s:
        if ch.isprintable() or ch in _KEEP or (newlines and ch == "\n"):
            out.append(ch)
        else:
            out.append(_escape(ch))
    return "".join(out)


def printable_lines(text: object) -> str:
    """`printable(text, newlines=True)`: a multi-line text, each line made safe."""
    return printable(text, newlines=True)
