"""Every benchmark, one after the other, and one table of their figures (`make bench`).

Each benchmark runs as a process of its own, alone (they share the lab's addresses and this
machine's cores), with `--summary` to a file of its own; then one Markdown table of every row,
daetui against the baseline or peer measured in the same run, is printed and written to --out:

    row | daetui | baseline/peer | ratio | goal | met

A sub-row (↳) is a figure behind the row above it. A benchmark that fails (or is stopped at its
time limit) shows its rows as "failed: <the last line of its stderr>", and the run goes on. Each
benchmark's output is kept in a log file, named at the end.

The full run should take 10-15 minutes on a 2-core machine (an estimate: --quick took 2 minutes
there); --quick is a smoke run with short durations and single rounds, its figures rough.

    .venv/bin/python bench/all.py [--quick] [--out bench/RESULTS.md] [--only start.py,rules.py]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

# The checkout, not bench/ (whose dns.py would stand in for dnspython), on the path; bench/ last.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
sys.path.append(str(_HERE))

import _summary as S  # noqa: E402


@dataclass
class Bench:
    script: str
    full: list[str]          # options of the full run
    quick: list[str]         # options of --quick
    rows: list[str]          # the table's rows it measures
    limit: float             # seconds before it is stopped (full run; --quick: half)
    log: Path | None = None
    seconds: float = 0.0
    failed: str = ""         # why it failed; "" if it did not
    records: list[dict[str, object]] = field(default_factory=list)


BENCHES = [
    Bench("rules.py", [], ["--repeat", "2000", "--trials", "3"],
          [S.KERNEL_DECISION], 600),
    Bench("proxy_path.py", ["--obfs", "none"], ["--obfs", "none", "--rounds", "1", "--seconds", "2"],
          [S.PROXY_CPS, S.PROXY_THROUGHPUT], 900),
    Bench("dns.py", [], ["--rounds", "1", "--seconds", "2", "--misses", "200"],
          [S.DNS_CACHED, S.DNS_MISS], 600),
    Bench("direct_path.py", [], ["--rounds", "1", "--seconds", "2"],
          [S.DIRECT_THROUGHPUT, S.DIRECT_CPS, S.RELAYED_CPS], 600),
    Bench("console.py", [], ["--refreshes", "5", "--rounds", "1", "--seconds", "2"],
          [S.PANE_REFRESH], 600),
    Bench("start.py", [], [],
          [S.START, S.RELOAD, S.RSS], 600),
    Bench("api.py", ["--rounds", "3"], ["--requests", "5", "--rounds", "1", "--seconds", "2"],
          [S.API_CONNECTIONS, S.API_DASHBOARD], 900),
]


def run(bench: Bench, quick: bool, logs: Path) -> None:
    """Run one benchmark with --summary; its records, or why it failed. Its stdout and stderr go to
    bench.log, and its stderr to ours too; stopped (SIGINT: its cleanup runs) at its time limit."""
    summary = logs / (bench.script.removesuffix(".py") + ".jsonl")
    bench.log = logs / (bench.script.removesuffix(".py") + ".log")
    argv = [sys.executable, str(_HERE / bench.script), *(bench.quick if quick else bench.full),
            "--summary", str(summary)]
    limit = bench.limit / 2 if quick else bench.limit
    print(f"\n== {bench.script} {' '.join(argv[2:-2])}  (log: {bench.log})", flush=True)
    last_err = ""
    t0 = time.monotonic()
    with open(bench.log, "w") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        # Its own session: our terminal's ^C reaches it only through us, by its pid.
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, errors="replace", start_new_session=True, cwd=_HERE.parent)
        lock = threading.Lock()

        def pump(stream: IO[str], echo: TextIO, is_err: bool) -> None:
            nonlocal last_err
            for line in stream:
                with lock:
                    log.write(line)
                    log.flush()
                echo.write(line)
                echo.flush()
                if is_err and line.strip():
                    last_err = line.strip()

        pumps = [threading.Thread(target=pump, args=(p.stdout, sys.stdout, False), daemon=True),
                 threading.Thread(target=pump, args=(p.stderr, sys.stderr, True), daemon=True)]
        for t in pumps:
            t.start()
        stopped = False
        try:
            p.wait(limit)
        except subprocess.TimeoutExpired:
            stopped = True
            p.send_signal(signal.SIGINT)  # KeyboardInterrupt: its finally takes its lab down
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        except KeyboardInterrupt:
            p.send_signal(signal.SIGINT)
            p.wait(120)
            raise
        for t in pumps:
            t.join(10)
    bench.seconds = time.monotonic() - t0
    if summary.exists():
        bench.records = [json.loads(line) for line in summary.read_text().splitlines() if line.strip()]
    if stopped:
        bench.failed = f"stopped after {limit:.0f}s" + (f" ({last_err})" if last_err else "")
    elif p.returncode != 0:
        bench.failed = last_err or f"exit status {p.returncode}"
    print(f"== {bench.script}: {'failed: ' + bench.failed if bench.failed else 'done'} in {bench.seconds:.0f}s",
          flush=True)


# -- the table ---------------------------------------------------------------------------------------------

def number(v: float | None) -> str:
    if v is None:
        return ""
    a = abs(v)
    return f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 0.1 else f"{v:.3f}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_rows(benches: list[Bench]) -> list[str]:
    """The table's lines: the rows in ROWS' order (each followed by its sub-rows), then notes."""
    by_row: dict[str, dict[str, object]] = {}
    subs: dict[str, list[dict[str, object]]] = {}
    failed: dict[str, str] = {}
    for b in benches:
        for r in b.records:
            if r.get("parent"):
                subs.setdefault(str(r["parent"]), []).append(r)
            else:
                by_row[str(r["row"])] = r
        for row in b.rows:
            if row not in by_row:
                failed[row] = (f"failed: {b.failed}" if b.failed
                               else f"missing: {b.script} gave no figure for it")
    lines = ["| row | daetui | baseline/peer | ratio | goal | met |", "|---|---|---|---|---|---|"]
    notes = []
    wanted = [row for b in benches for row in b.rows]
    for row in (row for row in S.ROWS if row in wanted):
        r = by_row.get(row)
        if r is None:
            lines.append(f"| {cell(row)} | {cell(failed.get(row, 'missing'))} |  |  | {S.ROWS[row]} |  |")
        else:
            lines.append(line(r, row))
            if r.get("note"):
                notes.append(f"{len(notes) + 1}. {row}: {r['note']}")
                lines[-1] = lines[-1].replace(f"| {cell(row)} |", f"| {cell(row)} <sup>{len(notes)}</sup> |", 1)
        for sub in subs.get(row, []):
            lines.append(line(sub, f"↳ {sub['row']}"))
    return lines + (["", *notes] if notes else [])


def line(r: dict[str, object], label: str) -> str:
    value, unit = r["value"], str(r.get("unit") or "")
    v = f"{number(value)} {unit}".strip() if isinstance(value, int | float) else str(value)
    base = r.get("baseline")
    b = f"{number(base)} {unit} ({r.get('baseline_of') or 'baseline'})" if isinstance(base, int | float) else ""
    ratio = r.get("ratio")
    q = (f"{ratio:.2f}" if abs(ratio) < 10 else number(ratio)) if isinstance(ratio, int | float) else ""
    q += f" ({r.get('ratio_of')})" if q and r.get("ratio_of") else ""
    met = r.get("met")
    m = "yes" if met is True else "**no**" if met is False else ""
    return f"| {cell(label)} | {cell(v)} | {cell(b)} | {cell(q)} | {cell(str(r.get('goal') or ''))} | {m} |"


def machine() -> str:
    model = "unknown CPU"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"kernel {platform.release()}, {os.cpu_count()} CPUs ({model})"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=_HERE.parent).stdout.strip()
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{head}{' (with uncommitted changes)' if dirty else ''}" if head else "unknown commit"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short durations, single rounds: a smoke run")
    ap.add_argument("--out", type=Path, default=_HERE / "RESULTS.md", help="where the table is written")
    ap.add_argument("--only", help="comma-separated benchmarks (e.g. start.py,rules.py): only these")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/all.py needs root (network namespaces, BPF)")
    benches = BENCHES
    if args.only:
        names = {n if n.endswith(".py") else n + ".py" for n in args.only.split(",")}
        unknown = names - {b.script for b in BENCHES}
        if unknown:
            sys.exit(f"no such benchmark: {', '.join(sorted(unknown))}")
        benches = [b for b in BENCHES if b.script in names]
    logs = Path(tempfile.mkdtemp(prefix="daetui-bench-"))
    started = datetime.datetime.now().astimezone()
    t0 = time.monotonic()
    for b in benches:
        run(b, args.quick, logs)
    minutes = (time.monotonic() - t0) / 60
    kind = "--quick (short durations, single rounds: rough figures)" if args.quick else "full run"
    head = (f"daetui benchmarks, {started:%Y-%m-%d %H:%M %Z}: {machine()}; commit {commit()}; "
            f"{kind}, {minutes:.0f} min")
    ran = "; ".join(f"{b.script} {' '.join(b.quick if args.quick else b.full)}".strip()
                    + f" {b.seconds:.0f}s" for b in benches)
    text = "\n".join([head, "", *table_rows(benches), "",
                      "Ratios are taken as the ratio column says (a/b); baselines and peers were measured in the "
                      "same run. A sub-row (↳) is a figure behind the row above it.",
                      f"Run: {ran}."]) + "\n"
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}; each benchmark's output in {logs}")
    return 1 if any(b.failed for b in benches) else 0


if __name__ == "__main__":
    sys.exit(main())
