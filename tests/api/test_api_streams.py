"""The controller API's streams against the real daemon: a thousand dashboards and one that never reads cost
the daemon a bounded buffer, not its relays; /memory and /logs as mihomo streams them."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import lan_connect, udp_churn, wait_for

from daetui.control.state import Snapshot
from daetui.lab.topology import ADDR, ECHO_PORT
from testkit.api import ADDRESS, SECRET, ApiLab, api_config

pytestmark = [pytest.mark.kernel]

RELAYED, DIRECT = ADDR.hosts4[0], ADDR.hosts4[1]
RULES = f"""
  "dip({RELAYED}) && dport({ECHO_PORT}) -> proxy",   # relayed (a group without nodes: the direct dialer)
  "dip({DIRECT}) -> direct",
"""
CLIENTS = 1000
KERNEL_FLOWS = 120      # UDP flows the kernel passes direct, listed by /connections: some 100 KB per message


@pytest.fixture(scope="module")
def api(lab, tmp_path_factory) -> Iterator[ApiLab]:
    a = ApiLab(lab, tmp_path_factory.mktemp("api-streams"), api_config(groups="[group.proxy]\n", rules=RULES))
    a.start()
    try:
        yield a
    finally:
        a.stop()



def snapshot(api: ApiLab) -> Snapshot:
    return api.snapshot(flows=False, dns=False)


def echoes(lab, payload: bytes = b"still relayed") -> bool:
    with lan_connect(lab, RELAYED, ECHO_PORT, timeout=10) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(4096)
            if not chunk:
                return False
            got += chunk
        return got == payload


CROWD = """
import asyncio, json, resource, socket
import aiohttp

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
HOST, PORT = ADDRESS.rsplit(":", 1)
counts = [0] * CLIENTS
failures = []

async def reader(session, i):
    path = (f"/connections?token={SECRET}&interval=1000" if i % 2 else f"/traffic?token={SECRET}")
    try:
        async with session.ws_connect(BASE + path, heartbeat=None, autoping=True) as ws:
            async for msg in ws:
                json.loads(msg.data)
                counts[i] += 1
    except Exception as e:
        failures.append(f"{i}: {type(e).__name__}: {e}")

def non_reader():
    # A websocket handshake with a small receive window, then never a read.
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((HOST, int(PORT)))
    s.sendall((f"GET /connections?token={SECRET}&interval=100 HTTP/1.1\\r\\nHost: {ADDRESS}\\r\\n"
               "Upgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Version: 13\\r\\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n").encode())
    return s

async def main():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.create_task(reader(session, i)) for i in range(CLIENTS)]
        stuck = non_reader()
        print("open", flush=True)
        await asyncio.sleep(HOLD)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stuck.close()
    print(json.dumps({"counts": counts, "failures": failures[:20]}), flush=True)

asyncio.run(main())
"""


def test_a_thousand_dashboards_and_one_that_never_reads(api, lab):
    # Flows for /connections to list: its messages are big enough to fill the non-reader's buffer quickly.
    udp_churn(lab, ADDR.client4, DIRECT, KERNEL_FLOWS, dport=9, repeat=1)
    before = snapshot(api)
    hold = 25
    code = (f"CLIENTS = {CLIENTS}\nHOLD = {hold}\n" + CROWD)
    out: dict[str, Any] = {}

    def crowd() -> None:
        r = api.python(code, timeout=hold + 120)
        out["result"] = r
    t = threading.Thread(target=crowd)
    t.start()
    try:
        # Every client attached (websockets open at once, all counted).
        wait_for(lambda: snapshot(api).api.clients >= CLIENTS + 1, timeout=60, interval=0.5)
        # The relays do not wait for the dashboards.
        for _ in range(10):
            assert echoes(lab)
        # The non-reader's messages are dropped (counted), not queued without bound.
        wait_for(lambda: snapshot(api).api.dropped > before.api.dropped, timeout=hold - 5, interval=0.5)
        during = snapshot(api)
    finally:
        t.join(hold + 150)
    r: subprocess.CompletedProcess[str] = out["result"]
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["failures"] == []
    counts = result["counts"]
    # Each dashboard got its stream: a message a second or so while it held (generously: at least a few).
    assert min(counts) >= 3, sorted(counts)[:10]
    # The event loop kept up (generous: a stalled daemon shows seconds).
    assert during.budgets.loop_lag_p99_ms < 1000, during.budgets
    assert during.budgets.loop_lag_max_ms < 5000, during.budgets
    # Once the clients are gone, so are their streams (the non-reader's too).
    wait_for(lambda: snapshot(api).api.clients == 0, timeout=60, interval=0.5)
    assert echoes(lab)


def test_memory_streams_the_resident_set(api):
    r = api.curl("GET", "/memory", max_time=2.5)
    lines = [json.loads(ln) for ln in r.text.splitlines() if ln.strip()]
    assert r.status == 200 and len(lines) >= 2
    for m in lines:
        assert set(m) == {"inuse", "oslimit"} and m["inuse"] > 1 << 20 and m["oslimit"] >= 0


LOG_CLIENT = """
import asyncio, json
import aiohttp

async def main():
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {SECRET}"}) as session:
        async with session.ws_connect(BASE + PATH + f"&token={SECRET}") as ws:
            await asyncio.sleep(0.5)
            async with session.delete(BASE + "/connections") as r:      # logs a line at info
                assert r.status == 204
            async with session.delete(BASE + "/connections/no-such-id") as r:   # and one at debug
                assert r.status == 204
            got = []
            try:
                async with asyncio.timeout(WAIT):
                    async for msg in ws:
                        got.append(json.loads(msg.data))
                        if any(MARK in json.dumps(m) for m in got):
                            break
            except TimeoutError:
                pass
    print(json.dumps(got))

asyncio.run(main())
"""


def log_messages(api: ApiLab, path: str, mark: str, wait: float = 5.0) -> list[dict[str, Any]]:
    code = f"PATH = {path!r}\nMARK = {mark!r}\nWAIT = {wait}\n" + LOG_CLIENT
    r = api.python(code, timeout=wait + 30)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_logs_stream_the_daemons_lines_as_mihomo(api):
    got = log_messages(api, "/logs?level=info", "closed 0 relayed")
    line = next(m for m in got if "closed 0 relayed" in m["payload"])
    assert line["type"] == "info" and set(line) == {"type", "payload"}
    got = log_messages(api, "/logs?level=info&format=structured", "closed 0 relayed")
    line = next(m for m in got if "closed 0 relayed" in m["message"])
    assert line["level"] == "info" and set(line) == {"time", "level", "message", "fields"}
    assert len(line["time"]) == 8 and line["time"].count(":") == 2
    # At warning, the info line is not sent.
    got = log_messages(api, "/logs?level=warning", "closed 0 relayed", wait=2)
    assert not any("closed 0 relayed" in json.dumps(m) for m in got)


@pytest.mark.parametrize("level", ["verbose", "WARNING", "warn", "5"])
def test_logs_refuse_a_level_mihomo_does_not_know(api, level):
    r = api.curl("GET", f"/logs?level={level}")
    assert r.status == 400 and "level" in r.json["message"]


def test_a_quiet_stream_ends_when_its_client_goes(api):
    base = snapshot(api).api.clients
    procs = [subprocess.Popen(["ip", "netns", "exec", api.lab.router, "curl", "-sS", "-N", "--max-time", "2",
                               "-H", f"Authorization: Bearer {SECRET}", f"http://{ADDRESS}/logs?level=silent"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(3)]
    try:
        wait_for(lambda: snapshot(api).api.clients >= base + 3, timeout=10, interval=0.2)
    finally:
        for p in procs:
            p.wait(20)
    # Nothing was ever sent to them; still, their streams end once curl has gone.
    wait_for(lambda: snapshot(api).api.clients <= base, timeout=10, interval=0.2)


def test_traffic_streams_chunked_without_an_upgrade(api):
    r = api.curl("GET", "/traffic", max_time=2.5)
    lines = [json.loads(ln) for ln in r.text.splitlines() if ln.strip()]
    assert r.status == 200 and len(lines) >= 2
    assert all(set(m) == {"up", "down"} and m["up"] >= 0 and m["down"] >= 0 for m in lines)
