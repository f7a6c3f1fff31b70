"""The constants of the kernel programs, read from `bpf/daetui.h`.

The header is the one place they are written; user space reads them from it
instead of keeping a copy. `ABI.MATCH_DIP`, `ABI.N_COUNTERS`, ...
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from daetui.resources import bpf_dir

HEADER = bpf_dir() / "daetui.h"

_DEFINE = re.compile(r"^#define\s+([A-Z][A-Z0-9_]*)\s+(0x[0-9a-fA-F]+|\d+)(?:ULL|UL|U)?\b", re.M)


class _Abi:
    def __init__(self, values: dict[str, int]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> int:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"bpf/daetui.h defines no {name}") from None

    def prefixed(self, prefix: str) -> dict[str, int]:
        """All constants starting with `prefix`, without it: prefixed('CNT_') -> {'PACKETS': 0, ...}."""
        return {k[len(prefix):]: v for k, v in self._values.items() if k.startswith(prefix)}


@cache
def load_abi(header: Path = HEADER) -> _Abi:
    """Parse every integer `#define` of the header."""
    return _Abi({m.group(1): int(m.group(2), 0) for m in _DEFINE.finditer(header.read_text())})


ABI = load_abi()
