"""The rows of the benchmarks' one table (bench/all.py), and `--summary FILE`, with which each benchmark adds its own.

Each benchmark given `--summary FILE` appends one JSON object (one line) to FILE per row it
measures, as it measures it (a benchmark that fails later keeps the rows it has):

    row       the row's text (ROWS), or a sub-row's name, with `parent` the row it belongs to
    value     daetui's figure, in `unit`
    baseline  the peer or baseline measured in the same run (`baseline_of` names it), or null
    ratio     value/baseline or baseline/value, as the row reads: `ratio_of` says which
              ("daetui/ss-redir": higher is daetui ahead for a rate, behind for a latency)
    goal      the goal's text (a row's own, from ROWS; null for a sub-row)
    met       the goal met (bool), or null where there is no goal
    note      what the figure is exactly, when the row's text does not say it all

Nothing here but the standard library: bench/rules.py imports it without the lab's modules.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# The table's rows in its order, and their goals (issue 15; the API's from issue 14). A row of the
# issue with two figures ("direct throughput / new connections/s", "start to ready ..., reload of
# 1000 rules") is two rows here.
KERNEL_DECISION = "kernel cost of a new-flow decision, 4096 rules (BPF_PROG_TEST_RUN)"
PROXY_CPS = "proxied new connections/s against ss-redir → same ss-server"
PROXY_THROUGHPUT = "proxied throughput against ss-redir"
DNS_CACHED = "cached DNS queries/s against dnsmasq"
DNS_MISS = "DNS miss latency p50 against dnsmasq"
DIRECT_THROUGHPUT = "direct throughput against no daetui"
DIRECT_CPS = "direct new connections/s against no daetui"
RELAYED_CPS = "flows relayed by user space (direct via sniffing): new connections/s against kernel-only"
PANE_REFRESH = "Connections pane refresh, 11k flows"
START = "start to ready (kernel programs loaded)"
RELOAD = "reload of 1000 rules"
RSS = "RSS of the headless daemon with 10k flows"
API_CONNECTIONS = "controller API: GET /connections p95, 10k flows"
API_DASHBOARD = "controller API: relayed throughput with a dashboard attached against without"

ROWS: dict[str, str] = {
    KERNEL_DECISION: "≤ 2 µs at 4096 rules",
    PROXY_CPS: "ratio ≥ 1.0",
    PROXY_THROUGHPUT: "keep ≥ 1.1",
    DNS_CACHED: "≥ 1.0",
    DNS_MISS: "≤ 1.5×",  # noqa: RUF001 - the issue's text
    DIRECT_THROUGHPUT: "≥ 0.97",
    DIRECT_CPS: "≥ 0.95",
    RELAYED_CPS: "≥ 0.5",
    PANE_REFRESH: "≤ 50 ms",
    START: "≤ 3 s",
    RELOAD: "≤ 300 ms",
    RSS: "≤ 80 MB",
    API_CONNECTIONS: "≤ 100 ms",
    API_DASHBOARD: "≥ 0.95",
}


def add_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--summary", metavar="FILE", type=Path,
                    help="append one JSON object per row of bench/all.py's table measured here to FILE")


def record(path: Path | None, row: str, value: float, unit: str, *, baseline: float | None = None,
           baseline_of: str | None = None, ratio: float | None = None, ratio_of: str | None = None,
           met: bool | None = None, parent: str | None = None, note: str | None = None) -> None:
    """Append one row's figures to `path` (nothing without a path). A row of ROWS carries its goal."""
    if path is None:
        return
    if parent is None and row not in ROWS:
        raise ValueError(f"not a row of the table: {row!r} (a sub-row needs its parent)")
    if ratio is not None and not math.isfinite(ratio):
        ratio = None
    obj = {"row": row, "value": value, "unit": unit, "baseline": baseline, "baseline_of": baseline_of,
           "ratio": ratio, "ratio_of": ratio_of, "goal": ROWS.get(row) if parent is None else None,
           "met": met, "parent": parent, "note": note}
    with open(path, "a") as f:
        f.write(json.dumps(obj, ensure_ascii=False) + "\n")
