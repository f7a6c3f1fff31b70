"""The daemon the console starts: its log bounded and rotated, and no secret of its config anywhere it speaks.

The daemon is started as `daetui --config F` starts one (launch.spawn_daemon),
in the lab's router, with a config whose nodes hold a password, a UUID, a
socks5 user's password, and a subscription URL with a token (its fetch fails,
with an error). A config with a UUID typo'd is refused, the UUID masked. A log left by an earlier run, over the bound,
is in the run dir. Then:

- the log is rotated at start (the old one kept as daetui.log.1), the current
  file under the bound, and the daemon's stderr on the current file;
- none of the secrets is in the log, the snapshot (JSON, as `daetui status
  --json` prints it), the log lines the control socket serves, nor on the
  console's screen (Logs and Dialers, the node's details). A reload reports
  the subscription's failure again, once the console's feed is there to get it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from drive import app_text, until

from daetui.control import wire
from daetui.control.client import ControlClient, call_once, wait_for_daemon
from daetui.lab.topology import ADDR
from daetui.logsetup import LOG_MAX_BYTES
from daetui.paths import RunPaths
from daetui.ui.app import DaetuiApp
from daetui.ui.launch import spawn_daemon, stop_daemon

pytestmark = [pytest.mark.kernel]

PASSWORD = "Sup3r-S3cret-pw"
SOCKS_PASSWORD = "W0nderland-Key"
UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
TYPO_UUID = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2"   # one digit short: not a UUID, still the account's id
TOKEN = "tK9f2LqZx81mWvP0"
SS_USERINFO = base64.urlsafe_b64encode(f"aes-256-gcm:{PASSWORD}".encode()).decode().rstrip("=")
SECRETS = (PASSWORD, SOCKS_PASSWORD, UUID, TYPO_UUID, TOKEN, SS_USERINFO)
WEB4, WEB6 = ADDR.hosts4[0], ADDR.hosts6[0]

CONFIG = f"""
[global]
lan_interface = ["lan0"]
tcp_check_url = ["http://{WEB4}/", "{WEB4}", "{WEB6}"]
check_interval = "10m"

[node]
ss1 = "ss://{SS_USERINFO}@{WEB4}:8388#ss1"
vl = "vless://{UUID}@{WEB4}:8443?security=none&type=tcp#vl"
s5 = "socks5://alice:{SOCKS_PASSWORD}@{WEB4}:1081"

[subscription]
sub = "http://{WEB4}:8099/sub/{TOKEN}?token={TOKEN}"

[group.proxy]
filter = ["name(ss1, vl, s5)"]
policy = "min"

[routing]
rules = ["dport(9) -> proxy"]
fallback = "direct"
"""


@pytest.fixture(scope="module")
def started(lab, tmp_path_factory):
    """The daemon as the console starts it; its run dir holds an earlier run's log, over the bound."""
    tmp = tmp_path_factory.mktemp("console-daemon")
    cfg = tmp / "daetui.toml"
    cfg.write_text(CONFIG)
    run = RunPaths(tmp / "run")
    run.root.mkdir()
    old = b"an earlier run's line\n" * (LOG_MAX_BYTES // 22 + 100)
    (run.root / "daetui.log").write_bytes(old)
    # Whatever runs the tests, this console is no systemd unit's.
    saved = {k: os.environ.pop(k) for k in ("JOURNAL_STREAM", "INVOCATION_ID") if k in os.environ}
    try:
        child = spawn_daemon(str(cfg), run, netns=lab.router)
    finally:
        os.environ.update(saved)

    async def up() -> None:
        c = await wait_for_daemon(run.control, 90, alive=lambda: child.poll() is None)
        try:
            for _ in range(300):   # started, and the group's first checks done
                snap = await c.snapshot(flows=False)
                nodes = {n.name: n for n in snap.nodes}
                if snap.health.started and nodes.get("ss1") and nodes["ss1"].last_error:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the daemon did not start and check its nodes")
            # A reload fetches again: the failure is reported again, now to the console's feed too.
            assert (await c.reload()).ok
        finally:
            await c.close()
    try:
        asyncio.run(up())
        yield run, child, len(old)
    finally:
        if child.poll() is None:
            stop_daemon(run)
        child.wait(30)


def test_the_log_of_a_daemon_the_console_starts_is_rotated_and_bounded(started):
    run, child, old_size = started
    log = run.root / "daetui.log"
    assert (run.root / "daetui.log.1").stat().st_size >= old_size   # the earlier run's log, rotated away
    assert 0 < log.stat().st_size < LOG_MAX_BYTES
    assert "daetui" in log.read_text()          # this run's lines are in the new file
    # What bypasses logging (a traceback, BCC's compiler) goes where the log goes, not to the old file.
    assert Path(os.readlink(f"/proc/{child.pid}/fd/2")) == log
    assert Path(os.readlink(f"/proc/{child.pid}/fd/1")) == log


def test_no_secret_in_the_log_the_snapshot_or_the_console(started):
    run, _, _ = started
    log = (run.root / "daetui.log").read_text()
    assert "subscription sub: fetch failed" in log   # reported, without its URL's token
    leaked = [s for s in SECRETS if s in log]
    assert not leaked, f"secrets in the daemon's log: {leaked}"

    snap = call_once(run.control, lambda c: c.snapshot(flows=True))
    text = json.dumps(wire.encode(snap))
    assert "ss1" in text and "s5" in text
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"secrets in the snapshot: {leaked}"

    lines = call_once(run.control, lambda c: c.logs())
    served = "\n".join(line.message for line in lines)
    assert "subscription sub: fetch failed" in served
    leaked = [s for s in SECRETS if s in served]
    assert not leaked, f"secrets in the log lines the control socket serves: {leaked}"

    async def console() -> list[str]:
        async def connect() -> ControlClient:
            c = ControlClient(run.control)
            await c.connect()
            return c
        app = DaetuiApp(connect, refresh=0.3)
        screens = []
        async with app.run_test(size=(200, 50)) as pilot:
            await until(pilot, lambda: app.snapshot is not None)
            await pilot.press("5")
            failed = "subscription sub: fetch failed"
            screens.append(await until(pilot, lambda: (t := app_text(app)) and failed in t and t))
            await pilot.press("7")
            screens.append(await until(pilot, lambda: (t := app_text(app)) and "ss1" in t and t))
            for _ in range(4):   # each node's line and its details
                await pilot.press("j")
                await pilot.pause(0.2)
                screens.append(app_text(app))
        return screens

    for screen in asyncio.run(console()):
        leaked = [s for s in SECRETS if s in screen]
        assert not leaked, f"secrets on the console: {leaked}\n{screen}"


def test_a_node_with_a_typo_is_refused_at_load_with_its_secret_masked(tmp_path):
    cfg = tmp_path / "daetui.toml"
    cfg.write_text(CONFIG.replace("[subscription]", f'typo = "vless://{TYPO_UUID}@{WEB4}:8443?security=none#typo"\n\n'
                                                    "[subscription]"))
    r = subprocess.run([sys.executable, "-m", "daetui", "validate", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    line = next(n for n, t in enumerate(CONFIG.replace("[subscription]", "typo\n\n[subscription]").splitlines(), 1)
                if t.startswith("typo"))
    assert f"{cfg}:{line}:8: node.typo: vless:// link: id '***' is not a UUID" in r.stderr
    leaked = [s for s in SECRETS if s in r.stdout + r.stderr]
    assert not leaked, f"secrets in the loader's error: {leaked}"
