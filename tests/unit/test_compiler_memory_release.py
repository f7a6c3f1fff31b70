"""Giving back the compiler's memory is an optimisation: nothing in it may stop a start."""

from __future__ import annotations

import types

from daetui.dataplane import compilermemory


def test_a_libc_without_malloc_trim_musl_still_pages_out(monkeypatch):
    advised: list[tuple[int, int, int]] = []
    fake = types.SimpleNamespace(madvise=lambda start, size, advice: advised.append((start, size, advice)) or 0)
    monkeypatch.setattr(compilermemory, "_libc", lambda: fake)
    assert compilermemory.release_compiler_memory() >= 0
    assert all(advice == compilermemory.MADV_PAGEOUT for _, _, advice in advised)


def test_any_failure_is_swallowed(monkeypatch):
    def broken() -> object:
        raise AttributeError("no such symbol")

    monkeypatch.setattr(compilermemory, "_libc", broken)
    assert compilermemory.release_compiler_memory() == 0
