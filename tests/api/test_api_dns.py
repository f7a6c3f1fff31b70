"""The controller API's /dns/query and cache flushes against the real daemon, its DNS controller asking the
lab's unbound: mihomo's answer shape, its refusals, and a flush that really empties the cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dns.rdatatype
import pytest
from helpers import wait_for

from daetui.control.state import Snapshot
from daetui.lab.dnspeers import LAB_ZONE, Unbound
from daetui.lab.topology import ADDR
from testkit.api import ApiLab, api_config

pytestmark = [pytest.mark.kernel]

DNS = f"""[dns]
upstream = {{ ub = "udp://{ADDR.dns4[0]}:53" }}
request = ["fallback: ub"]
"""


def zone(name: str, rtype: str) -> set[str]:
    """What the lab's zone holds for `name` / `rtype` (the records the tests compare answers with)."""
    return {r.value for r in LAB_ZONE if r.name == name and r.rtype == rtype}


@pytest.fixture(scope="module")
def api(lab, tmp_path_factory) -> Iterator[ApiLab]:
    server = Unbound(lab)
    server.start()
    a = ApiLab(lab, tmp_path_factory.mktemp("api-dns"), api_config(dns=DNS))
    try:
        a.start()
        yield a
    finally:
        a.stop()
        server.stop()



def query(api: ApiLab, path: str) -> dict[str, Any]:
    r = api.curl("GET", path)
    assert r.status == 200, r.text[:300]
    return r.json


def snapshot(api: ApiLab) -> Snapshot:
    return api.snapshot(flows=False, dns=True)


@pytest.mark.parametrize(("name", "rtype"), [("www.example.test", "A"), ("www.example.test", "AAAA"),
                                             ("cn.lab.test", "A")])
def test_a_query_answers_as_mihomo(api, name, rtype):
    doc = query(api, f"/dns/query?name={name}&type={rtype}")
    assert doc["Status"] == 0 and doc["RD"] is True and doc["TC"] is False
    assert {"Status", "Question", "TC", "RD", "RA", "AD", "CD", "Answer"} <= set(doc)
    assert doc["Question"] == [{"Name": name + ".", "Qtype": int(dns.rdatatype.from_text(rtype)), "Qclass": 1}]
    answers = doc["Answer"]
    assert {a["data"] for a in answers} == zone(name, rtype)
    for a in answers:
        assert a["name"] == name + "." and a["type"] == int(dns.rdatatype.from_text(rtype))
        assert 0 < a["TTL"] <= max(r.ttl for r in LAB_ZONE if r.name == name)


def test_the_type_defaults_to_a_and_a_cname_chain_is_answered(api):
    doc = query(api, "/dns/query?name=alias.example.test")
    assert doc["Question"][0]["Qtype"] == 1
    by_type: dict[int, set[str]] = {}
    for a in doc["Answer"]:
        by_type.setdefault(a["type"], set()).add(a["data"])
    assert by_type[5] == {v + "." for v in zone("alias.example.test", "CNAME")}
    assert by_type[1] == zone("www.example.test", "A")


def test_txt_data_is_the_records_text(api):
    doc = query(api, "/dns/query?name=txt.example.test&type=TXT")
    assert [a["data"] for a in doc["Answer"]] == [f'"{v}"' for v in zone("txt.example.test", "TXT")]


def test_a_name_that_does_not_exist(api):
    doc = query(api, "/dns/query?name=nosuch.example.test&type=A")
    assert doc["Status"] == 3 and "Answer" not in doc        # NXDOMAIN, no answer section (as mihomo leaves it out)


@pytest.mark.parametrize(("path", "word"), [("/dns/query", "name"), ("/dns/query?type=A", "name"),
                                            ("/dns/query?name=x.test&type=BOGUS", "type"),
                                            ("/dns/query?name=x.test&type=IXFR", "type"),
                                            ("/dns/query?name=" + "a" * 70 + ".test", "name")])
def test_bad_queries_are_json_400s(api, path, word):
    r = api.curl("GET", path)
    assert r.status == 400 and word in r.json["message"]


def test_the_dns_flush_empties_the_cache(api):
    query(api, "/dns/query?name=api.example.test&type=A")
    wait_for(lambda: snapshot(api).dns.cached > 0)
    assert any(row.name.rstrip(".") == "api.example.test" for row in snapshot(api).dns.cache)
    assert api.curl("POST", "/cache/dns/flush").status == 204
    assert snapshot(api).dns.cached == 0
    # Asked again, the name is fetched again (and cached again).
    assert {a["data"] for a in query(api, "/dns/query?name=api.example.test")["Answer"]} == \
        zone("api.example.test", "A")
    assert snapshot(api).dns.cached > 0


def test_the_fakeip_flush_says_there_is_no_pool(api):
    assert api.curl("POST", "/cache/fakeip/flush").status == 204
    wait_for(lambda: "no fake-ip pool" in api.daemon.log())
    r = api.curl("GET", "/cache/dns/flush")
    assert r.status == 405 and r.json == {"message": "Method not allowed"}
