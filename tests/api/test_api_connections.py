"""The controller API's /connections and /traffic against the real daemon: relayed flows (through a real
ss-server, and direct from user space) and the kernel's direct flows, as mihomo lists them; closing them.

The first tests need no kernel: the encoder's JSON for a hand-made snapshot (ids, shape, escaping, totals).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import http_get, lan_connect, udp_exchange, wait_for

from daetui.abi.constants import ABI
from daetui.abi.flowrecord import RawFlows, struct_for
from daetui.api.flowview import FlowEncoder, FlowView, kernel_id, relayed_conn_id, relayed_id
from daetui.control import wire
from daetui.control.client import call_once
from daetui.control.connections import Connection
from daetui.control.state import Health, Snapshot
from daetui.lab.topology import ADDR, ECHO_PORT, HTTP_PORT
from testkit.api import SECRET, ApiLab, api_config
from testkit.peers.shadowsocks import SsServer

RELAYED, DIRECT, SNIFFED = ADDR.hosts4    # rule 1's host (its echo port), rule 0's host, the sniffing one's
SS_PORT = 8401
NODE = "ss-node"
RULES = f"""
  "dip({DIRECT}) -> direct",
  "dip({RELAYED}) && dport({ECHO_PORT}) -> proxy",
  "domain(suffix: sniffed.test) -> proxy",
"""
DIRECT_NAME = "direct.example.test"
V4_MAPPED = b"\0" * 10 + b"\xff\xff"
FIXTURE = Path(__file__).resolve().parents[1] / "ui" / "fixtures" / "lab.json"   # a real daemon's snapshot


# -- the encoder alone -------------------------------------------------------------------------------------------

def _snapshot(*conns: Connection) -> Snapshot:
    health = Health(pid=1, started=0.0, config="x.toml", tproxy_port=12345, generation=0, fallback="direct",
                    fail_open=True)
    return Snapshot(time=time.time(), health=health, connections=conns)


def _conn(cid: int, **kw: Any) -> Connection:
    fields: dict[str, Any] = dict(proto="tcp", src=("192.0.2.2", 40000 + cid), dst=("203.0.113.10", 443),
                                  started=time.time(), rule_index=None, rule="fallback", outbound="direct",
                                  stage="userspace")
    fields.update(kw)
    return Connection(id=cid, **fields)


def test_relayed_ids_name_their_connection_and_daemon() -> None:
    tag = int(time.time() * 1000)
    fid = relayed_id(tag, 42)
    assert len(fid) == 36 and fid.count("-") == 4
    assert relayed_conn_id(tag, fid) == 42
    assert relayed_conn_id(tag + 1, fid) is None          # another daemon's (or a restarted one's)
    assert relayed_conn_id(tag, "not-an-id") is None
    k = kernel_id(b"key" + b"first-seen")
    assert k == kernel_id(b"key" + b"first-seen") != kernel_id(b"key" + b"another first-seen")
    assert relayed_conn_id(tag, k) is None


def test_the_encoder_writes_mihomos_shape_and_keeps_network_text_as_data() -> None:
    hostile = 'evil.test","x":"\n\x1b[31m'
    enc = FlowEncoder(1234, lambda addr: ["dns.example.test"] if addr == "203.0.113.10" else [])
    open_conn = _conn(1, domain=hostile, sniffed="tls", up=10, down=20, node="n1", outbound="proxy")
    plain = _conn(2, dst=("203.0.113.11", 80), up=5, down=6)
    done = _conn(3, up=100, down=200, state="closed", ended=time.time())
    view = enc.build(_snapshot(open_conn, plain, done), {}, 7440.0)
    doc = json.loads(view.text)
    assert set(doc) == {"downloadTotal", "uploadTotal", "connections", "memory"}
    by_id = {c["id"]: c for c in doc["connections"]}
    assert set(by_id) == {relayed_id(1234, 1), relayed_id(1234, 2)}          # the closed one is not listed
    c1 = by_id[relayed_id(1234, 1)]
    assert c1["metadata"]["sniffHost"] == hostile and c1["metadata"]["host"] == hostile
    assert c1["chains"] == ["n1", "proxy"] and (c1["upload"], c1["download"]) == (10, 20)
    assert c1["rule"] == "Match" and c1["rulePayload"] == ""
    assert c1["metadata"]["sourcePort"] == "40001" and c1["metadata"]["destinationPort"] == "443"
    c2 = by_id[relayed_id(1234, 2)]
    assert c2["metadata"]["host"] == "" and c2["metadata"]["sniffHost"] == ""
    assert by_id[relayed_id(1234, 1)]["start"].endswith("Z")
    # Totals: every connection's bytes, closed ones too; a second view adds only what grew.
    assert (doc["uploadTotal"], doc["downloadTotal"]) == (115, 226)
    open_conn.up += 1000
    view2 = enc.build(_snapshot(open_conn, plain, done), {}, 7440.0)
    assert (view2.upload_total, view2.download_total) == (1115, 226)
    assert {c["id"]: c["upload"] for c in json.loads(view2.text)["connections"]}[relayed_id(1234, 1)] == 1010


def _kernel_snapshot(*values: dict[str, Any], at: int) -> Snapshot:
    """A snapshot whose kernel table holds one entry per `values` (fields over a direct TCP flow's), laid out as
    the console's lab fixture (a real daemon's layout); `at`: the kernel's clock (ns), first seen a second before."""
    fixture = wire.decode(Snapshot, json.loads(FIXTURE.read_text())["snapshot"]).raw_flows
    assert fixture is not None
    ks, knames = struct_for(fixture.key_layout, fixture.key_size)
    vs, vnames = struct_for(fixture.value_layout, fixture.value_size)
    raw = dataclasses.replace(fixture, mono_offset=0.0, keys=b"", values=b"")
    keys, vals = bytearray(), bytearray()
    for i, v in enumerate(values):
        key = dict(zip(knames, ks.unpack_from(fixture.keys, 0), strict=True))
        key.update(sip=V4_MAPPED + bytes([192, 0, 2, 2]), dip=V4_MAPPED + bytes([203, 0, 113, 7]), sport=40000 + i,
                   dport=443, l4proto=6)
        value = dict(zip(vnames, vs.unpack_from(fixture.values, 0), strict=True))
        value.update(outbound=ABI.OUTBOUND_DIRECT, rule_index=4, generation=1, flags=0, first_seen_ns=at - 10**9,
                     last_seen_ns=at, packets=1, bytes=100, rx_packets=1, rx_bytes=200)
        value.update(v)
        keys += ks.pack(*(key[n] for n in knames))
        vals += vs.pack(*(value[n] for n in vnames))
    return dataclasses.replace(_snapshot(), raw_flows=dataclasses.replace(raw, keys=bytes(keys), values=bytes(vals)))


def test_a_kernel_entry_is_decoded_again_only_when_more_than_its_counters_change() -> None:
    enc = FlowEncoder(1, lambda addr: [])
    at = int(time.time() * 1e9)

    def view(*values: dict[str, Any]) -> tuple[dict[str, Any], FlowView]:
        v = enc.build(_kernel_snapshot(*values, at=at), {}, 7440.0)
        return {c["metadata"]["sourcePort"]: c for c in json.loads(v.text)["connections"]}, v

    first, v1 = view({}, {})
    assert set(first) == {"40000", "40001"} and (v1.upload_total, v1.download_total) == (200, 400)
    assert first["40000"]["daetui"]["rule"] == "#5"
    # The counters alone moved: the new bytes are listed, under the same id.
    second, v2 = view({"bytes": 150, "rx_bytes": 260, "packets": 2}, {})
    assert (second["40000"]["upload"], second["40000"]["download"]) == (150, 260)
    assert second["40000"]["id"] == first["40000"]["id"] and second["40001"] == first["40001"]
    assert (v2.upload_total, v2.download_total) == (250, 460)
    # A reload re-decided it (another generation and rule): its rule is read again.
    third, _ = view({"bytes": 150, "rx_bytes": 260, "rule_index": 6, "generation": 2}, {})
    assert third["40000"]["daetui"]["rule"] == "#7" and third["40000"]["id"] == first["40000"]["id"]
    # The kernel saw its FIN: no longer listed, though the bytes it carried meanwhile still count.
    fourth, v4 = view({"bytes": 170, "rx_bytes": 260, "rule_index": 6, "generation": 2, "flags": ABI.FLOW_TCP_FIN}, {})
    assert set(fourth) == {"40001"} and v4.upload_total == 270
    # A new flow on the same 5-tuple (first seen later) is a new id.
    fifth, _ = view({"first_seen_ns": at}, {})
    assert fifth["40000"]["id"] != first["40000"]["id"]
    # Idle past UDP's or TCP's idle time: not listed.
    sixth, _ = view({"last_seen_ns": at - 8000 * 10**9}, {})
    assert set(sixth) == {"40001"}


def test_the_counter_reader_and_the_stable_part_agree_with_a_whole_decoding() -> None:
    raw = _kernel_snapshot({"bytes": 7, "rx_bytes": 9, "last_seen_ns": 123456789}, at=10**18).raw_flows
    assert raw is not None
    (_, vb), = raw.raw_entries()
    assert raw.counters()(vb) == (123456789, 7, 9)
    stable = raw.stable()
    vs, names = struct_for(raw.value_layout, raw.value_size)

    def changed(**kw: Any) -> bytes:
        fields = dict(zip(names, vs.unpack(vb), strict=True))
        fields.update(kw)
        return vs.pack(*(fields[n] for n in names))

    for moving in ({"bytes": 8}, {"rx_bytes": 1}, {"packets": 5}, {"rx_packets": 5}, {"last_seen_ns": 1}):
        assert stable(changed(**moving)) == stable(vb), moving
    for kept in ({"flags": 1}, {"rule_index": 9}, {"generation": 3}, {"outbound": ABI.OUTBOUND_DIRECT + 1},
                 {"first_seen_ns": 5},
                 {"ifindex": 9}, {"mark": 1}):
        assert stable(changed(**kept)) != stable(vb), kept


@pytest.mark.parametrize("packed", [False, True], ids=["daemon-layout", "packed-layout"])
def test_columns_and_stable_keys_read_every_entry_as_one_at_a_time_would(packed: bool) -> None:
    raw = _kernel_snapshot(*({"bytes": 7 + i, "rx_bytes": 9 * i, "last_seen_ns": 10**18 + i, "packets": i,
                              "flags": i % 2} for i in range(5)), at=10**18).raw_flows
    assert raw is not None
    if packed:   # odd sizes and offsets: the per-entry fallbacks, a byte at a time
        layout = [("flags", 0, "B"), ("first_seen_ns", 1, "Q"), ("last_seen_ns", 9, "Q"), ("packets", 17, "Q"),
                  ("bytes", 25, "Q"), ("rx_packets", 33, "Q"), ("rx_bytes", 41, "Q"), ("mark", 49, "I")]
        st, fields = struct_for(layout, 53)
        rows = [{"flags": i % 2, "first_seen_ns": 10**18 - i, "last_seen_ns": 10**18 + i, "packets": i,
                 "bytes": 7 + i, "rx_packets": 0, "rx_bytes": 9 * i, "mark": 0} for i in range(5)]
        raw = RawFlows([("k", 0, "3s")], 3, layout, 53, keys=b"".join(bytes([1, 2, i]) for i in range(5)),
                       values=b"".join(st.pack(*(r[n] for n in fields)) for r in rows))
    vfmt, names = struct_for(raw.value_layout, raw.value_size)
    entries = list(raw.raw_entries())
    for name in ("last_seen_ns", "bytes", "rx_bytes", "packets", "flags"):
        assert raw.column(name) == [vfmt.unpack(vb)[names.index(name)] for _, vb in entries], name
    stable, fs = raw.stable(), raw.field_slice("first_seen_ns")
    keys = raw.stable_keys()
    assert [k[:raw.key_size + fs.stop - fs.start] for k in keys] == [kb + vb[fs] for kb, vb in entries]
    assert len(set(keys)) == len(keys)
    # Equal exactly when key and stable part are: the counters moving leaves them, anything else does not.
    fields = [dict(zip(names, vfmt.unpack(vb), strict=True)) for _, vb in entries]
    for change in ({"bytes": 1, "rx_bytes": 2, "packets": 3, "rx_packets": 4, "last_seen_ns": 5}, {"flags": 3},
                   {"first_seen_ns": 6}, {"mark": 7}):
        moved = dataclasses.replace(raw, values=b"".join(vfmt.pack(*({**f, **change}[n] for n in names))
                                                         for f in fields))
        after = moved.stable_keys()
        same = [stable(vb) == stable(wb) for (_, vb), (_, wb) in zip(entries, moved.raw_entries(), strict=True)]
        assert [a == b for a, b in zip(keys, after, strict=True)] == same, change
        assert all(same) == ("bytes" in change), change


def test_kernel_flows_keep_their_ids_and_bytes_through_a_crowd_leaving_and_coming_back() -> None:
    """Many flows gone at once (their slots given back and the rest renumbered), one of the rest re-decided:
    each listed flow still has its id and its own bytes, and the totals count only what was carried."""
    enc = FlowEncoder(1, lambda addr: [])
    at = int(time.time() * 1e9)

    def view(*values: dict[str, Any]) -> tuple[dict[str, Any], FlowView]:
        v = enc.build(_kernel_snapshot(*values, at=at), {}, 7440.0)
        return {c["metadata"]["sourcePort"]: c for c in json.loads(v.text)["connections"]}, v

    first, v1 = view(*[{}] * 2000)
    assert len(first) == 2000 and v1.upload_total == 200_000
    kept, v2 = view({"bytes": 150}, {"bytes": 130, "rule_index": 6, "generation": 2}, {})
    assert set(kept) == {"40000", "40001", "40002"} and v2.upload_total == 200_080
    assert all(kept[p]["id"] == first[p]["id"] for p in kept) and kept["40001"]["daetui"]["rule"] == "#7"
    back, v3 = view({"bytes": 160}, {"bytes": 130, "rule_index": 6, "generation": 2}, *[{}] * 998)
    assert len(back) == 1000 and [back[p]["upload"] for p in ("40000", "40001", "40002")] == [160, 130, 100]
    assert v3.upload_total == 200_080 + 10 + 997 * 100 and back["40999"]["id"] == first["40999"]["id"]
    assert v3.kernel == {c["id"]: f"tcp 192.0.2.2:{p} -> 203.0.113.7:443" for p, c in back.items()}


# -- against the daemon ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ss(lab) -> Iterator[SsServer]:
    server = SsServer(lab, "aes-256-gcm", "api connections password", port=SS_PORT)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api(lab, ss, tmp_path_factory) -> Iterator[ApiLab]:
    cfg = api_config(nodes=f'"{NODE}" = "{ss.node(4, NODE).link()}"',
                     groups='[group.proxy]\npolicy = "fixed(0)"\n', rules=RULES, extra_global='dial_mode = "ip"')
    a = ApiLab(lab, tmp_path_factory.mktemp("api-connections"), cfg).start()
    try:
        call_once(a.daemon.control_path, lambda c: c.learn_name(addr=DIRECT, name=DIRECT_NAME))
        yield a
    finally:
        a.stop()



def connections(api: ApiLab) -> dict[str, Any]:
    r = api.curl("GET", "/connections")
    assert r.status == 200 and r.headers["content-type"].startswith("application/json"), r.text[:300]
    return r.json


def of_socket(api: ApiLab, s: socket.socket, **want: Any) -> dict[str, Any]:
    """The listed connection of the LAN client's socket `s`, waited for (and matching `want`, if given)."""
    host, port = s.getsockname()[:2]

    def find() -> dict[str, Any] | None:
        for c in connections(api)["connections"]:
            m = c["metadata"]
            if m["sourceIP"] == host and m["sourcePort"] == str(port) and all(c.get(k) == v for k, v in want.items()):
                return c
        return None
    return wait_for(find, timeout=10)


def rules(api: ApiLab) -> list[dict[str, Any]]:
    return api.curl("GET", "/rules").json["rules"]


def echo(s: socket.socket, payload: bytes) -> None:
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(65536)
        assert chunk, "the echo ended"
        got += chunk
    assert got == payload


@pytest.mark.kernel
def test_a_kernel_direct_flow_is_listed_with_the_kernels_view(api, lab):
    with lan_connect(lab, DIRECT, ECHO_PORT) as s:
        echo(s, b"k" * 3000)
        c = of_socket(api, s)
        m = c["metadata"]
        assert m["type"] == "Kernel" and m["inboundName"] == "kernel" and m["network"] == "tcp"
        assert m["destinationIP"] == DIRECT and m["destinationPort"] == str(ECHO_PORT)
        assert m["host"] == DIRECT_NAME and m["sniffHost"] == ""     # the name DNS (here: the test) gave it
        assert c["chains"] == ["direct"]
        rule0 = rules(api)[0]
        assert (c["rule"], c["rulePayload"]) == (rule0["type"], rule0["payload"])
        assert c["daetui"]["path"] == "kernel" and c["daetui"]["rule"].startswith(f"dip({DIRECT})")
        # The kernel counts whole packets: at least the payload each way.
        c = wait_for(lambda: (x := of_socket(api, s)) and x["upload"] >= 3000 and x["download"] >= 3000 and x)
        # The same flow keeps its id from one answer to the next; another flow has another.
        assert of_socket(api, s)["id"] == c["id"]
        with lan_connect(lab, DIRECT, ECHO_PORT) as s2:
            echo(s2, b"x")
            assert of_socket(api, s2)["id"] != c["id"]
        # It cannot be closed from here, and says why; the flow goes on.
        r = api.curl("DELETE", f"/connections/{c['id']}")
        assert r.status == 400 and "kernel" in r.json["message"]
        echo(s, b"still here")
    # Its FIN seen, it leaves the list.
    wait_for(lambda: all(x["id"] != c["id"] for x in connections(api)["connections"]), timeout=10)


@pytest.mark.kernel
def test_a_kernel_direct_udp_flow_is_listed_while_it_lives(api, lab):
    sport = 47011
    assert udp_exchange(lab, DIRECT, b"u" * 100, ECHO_PORT, sport=sport, count=3) == [b"u" * 100] * 3

    def listed() -> dict[str, Any] | None:
        return next((c for c in connections(api)["connections"]
                     if c["metadata"]["sourcePort"] == str(sport) and c["metadata"]["network"] == "udp"), None)
    c = wait_for(listed)
    assert c["metadata"]["type"] == "Kernel" and c["metadata"]["destinationIP"] == DIRECT
    assert c["upload"] >= 300 and c["download"] >= 300 and c["chains"] == ["direct"]


@pytest.mark.kernel
def test_a_flow_relayed_through_a_node_and_closed_from_the_api(api, lab):
    with lan_connect(lab, RELAYED, ECHO_PORT) as s:
        echo(s, b"r" * 5000)
        c = of_socket(api, s)
        m = c["metadata"]
        assert m["type"] == "TProxy" and m["inboundName"] == "tproxy" and m["destinationIP"] == RELAYED
        assert c["chains"] == [NODE, "proxy"]
        rule1 = rules(api)[1]
        assert (c["rule"], c["rulePayload"]) == (rule1["type"], rule1["payload"])
        # The relay counts payload: exactly what went each way.
        wait_for(lambda: (x := of_socket(api, s)) and (x["upload"], x["download"]) == (5000, 5000))
        assert api.curl("DELETE", f"/connections/{c['id']}").status == 204
        s.settimeout(5)
        with pytest.raises(ConnectionResetError):
            while s.recv(65536):
                pass
    wait_for(lambda: all(x["id"] != c["id"] for x in connections(api)["connections"]))


@pytest.mark.kernel
def test_a_sniffed_name_routes_and_shows(api, lab):
    with lan_connect(lab, SNIFFED, ECHO_PORT) as s:
        echo(s, b"GET / HTTP/1.1\r\nHost: www.sniffed.test\r\n\r\n")
        c = of_socket(api, s)
        assert c["metadata"]["sniffHost"] == "www.sniffed.test" == c["metadata"]["host"]
        assert c["chains"] == [NODE, "proxy"] and c["daetui"]["stage"] == "userspace"
        rule2 = rules(api)[2]
        assert (c["rule"], c["rulePayload"]) == (rule2["type"], rule2["payload"])
    with lan_connect(lab, SNIFFED, ECHO_PORT) as s:
        echo(s, b"GET / HTTP/1.1\r\nHost: plain.other.test\r\n\r\n")
        c = of_socket(api, s)
        assert c["metadata"]["sniffHost"] == "plain.other.test"
        assert c["chains"] == ["direct"] and c["rule"] == rules(api)[-1]["type"]   # the fallback: "Match"
        assert c["metadata"]["type"] == "TProxy"                                   # relayed, from user space


@pytest.mark.kernel
def test_delete_all_closes_every_relayed_connection_and_leaves_the_kernels(api, lab):
    relayed = [lan_connect(lab, RELAYED, ECHO_PORT) for _ in range(2)]
    kernel = lan_connect(lab, DIRECT, ECHO_PORT)
    try:
        for s in (*relayed, kernel):
            echo(s, b"hello")
            of_socket(api, s)
        assert api.curl("DELETE", "/connections").status == 204
        for s in relayed:
            s.settimeout(5)
            with pytest.raises(ConnectionResetError):
                while s.recv(65536):
                    pass
        echo(kernel, b"the kernel's flow goes on")
    finally:
        for s in (*relayed, kernel):
            s.close()


@pytest.mark.kernel
@pytest.mark.parametrize("fid", ["00000000-0000-0000-0000-000000000000", "nothing-of-ours", "%22%0a"])
def test_closing_an_unknown_id_is_mihomos_204(api, fid):
    assert api.curl("DELETE", f"/connections/{fid}").status == 204


@pytest.mark.kernel
@pytest.mark.parametrize("interval", ["fast", "-5", "0", "1.5"])
def test_a_bad_interval_is_a_json_400(api, interval):
    r = api.curl("GET", f"/connections?interval={interval}")
    assert r.status == 400 and "interval" in r.json["message"]


@pytest.mark.kernel
def test_totals_grow_by_what_flows_carry(api, lab):
    before = connections(api)
    n = 300_000
    assert len(http_get(lab, DIRECT, f"/bytes/{n}", HTTP_PORT)) == n                        # kernel-direct
    assert len(http_get(lab, SNIFFED, f"/bytes/{n}", HTTP_PORT, name="plain.other.test")) == n  # relayed
    after = wait_for(lambda: (a := connections(api)) and a["downloadTotal"] - before["downloadTotal"] >= 2 * n and a)
    assert after["uploadTotal"] > before["uploadTotal"]
    assert after["memory"] > 0


STREAM_CLIENT = """
import asyncio, json, sys
import aiohttp

async def main(path, count):
    out = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(BASE + path) as ws:
            async for msg in ws:
                out.append(json.loads(msg.data))
                if len(out) >= count:
                    break
    print(json.dumps(out))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def ws_messages(api: ApiLab, path: str, count: int, timeout: float = 60) -> list[Any]:
    code = STREAM_CLIENT.replace("sys.argv[1], int(sys.argv[2])", f"{path!r}, {count}")
    r = api.python(code, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.mark.kernel
def test_the_websocket_streams_the_list_at_its_interval(api, lab):
    with lan_connect(lab, RELAYED, ECHO_PORT) as s:
        echo(s, b"streamed")
        fid = of_socket(api, s)["id"]
        msgs = ws_messages(api, f"/connections?token={SECRET}&interval=200", 4)
    assert len(msgs) == 4
    for m in msgs:
        assert set(m) == {"downloadTotal", "uploadTotal", "connections", "memory"}
        assert fid in {c["id"] for c in m["connections"]}
    assert [m["downloadTotal"] for m in msgs] == sorted(m["downloadTotal"] for m in msgs)


@pytest.mark.kernel
def test_without_the_secret_no_stream(api):
    code = STREAM_CLIENT.replace("sys.argv[1], int(sys.argv[2])", "'/connections?token=wrong', 1")
    r = api.python(code)
    assert r.returncode != 0 and "401" in r.stderr


@pytest.mark.kernel
def test_chunked_http_streams_one_json_a_line(api):
    r = api.curl("GET", "/connections?interval=200", max_time=1.5)
    lines = [ln for ln in r.text.splitlines() if ln.strip()]
    assert r.status == 200 and len(lines) >= 2
    assert all("connections" in json.loads(ln) for ln in lines)


@pytest.mark.kernel
def test_traffic_streams_rates_that_see_a_download(api, lab):
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.extend(ws_messages(api, f"/traffic?token={SECRET}", 6)))
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while reader.is_alive() and time.monotonic() < deadline:
            http_get(lab, DIRECT, "/bytes/2000000", HTTP_PORT, timeout=20)
            http_get(lab, SNIFFED, "/bytes/2000000", HTTP_PORT, name="plain.other.test", timeout=20)
    finally:
        reader.join(60)
    assert len(got) == 6 and all(set(m) == {"up", "down"} for m in got)
    assert max(m["down"] for m in got) > 100_000
    assert all(m["up"] >= 0 and m["down"] >= 0 for m in got)
