"""Text from the network made safe for a terminal (daetui.termtext)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daetui.termtext import printable


@pytest.mark.parametrize("text, shown", [
    ("www.example.com", "www.example.com"),
    ("a\x1b]0;title\x07b", "a\\x1b]0;title\\x07b"),
    ("\x9b31m", "\\x9b31m"),
    ("line\rover", "line\\rover"),
    ("two\nlines\ttab", "two\\nlines\\ttab"),
    ("abc\u202edcb", "abc\\u202edcb"),            # a bidi override would reorder what follows
    ("\U000e0001tag", "\\U000e0001tag"),
    ("🇩🇪 Frankfurt 01", "🇩🇪 Frankfurt 01"),   # flags and emoji are names, not controls
    ("👩\u200d💻 dev", "👩\u200d💻 dev"),
])
def test_printable(text, shown):
    assert printable(text) == shown


def test_newlines_kept_when_asked():
    assert printable("error\n    line\x1b[2J", newlines=True) == "error\n    line\\x1b[2J"


@given(st.text())
def test_nothing_a_terminal_obeys_is_left(text):
    out = printable(text)
    assert all(ch.isprintable() or ch in "\u200c\u200d" for ch in out)
