"""Health checks of a large group are bounded in concurrency (issue 11, fix 2).

Eighty socks5 nodes point at one local listener that accepts and never answers
(every check times out); the listener counts the connections open at once.
Unbounded, every node's two checks (IPv4 and IPv6) dial together: 160.
"""

from __future__ import annotations

import asyncio

from daetui.config.load import parse_config
from daetui.outbound.direct import DirectDialer
from daetui.outbound.manager import CHECK_CONCURRENCY, Outbounds

NODES = 80


async def test_checks_of_a_large_group_dial_at_most_the_bound_at_once():
    now = peak = total = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal now, peak, total
        now += 1
        total += 1
        peak = max(peak, now)
        try:
            await reader.read()  # nothing is answered: the check times out and closes
        finally:
            now -= 1
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    nodes = "\n".join(f'n{i} = "socks5://127.0.0.1:{port}"' for i in range(NODES))
    cfg = parse_config(f"""
[global]
check_interval = "1s"   # each check times out after 1 s
[node]
{nodes}
[group.big]
policy = "min"
[routing]
fallback = "direct"
""")
    outbounds = Outbounds(cfg, DirectDialer(mark=0))
    try:
        async with asyncio.timeout(60):
            await outbounds.check_all()
    finally:
        await outbounds.stop()
        server.close()
        await server.wait_closed()
    assert total >= 2 * NODES                      # every node was checked over both families
    assert 0 < peak <= 2 * CHECK_CONCURRENCY < 2 * NODES, f"{peak} connections at once"
    assert all(not h.alive(4) for h in outbounds.health.values())
