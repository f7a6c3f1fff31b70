"""The controller API's DNS routes, as mihomo's hub/route (dns.go, cache.go).

- `GET /dns/query?name=example.com&type=A`: the name resolved through daetui's
  DNS controller as a LAN client's query would be (its request rules, cache and
  upstreams; the answer lands in the cache and the kernel's names as any
  other). The answer is mihomo's: `{"Status": rcode, "Question": [{"Name",
  "Qtype", "Qclass"}], "TC", "RD", "RA", "AD", "CD", "Answer": [{"name",
  "type", "TTL", "data"}], "Authority": [...], "Additional": [...]}` (the last
  three only when not empty). No name, or a type DNS does not know, is a 400.
- `POST /cache/dns/flush`: the DNS cache emptied (the kernel's names stay until
  their TTL); 204.
- `POST /cache/fakeip/flush`: mihomo's; daetui has no fake-ip pool, so there is
  nothing to flush: 204 as mihomo answers without one, and the log says so.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from aiohttp import web

from daetui.api.context import ApiContext
from daetui.api.errors import ApiError

log = logging.getLogger("daetui.api")

QUERY_TIMEOUT = 15.0   # the controller's own upstream timeouts come first; this only bounds a stuck one


def _records(section: list[dns.rrset.RRset]) -> list[dict[str, Any]]:
    """mihomo's rr2Json: one object per record, its data as the record's text."""
    return [{"name": rrset.name.to_text(), "type": int(rrset.rdtype), "TTL": rrset.ttl, "data": rd.to_text()}
            for rrset in section for rd in rrset]


def answer_json(reply: dns.message.Message) -> dict[str, Any]:
    """A reply as mihomo's /dns/query writes one."""
    flags = reply.flags
    out: dict[str, Any] = {
        "Status": int(reply.rcode()),
        "Question": [{"Name": q.name.to_text(), "Qtype": int(q.rdtype), "Qclass": int(q.rdclass)}
                     for q in reply.question],
        "TC": bool(flags & dns.flags.TC), "RD": bool(flags & dns.flags.RD), "RA": bool(flags & dns.flags.RA),
        "AD": bool(flags & dns.flags.AD), "CD": bool(flags & dns.flags.CD),
    }
    for key, section in (("Answer", reply.answer), ("Authority", reply.authority), ("Additional", reply.additional)):
        if section:
            out[key] = _records(section)
    return out


def routes(ctx: ApiContext) -> list[web.RouteDef]:
    """`GET /dns/query`, `POST /cache/dns/flush` and `POST /cache/fakeip/flush`."""
    plane = ctx.plane

    async def query(request: web.Request) -> web.Response:
        name = request.query.get("name", "")
        qtype = request.query.get("type", "") or "A"
        if not name:
            raise ApiError(400, "name is missing (?name=example.com)")
        try:
            rdtype = dns.rdatatype.from_text(qtype)
        except (dns.exception.DNSException, ValueError):
            raise ApiError(400, "invalid query type") from None   # mihomo's words
        if dns.rdatatype.is_metatype(rdtype) and rdtype != dns.rdatatype.ANY:
            raise ApiError(400, "invalid query type")
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, ValueError) as e:
            raise ApiError(400, f"invalid name: {e}") from None
        msg = dns.message.make_query(qname, rdtype, dns.rdataclass.IN)   # RD set, as mihomo's SetQuestion
        try:
            wire = await asyncio.wait_for(plane.dns_exchange(msg.to_wire()), QUERY_TIMEOUT)
        except TimeoutError:
            raise ApiError(500, "Timeout") from None
        if wire is None:
            raise ApiError(500, "the DNS controller dropped the query")
        reply = dns.message.from_wire(wire)
        log.debug("controller API: dns query %s %s: %s, %d answers", qname, dns.rdatatype.to_text(rdtype),
                  dns.rcode.to_text(reply.rcode()), sum(len(r) for r in reply.answer))
        return web.json_response(answer_json(reply))

    async def flush_dns(request: web.Request) -> web.Response:
        n = plane.dns_flush()
        log.info("controller API: DNS cache flushed (%d entries)", n)
        return web.Response(status=204)

    async def flush_fakeip(request: web.Request) -> web.Response:
        log.info("controller API: /cache/fakeip/flush: daetui has no fake-ip pool (its DNS answers real "
                 "addresses): nothing to flush")
        return web.Response(status=204)

    return [web.get("/dns/query", query), web.post("/cache/dns/flush", flush_dns),
            web.post("/cache/fakeip/flush", flush_fakeip)]
