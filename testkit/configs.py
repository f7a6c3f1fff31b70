"""Config texts for daetui in the lab, shared by tests and benchmarks.

Pieces, not a config builder: a test still shows its whole config where the
config is what it tests.
"""

from __future__ import annotations

from daetui.lab.topology import ADDR

# The lab's smallest config: flows to the wan's first host (both families) go to a group with no
# nodes, which the control plane relays through its direct dialer; the kernel forwards the rest.
RELAY_CONFIG = """
[global]
lan_interface = ["lan0"]

[group.proxy]
# No nodes yet: a group relays through the direct dialer until proxy nodes exist.

[routing]
rules = ["dip(203.0.113.10, '2001:db8:3::10') -> proxy"]
fallback = "direct"
"""
RELAYED4, RELAYED6 = ADDR.hosts4[0], ADDR.hosts6[0]  # what RELAY_CONFIG relays

# Node checks that stay inside the lab (the defaults ask hosts on the internet): the wan's first
# web host, and its unbound (daetui.lab.dnspeers) for UDP. Lines for [global].
LAB_CHECKS = f"""tcp_check_url = ["http://{ADDR.hosts4[0]}/", "{ADDR.hosts4[0]}", "{ADDR.hosts6[0]}"]
udp_check_dns = ["dns.lab.test:53", "{ADDR.dns4[0]}", "{ADDR.dns6[0]}"]"""


def dns_config(body: str, extra_global: str = "") -> str:
    """[global] for the DNS tests (LAN lan0, dnsmasq as the resolver of node names), then `body`."""
    return f"""
[global]
lan_interface = ["lan0"]
fallback_resolver = "{ADDR.dns4[1]}:53"
{extra_global}
{body}
"""


# unbound as the one upstream, everything direct.
ONE_UPSTREAM = f"""
[dns]
upstream = {{ ub = "udp://{ADDR.dns4[0]}:53" }}
request = ["fallback: ub"]
[routing]
fallback = "direct"
"""
