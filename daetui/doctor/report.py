"""A check's verdict, and the report `daetui doctor` prints."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Verdict(enum.Enum):
    """How a check came out: ok, worth a look, or daetui cannot run."""

    OK = "ok"
    WARN = "warn"
    BLOCKER = "BLOCKER"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, the verdict, why, and what to do when it is not ok."""

    name: str
    verdict: Verdict
    why: str
    fix: str = ""


def ok(name: str, why: str) -> Check:
    return Check(name, Verdict.OK, why)


def warn(name: str, why: str, fix: str = "") -> Check:
    return Check(name, Verdict.WARN, why, fix)


def blocker(name: str, why: str, fix: str) -> Check:
    return Check(name, Verdict.BLOCKER, why, fix)


def not_probed(name: str, why: str) -> Check:
    """A probe that needs privileges this process lacks: the privileges check names the blocker."""
    return warn(name, f"not probed: {why}", "run `daetui doctor` as root to probe it")


def clean(text: str) -> str:
    """Text read from the system (interface and filter names, rule lines) with control characters escaped."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def format_report(checks: Iterable[Check]) -> str:
    """One line per check (verdict, name, why), a `fix:` line under each that is not ok, and a summary."""
    checks = list(checks)
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{c.verdict.value:<7}  {c.name:<{width}}  {c.why}")
        if c.fix and c.verdict is not Verdict.OK:
            lines.append(f"{'':<7}  {'':<{width}}  fix: {c.fix}")
    blockers = sum(c.verdict is Verdict.BLOCKER for c in checks)
    warnings = sum(c.verdict is Verdict.WARN for c in checks)
    if blockers:
        lines.append(f"{blockers} blocker(s), {warnings} warning(s): daetui cannot run here until the blockers are "
                     "fixed")
    else:
        lines.append(f"no blockers, {warnings} warning(s): daetui can run here")
    return "\n".join(lines)


def exit_code(checks: Iterable[Check]) -> int:
    """1 when any check is a blocker, else 0."""
    return 1 if any(c.verdict is Verdict.BLOCKER for c in checks) else 0
