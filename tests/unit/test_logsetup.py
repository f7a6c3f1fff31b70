"""The daemon's log: bounded and rotated in a file (stdout and stderr following it), the journal's format
under systemd, and no secret in any line. Each case runs in a process of its own (logging is global)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(code: str, env: dict[str, str] | None = None, stderr_to: Path | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    full.pop("JOURNAL_STREAM", None)
    full.pop("INVOCATION_ID", None)
    full.update(env or {})
    with open(stderr_to or os.devnull, "ab") as err:
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=err,
                             timeout=60)
    assert out.returncode == 0, out
    return out


def test_the_log_file_is_rotated_and_bounded_with_stderr_following_it(tmp_path):
    log = tmp_path / "run" / "daetui.log"
    # 3000 records of ~130 bytes and 3000 raw writes to fd 2 (a C library, a traceback): 0.5 MB through a
    # log bounded at 3 x 20 kB.
    run(f"""
import logging, os, sys
from daetui.logsetup import setup_logging
setup_logging("info", file={str(log)!r}, max_bytes=20_000, backups=2)
log = logging.getLogger("daetui.test")
for i in range(3000):
    log.info("line %05d %s", i, "x" * 100)
    os.write(2, b"raw stderr %05d\\n" % i)
    if i % 100 == 0:
        print("print to stdout", i)
sys.stdout.flush()
assert os.path.samestat(os.fstat(2), os.stat({str(log)!r})), "stderr is not on the current log file"
assert os.path.samestat(os.fstat(1), os.stat({str(log)!r})), "stdout is not on the current log file"
""")
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["daetui.log", "daetui.log.1", "daetui.log.2"]
    for p in log.parent.iterdir():
        # One record and the raw writes since the last record may go over the bound, no more.
        assert p.stat().st_size <= 20_000 + 200, (p, p.stat().st_size)
    text = log.read_text()
    assert "line 02999" in text and "raw stderr 02999" in text   # the newest lines, both kinds, in the file


def test_the_log_masks_secrets_and_escapes_controls(tmp_path):
    log = tmp_path / "daetui.log"
    run(f"""
import logging
from daetui.logsetup import setup_logging
from daetui.redact import remember_link
setup_logging("debug", file={str(log)!r})
remember_link("trojan://Very-Secret-Pass@203.0.113.10:443")
log = logging.getLogger("daetui.test")
log.info("node %s: %s", "t", "password Very-Secret-Pass refused")
log.warning("fetch https://sub.example.com/api/tK9f2LqZx81mWvP0?token=tK9f2LqZx81mWvP0 failed")
log.error("vless://0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0@203.0.113.10:443 left out")
log.info("sniffed %s", "evil\\x1b]0;title\\x07.example\\rX")
try:
    raise ValueError("id '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f' is not a UUID")
except ValueError:
    log.exception("parsing failed")
""")
    text = log.read_text()
    for secret in ("Very-Secret-Pass", "tK9f2LqZx81mWvP0", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f"):
        assert secret not in text, text
    assert "node t: password *** refused" in text
    assert "vless://***@203.0.113.10:443 left out" in text
    assert "ValueError: id '***' is not a UUID" in text
    assert "sniffed evil\\x1b]0;title\\x07.example\\rX" in text and "\x1b" not in text   # shown, not obeyed


def test_under_systemd_lines_go_to_the_journal_with_their_priority(tmp_path):
    err = tmp_path / "stderr"
    err.touch()
    st = err.stat()
    run("""
import logging
from daetui.logsetup import setup_logging
setup_logging("info")
logging.getLogger("daetui.x").warning("two\\nlines")
logging.getLogger("daetui.x").info("fine")
""", env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "INVOCATION_ID": "0123"}, stderr_to=err)
    assert err.read_text().splitlines() == ["<4>daetui.x: two", "<4>lines", "<6>daetui.x: fine"]


def test_a_journal_stream_that_is_not_stderr_is_not_the_journal(tmp_path):
    err = tmp_path / "stderr"
    run("""
import logging
from daetui.logsetup import setup_logging
setup_logging("info")
logging.getLogger("daetui.x").info("fine")
""", env={"JOURNAL_STREAM": "1:1"}, stderr_to=err)
    assert err.read_text().rstrip().endswith("INFO    daetui.x: fine")


def test_run_by_systemd_is_a_unit_s_output_not_a_terminal(tmp_path):
    code = "from daetui.logsetup import run_by_systemd; print(run_by_systemd())"
    err = tmp_path / "stderr"
    assert run(code, env={"INVOCATION_ID": "0123"}, stderr_to=err).stdout.strip() == b"True"
    assert run(code, stderr_to=err).stdout.strip() == b"False"
    # Inherited by a shell in a terminal (a terminal emulator run as a user service): no unit's output.
    master, slave = pty.openpty()
    try:
        full = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"} | {"INVOCATION_ID": "0123"}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=slave,
                             timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert out.stdout.strip() == b"False"


def test_the_timestamp_is_the_records_own_second() -> None:
    """The formatted time is kept for a second: a record of the next second, or another datefmt, gets its own."""
    import logging
    import time

    from daetui.logsetup import DATEFMT, _RedactingFormatter

    f = _RedactingFormatter("%(asctime)s %(message)s", DATEFMT)
    base = time.mktime((2026, 12, 6, 21, 0, 0, 0, 0, -1))

    def at(t: float) -> logging.LogRecord:
        r = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        r.created, r.msecs = t, (t % 1) * 1000
        return r

    assert f.format(at(base + 0.1)) == "2026-12-06 21:00:00 m" == f.format(at(base + 0.9))
    assert f.format(at(base + 1.0)) == "2026-12-06 21:00:01 m"
    assert f.formatTime(at(base + 1.5), "%H:%M") == "21:00"
    assert _RedactingFormatter("%(asctime)s").format(at(base + 2.25)).endswith(":02,250")   # no datefmt: ms
