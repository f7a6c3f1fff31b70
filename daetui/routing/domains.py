"""Matching a domain name against a `domain()` function's values, as dae does.

    suffix: example.com   example.com and every name under it (a bare value means suffix)
    full: example.com     exactly that name
    keyword: google       names containing it
    regex: '\\.goo.*'     names the regular expression finds something in
    geosite:cn            the entries of that geosite list (any of the four kinds)

A set holds tens of thousands of names (geosite:cn), so suffixes and full
names live in hash sets, looked up once per label of the name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field


def normalize(name: str) -> str:
    """Lower case, no trailing dot: how names are compared."""
    return name.strip().rstrip(".").lower()


@dataclass(frozen=True)
class DomainSet:
    """The values of one domain function (after geosite/ext expansion)."""

    full: frozenset[str] = frozenset()
    suffix: frozenset[str] = frozenset()
    keyword: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()
    _compiled: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def build(cls, entries: Iterable[tuple[str, str]]) -> DomainSet:
        """From (kind, value) pairs; regexes are checked (re.error for a bad one)."""
        full, suffix, keyword, regex = set(), set(), [], []
        for kind, value in entries:
            if kind == "full":
                full.add(normalize(value))
            elif kind == "suffix":
                suffix.add(normalize(value).lstrip("."))
            elif kind == "keyword":
                keyword.append(value.lower())
            elif kind == "regex":
                re.compile(value)
                regex.append(value)
            else:  # pragma: no cover - kinds are checked by the caller
                raise ValueError(kind)
        compiled = re.compile("|".join(f"(?:{r})" for r in regex), re.IGNORECASE) if regex else None
        return cls(frozenset(full), frozenset(suffix), tuple(dict.fromkeys(keyword)), tuple(regex), compiled)

    def __len__(self) -> int:
        return len(self.full) + len(self.suffix) + len(self.keyword) + len(self.regex)

    def matches(self, name: str) -> bool:
        n = normalize(name)
        if not n:
            return False
        if n in self.full or n in self.suffix:
            return True
        if self.suffix:
            rest = n
            while "." in rest:
                rest = rest.split(".", 1)[1]
                if rest in self.suffix:
                    return True
        if any(k in n for k in self.keyword):
            return True
        return self._compiled is not None and self._compiled.search(n) is not None
