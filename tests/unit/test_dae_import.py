"""Converting dae's config syntax to daetui's TOML: values, comments, and errors that say where."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daetui.config.dae_import import DaeImportError, convert_dae, convert_dae_full
from daetui.routing.parser import parse_rule

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def rich() -> tuple[str, dict]:
    out = convert_dae((DATA / "rich.dae").read_text(), "rich.dae")
    return out, tomllib.loads(out)


def lines_of(out: str) -> list[str]:
    return out.splitlines()


def index(lines: list[str], text: str) -> int:
    """The index of the one line that contains `text`."""
    hits = [i for i, line in enumerate(lines) if text in line]
    assert len(hits) == 1, (text, hits)
    return hits[0]


def above(out: str, comment: str, line_text: str) -> None:
    """`comment` is on the line right above the line holding `line_text`."""
    lines = lines_of(out)
    c, k = index(lines, comment), index(lines, line_text)
    assert lines[c].lstrip().startswith("#"), lines[c]
    assert c == k - 1, (lines[c], lines[k])


def trails(out: str, line_text: str, comment: str) -> None:
    """`comment` ends the line holding `line_text`."""
    line = lines_of(out)[index(lines_of(out), line_text)]
    assert line.rstrip().endswith(comment), line


# ---------------------------------------------------------------------------
# The rich config: every section and construct.

def test_rich_is_valid_toml_for_both_parsers(rich):
    out, data = rich
    assert tomlkit.parse(out).unwrap() == data
    assert out.startswith("# Converted from rich.dae by daetui import-dae.\n")


def test_rich_global(rich):
    _, d = rich
    assert d["global"] == {
        "tproxy_port": 12345,
        "tproxy_port_protect": True,
        "so_mark_from_dae": 0x100,
        "log_level": "info",
        "lan_interface": ["br-lan", "docker0"],
        "wan_interface": ["eth0"],
        "tcp_check_url": ["http://cp.cloudflare.com", "1.1.1.1"],
        "udp_check_dns": ["dns.google:53"],
        "check_interval": "30s",
        "check_tolerance": "50ms",
        "dial_mode": "domain",
        "allow_insecure": False,
        "auto_config_kernel_parameter": True,
        "sniffing_timeout": "100ms",
    }
    assert list(d["global"]) == [
        "tproxy_port", "tproxy_port_protect", "so_mark_from_dae", "log_level", "lan_interface", "wan_interface",
        "tcp_check_url", "udp_check_dns", "check_interval", "check_tolerance", "dial_mode", "allow_insecure",
        "auto_config_kernel_parameter", "sniffing_timeout",
    ]


def test_rich_subscriptions_and_nodes_tagged_and_untagged(rich):
    out, d = rich
    assert d["subscription"] == {
        "my_sub": "https://example.com/sub?token=abc",
        "sub1": "https://example.com/no_tag_link",
        "another_sub": "https://example.org/another",
        "sub2": "file://relative/path/to/mysub.sub",
    }
    # node1 is taken by an explicit tag, so the untagged nodes are node2 and node3.
    assert d["node"] == {
        "node2": "socks5://localhost:1080",
        "hk1": "ss://YWVzLTI1Ni1nY206cGFzcw@hk1.example.com:8388",
        "node1": "vmess://eyJ2IjogIjIiLCAicHMiOiAibm9kZTEiLCAiYWRkIjogInZtLmV4YW1wbGUuY29tIiwgInBvcnQiOiAiNDQzIiwgImlkIjogImI4MzEzODFkLTYzMjQtNGQ1My1hZDRmLThjZGE0OGIzMDgxMSIsICJhaWQiOiAiMCIsICJuZXQiOiAidGNwIiwgInR5cGUiOiAibm9uZSIsICJ0bHMiOiAidGxzIn0=",
        "node3": "trojan://secret@jp.example.com:443",
    }
    above(out, "untagged in the dae file: tag sub1", 'sub1 = "https://example.com/no_tag_link"')
    above(out, "untagged in the dae file: tag node3", "node3 = ")
    assert "tag node1 given" not in out


def test_rich_groups(rich):
    _, d = rich
    assert d["group"] == {
        "proxy": {
            "filter": [
                "name(keyword: HK) && !name(keyword: AI)",
                "name(keyword: JP) [add_latency: 500ms]",
                "subtag(regex: '^my_', another_sub) [add_latency: -100ms]",
            ],
            "policy": "min_moving_avg",
            "check_interval": "10s",
        },
        "media": {"filter": ["name(hk1)"], "policy": "fixed(0)"},
        "all": {"policy": "min"},
    }


def test_rich_dns(rich):
    _, d = rich
    assert d["dns"] == {
        "ipversion_prefer": 4,
        "fixed_domain_ttl": {"ddns.example.org": 10, "test.example.org": 3600},
        "upstream": {"alidns": "udp://dns.alidns.com:53", "googledns": "tcp+udp://dns.google:53"},
        "request": [
            "qname(geosite:category-ads-all) -> reject",
            "qname(geosite:google@cn) -> alidns",
            "qname(suffix: abc.com, keyword: google) -> googledns",
            "qtype(a, aaaa) -> alidns",
            "fallback: asis",
        ],
        "response": [
            "upstream(googledns) -> accept",
            "!qname(geosite:cn) && ip(geoip:private) -> googledns",
            "fallback: accept",
        ],
        **DAE_DNS_DEFAULTS,
    }


def test_rich_routing(rich):
    _, d = rich
    assert d["routing"] == {
        "rules": [
            "pname(dnsmasq, systemd-resolved) && l4proto(udp) && dport(53) -> must_direct",
            "pname(NetworkManager) -> direct",
            "dip(224.0.0.0/3, 'ff00::/8') -> direct",
            "dip(geoip:private) -> direct",
            "mac('02:42:ac:11:00:02') -> direct",
            "sip(192.168.1.50/32) && dport(6881-6889) -> direct(mark: 0x100)",
            "l4proto(tcp) && dport(80, 443) && domain(suffix: netflix.com) -> media",
            "domain(keyword: facebook, suffix:fb.com) -> proxy",
            "domain(regex: '\\.goo.*\\.com$') -> proxy",
            "domain(geosite:category-ads) -> block",
            "dip(geoip:cn) -> direct",
            "domain(geosite:cn) && !domain(suffix: 'example.cn') -> direct",
            "dip(8.8.8.8, 8.8.4.4) -> proxy",
        ],
        "fallback": "proxy",
    }


def test_rich_rules_parse_with_daetuis_rule_parser(rich):
    _, d = rich
    for rule in d["routing"]["rules"]:
        parse_rule(rule)


def test_rich_comments_stay_in_place(rich):
    out, _ = rich
    # Comments above the first section and above keys.
    above(out, "# Home router: dae config", "# Written for the importer's tests")
    above(out, "# tproxy port to listen on.", "tproxy_port = 12345")
    above(out, '# Multiple interfaces split by ",".', "lan_interface = ")
    above(out, "# Subscriptions: resolved into nodes.", "[subscription]")
    above(out, "# The main provider.", "my_sub = ")
    assert "##### Software options." in out          # written as in dae, not "# ####"
    # End-of-line comments stay at the end of the line.
    trails(out, "so_mark_from_dae = 0x100", "# hex marks stay hex")
    trails(out, "another_sub = ", "# a mirror")
    trails(out, "sub2 = ", "# local copy")
    trails(out, 'policy = "fixed(0)"', "# always the first")
    trails(out, "googledns = \"tcp+udp://dns.google:53\"", "# reached through proxy")
    trails(out, 'fallback = "proxy"', "# everything else")
    # Groups: above their table header, and inside the filter list above their filter.
    above(out, "# Everything in Hong Kong, except the AI-only nodes.", "[group.proxy]")
    above(out, "# Pinned for streaming.", "[group.media]")
    above(out, "# Japan as a second choice, penalised.", '"name(keyword: JP) [add_latency: 500ms]",')
    trails(out, "[add_latency: -100ms]", "# from the subscriptions")
    above(out, "# No filter: every node.", 'policy = "min"')
    # DNS: the upstream comment keeps its place in a [dns.upstream] table.
    above(out, "# Value can be scheme://host:port.", 'alidns = "udp://dns.alidns.com:53"')
    above(out, "# The routing format is like section routing.", "request = [")
    above(out, "# Block ads.", '"qname(geosite:category-ads-all) -> reject",')
    trails(out, '"qname(geosite:google@cn) -> alidns",', "# Also see: domain-list-community attributes")
    above(out, "# If no match, ask as is.", '"fallback: asis",')
    above(out, "# Possibly polluted: ask again.", '"!qname(geosite:cn) && ip(geoip:private) -> googledns",')
    # Routing: inside the rules array, above the rule they preceded.
    above(out, "# Multicast and broadcast stay on the LAN.", "\"dip(224.0.0.0/3, 'ff00::/8') -> direct\",")
    above(out, "# A device that bypasses the proxy.", "\"mac('02:42:ac:11:00:02') -> direct\",")
    trails(out, '"domain(keyword: facebook, suffix:fb.com) -> proxy",', "# no spaces after commas in dae")
    trails(out, '"dip(8.8.8.8, 8.8.4.4) -> proxy",', "# spread over two lines in dae")
    lines = lines_of(out)
    assert index(lines, "### Preset rules.") > index(lines, "rules = [")
    # Comments after the last item of a block, after `}`, and at the end of the file.
    assert index(lines, "# Trailing notes of routing.") > index(lines, 'fallback = "proxy"')
    assert index(lines, "# end of global") < index(lines, "[subscription]")
    assert lines[-1] == "# End of the config."


def test_rich_blank_lines_kept(rich):
    out, _ = rich
    lines = lines_of(out)
    i = index(lines, "# Multiple interfaces split by")
    assert lines[i - 1] == ""
    i = index(lines, "### Write your rules below.")
    assert lines[i - 1] == "" and lines[i + 1] == ""


def test_every_comment_of_rich_is_kept(rich):
    out, _ = rich
    for line in (DATA / "rich.dae").read_text().splitlines():
        if "#" in line:
            comment = line[line.index("#"):]
            if comment.startswith("#") and "'" not in comment:
                assert comment.strip() in out, comment


# ---------------------------------------------------------------------------
# Smaller conversions.

GLOBAL = "global {\n    tproxy_port: 12345\n}\n"
ROUTING = "routing {\n    fallback: direct\n}\n"


def convert(text: str) -> dict:
    out = convert_dae(text)
    assert tomlkit.parse(out).unwrap() == tomllib.loads(out)
    return tomllib.loads(out)


# Where dae's default differs from daetui's, the conversion writes dae's out (dae_keys.py).
DAE_DEFAULTS = {"auto_config_kernel_parameter": False, "sniffing_timeout": "30ms"}
DAE_DNS_DEFAULTS = {"optimistic_cache": True}


def test_minimal():
    d = convert(GLOBAL + ROUTING)
    assert d == {"global": {"tproxy_port": 12345, **DAE_DEFAULTS}, "routing": {"rules": [], "fallback": "direct"},
                 "dns": DAE_DNS_DEFAULTS}


def test_dae_defaults_are_written_only_where_the_file_says_nothing():
    d = convert("global {\n  sniffing_timeout: 100ms\n}\n" + ROUTING)
    assert d["global"] == {"sniffing_timeout": "100ms", "auto_config_kernel_parameter": False}


def test_routing_without_fallback_falls_back_to_direct_as_in_dae():
    out = convert_dae(GLOBAL + "routing {\n    dip(1.1.1.1) -> proxy\n}\n")
    assert tomllib.loads(out)["routing"] == {"rules": ["dip(1.1.1.1) -> proxy"], "fallback": "direct"}
    assert "# no fallback in the dae file: dae's default" in out


def test_a_key_given_twice_is_read_as_dae_reads_it():
    text = ("global {\n  tproxy_port: 1\n  lan_interface: a\n  tproxy_port: 2\n  lan_interface: b, c\n}\n"
            "node {\n  hk: 'socks5://192.0.2.1:1'\n  hk: 'socks5://192.0.2.2:2'\n}\n"
            "group {\n  g {\n    policy: min\n    policy: random\n  }\n}\n"
            "dns {\n  upstream {\n    a: 'udp://192.0.2.1:53'\n    a: 'udp://192.0.2.2:53'\n  }\n}\n"
            "routing {\n  fallback: direct\n  dip(1.1.1.1) -> g\n  fallback: g\n}\n")
    conv = convert_dae_full(text, "dup.dae")
    d = tomllib.loads(conv.text)
    assert d["global"]["tproxy_port"] == 2                       # a value: the last
    assert d["global"]["lan_interface"] == ["a", "b", "c"]      # a list: dae appends
    assert d["node"] == {"hk": "socks5://192.0.2.2:2"}
    assert d["group"]["g"]["policy"] == "random"
    assert d["dns"]["upstream"] == {"a": "udp://192.0.2.2:53"}
    assert d["routing"]["fallback"] == "g"
    # Each is said, at the line dae reads.
    assert any(w.startswith("dup.dae:4:3:") and "dae keeps the last" in w for w in conv.warnings)
    assert any(w.startswith("dup.dae:5:3:") and "joins them into one list" in w for w in conv.warnings)
    assert any(w.startswith("dup.dae:9:3:") for w in conv.warnings)
    # What dae does not read stays, as a comment.
    assert "# tproxy_port: 1  (given again below; dae reads the last)" in conv.text


def test_sections_given_twice_are_merged_as_in_dae():
    d = convert(GLOBAL + "node {\n  a: 'socks5://192.0.2.1:1'\n}\n" + ROUTING
                + "global {\n  log_level: warn\n}\nnode {\n  b: 'socks5://192.0.2.1:2'\n}\n")
    assert d["global"]["tproxy_port"] == 12345 and d["global"]["log_level"] == "warn"
    assert list(d["node"]) == ["a", "b"]


def test_whitespace_is_normalised_and_quotes_kept():
    d = convert(GLOBAL + """routing {
    ! domain( suffix :   "a.com" ,keyword:b )&&dport(1 ,2)->  proxy
    dip(1.1.1.1)->direct(mark:0x1)
    fallback: direct(must)
}
""")
    assert d["routing"]["rules"] == [
        '!domain(suffix: "a.com", keyword:b) && dport(1, 2) -> proxy',
        "dip(1.1.1.1) -> direct(mark:0x1)",
    ]
    assert d["routing"]["fallback"] == "direct(must)"


def test_docs_style_config():
    text = """/* In the style of dae's docs:
   fallback first, everything on few lines. */
global{tproxy_port:12345 log_level:warn}
routing {
    fallback: my_group   /* the default */
    domain(geosite:cn)->direct
}
group { my_group { policy: min_avg10 } }
dns {
    upstream { googledns: 'tcp+udp://dns.google:53' }
    routing { request { fallback: googledns } }
}
"""
    out = convert_dae(text, "docs.dae")
    d = tomllib.loads(out)
    assert d["routing"] == {"rules": ["domain(geosite:cn) -> direct"], "fallback": "my_group"}
    assert d["group"] == {"my_group": {"policy": "min_avg10"}}
    assert d["dns"] == {"upstream": {"googledns": "tcp+udp://dns.google:53"}, "request": ["fallback: googledns"],
                        **DAE_DNS_DEFAULTS}
    above(out, "# fallback first, everything on few lines.", "[global]")
    trails(out, 'fallback = "my_group"', "# the default")


def test_upstream_without_comments_is_an_inline_table():
    out = convert_dae(GLOBAL + ROUTING + "dns {\n  upstream { a: 'udp://1.1.1.1:53' }\n"
                      "  fixed_domain_ttl { ddns.example.org: 10 }\n}\n")
    assert 'upstream = {a = "udp://1.1.1.1:53"}' in out
    assert 'fixed_domain_ttl = {"ddns.example.org" = 10}' in out


def test_untagged_names_skip_explicit_tags():
    d = convert(GLOBAL + ROUTING + "subscription {\n 'https://a'\n sub1: 'https://b'\n 'https://c'\n sub3: 'file://x'\n}\n")
    assert d["subscription"] == {"sub2": "https://a", "sub1": "https://b", "sub4": "https://c", "sub3": "file://x"}


def test_empty_sections():
    d = convert(GLOBAL + ROUTING + "subscription {}\nnode {\n}\ngroup {\n}\ndns {}\n")
    assert d["subscription"] == {} and d["node"] == {} and d["group"] == {} and d["dns"] == DAE_DNS_DEFAULTS


def test_hash_inside_a_bare_word_is_not_a_comment():
    # dae's lexer keeps "#" inside a bare word; it starts a comment only where a token could start.
    d = convert(GLOBAL + "routing {\n    domain(keyword: a#b) -> direct #real comment\n    fallback: direct\n}\n")
    assert d["routing"]["rules"] == ["domain(keyword: a#b) -> direct"]


def test_crlf_line_endings():
    d = convert((GLOBAL + ROUTING).replace("\n", "\r\n"))
    assert d["routing"]["fallback"] == "direct"


def test_source_name_in_header_and_errors():
    assert convert_dae(GLOBAL + ROUTING, "/etc/dae/config.dae").startswith(
        "# Converted from /etc/dae/config.dae by daetui import-dae.")
    with pytest.raises(DaeImportError) as e:
        convert_dae("bogus {}\n", "/etc/dae/config.dae")
    assert str(e.value).startswith("/etc/dae/config.dae:1:1: unknown section `bogus`")


# ---------------------------------------------------------------------------
# Errors: each with its line and column.

def error(text: str) -> DaeImportError:
    with pytest.raises(DaeImportError) as e:
        convert_dae(text, "t.dae")
    err = e.value
    assert isinstance(err, ValueError)
    assert str(err) == f"t.dae:{err.line}:{err.col}: {err.message}"
    return err


@pytest.mark.parametrize(("text", "line", "col", "message"), [
    # Unbalanced braces.
    ("global {\n    tproxy_port: 1\n" + ROUTING, 1, 8, "`global {` is never closed"),
    (GLOBAL + ROUTING + "}\n", 7, 1, "unmatched `}`"),
    (GLOBAL + "routing {\n    fallback: direct\n    dip(1.1.1.1) -> direct }\n}\n", 7, 1, "unmatched `}`"),
    # A key without a value.
    ("global {\n    log_level:\n    tproxy_port: 1\n}\n" + ROUTING, 2, 5, "`log_level` has no value"),
    ("global {\n    tproxy_port: 1\n    log_level: }\n" + ROUTING, 3, 5, "`log_level` has no value"),
    (GLOBAL + "subscription {\n    my_sub:\n    'https://a'\n}\n" + ROUTING, 5, 5, "`my_sub` has no value"),
    # Unknown sections.
    (GLOBAL + "  bogus {\n}\n" + ROUTING, 4, 3, "unknown section `bogus`"),
    (GLOBAL + "rooting {\n fallback: direct\n}\n", 4, 1, "did you mean `routing`?"),
    # Duplicates.
    (GLOBAL + "group {\n    g { policy: min }\n    g { policy: min }\n}\n" + ROUTING, 6, 5, "duplicate group `g`"),
    # Rules without -> outbound.
    (GLOBAL + "routing {\n    dip(1.1.1.1) direct\n    fallback: direct\n}\n", 5, 5,
     "rule `dip(1.1.1.1)` has no `-> outbound`"),
    (GLOBAL + "routing {\n    fallback: direct\n    domain(geosite:cn) &&\n      dport(80)\n}\n", 6, 5,
     "rule `domain(geosite:cn) && dport(80)` has no `-> outbound`"),
    (GLOBAL + "routing {\n    fallback: direct\n    direct\n}\n", 6, 5, "`direct` is not a rule"),
    (GLOBAL + "routing {\n    fallback: direct\n    dip(1.1.1.1) ->\n}\n", 7, 1, "expected an outbound after `->`"),
    (GLOBAL + ROUTING + "dns {\n routing {\n  request {\n   qname(a.com)\n   fallback: asis\n  }\n }\n}\n",
     10, 4, "rule `qname(a.com)` has no `-> outbound`"),
    # A missing fallback.
    (GLOBAL + ROUTING + "dns {\n  routing {\n    response {\n      upstream(a) -> accept\n    }\n  }\n}\n", 9, 5,
     "response has no `fallback:`"),
    # Unterminated quotes.
    (GLOBAL + "subscription {\n    my_sub: 'https://a\n}\n" + ROUTING, 5, 13, "unterminated quote"),
    (GLOBAL + ROUTING + 'node {\n    "ss://x', 8, 5, "unterminated quote"),
    (GLOBAL + "routing {\n    domain(suffix: 'a.com) -> direct\n    fallback: direct\n}\n", 5, 20,
     "unterminated quote"),
])
def test_errors_are_located(text, line, col, message):
    err = error(text)
    assert message in err.message
    assert (err.line, err.col) == (line, col), err


@pytest.mark.parametrize(("text", "line", "col", "message"), [
    ("global {\n    tproxy_prot: 1\n}\n" + ROUTING, 2, 5, "did you mean `tproxy_port`?"),
    ("global {\n    tproxy_port: 70000\n}\n" + ROUTING, 2, 18, "between 0 and 65535"),
    ("global {\n    tproxy_port: x\n}\n" + ROUTING, 2, 18, "takes an integer"),
    ("global {\n    allow_insecure: maybe\n}\n" + ROUTING, 2, 21, "takes true or false"),
    ("global {\n    check_interval: 30 s\n}\n" + ROUTING, 2, 21, "takes a duration such as 30s or 100ms, not `30`"),
    ("global {\n    check_interval: 30x\n}\n" + ROUTING, 2, 21, "takes a duration"),
    ("global {\n    lan_interface: 'eth0,,eth1'\n}\n" + ROUTING, 2, 20, "empty element"),
    ("global {\n    lan_interface: eth0,,eth1\n}\n" + ROUTING, 2, 25, "expected a value after `,`"),
    ("global {\n    log_level: info, debug\n}\n" + ROUTING, 2, 22, "takes one value"),
    ("global {\n    fallback_resolver: 8.8.8.8:53\n}\n" + ROUTING, 2, 31, "quote values that contain `:`"),
    ("global {\n    dip(1.1.1.1) -> direct\n}\n" + ROUTING, 2, 5, "a rule does not go in global"),
    ("routing {\n  fallback: direct\n}\n", 4, 1, "no `global` section"),
    ("", 1, 1, "no `global` section"),
    (GLOBAL, 4, 1, "no `routing` section"),
    ("tproxy_port: 1\n" + GLOBAL + ROUTING, 1, 1, "expected a section"),
    ("glo~bal {\n}\n", 1, 4, "unexpected character '~'"),
    ("gl@bal {\n}\n", 1, 1, "unknown section `gl@bal`"),     # @ goes on a bare word in dae
    (GLOBAL + ROUTING + "node {\n    https://x.com/sub\n}\n", 8, 5, "looks like a link without quotes"),
    (GLOBAL + ROUTING + "node {\n    my: https://x.com/sub\n}\n", 8, 14, "quote values that contain `:`"),
    (GLOBAL + ROUTING + "group {\n    g {\n        filter: name(a)\n    }\n}\n", 8, 5, "has no `policy:`"),
    (GLOBAL + ROUTING + "group {\n    g {\n        filter: HK\n        policy: min\n    }\n}\n", 9, 17,
     "a filter is a function"),
    (GLOBAL + ROUTING + "group {\n    g {\n        filter: name(a) [latency: 1ms]\n        policy: min\n    }\n}\n",
     9, 26, "a filter's annotation takes `add_latency"),
    (GLOBAL + ROUTING + "group {\n    g {\n        filter: name(a) [add_latency: soon]\n        policy: min\n"
     "    }\n}\n", 9, 39, "takes a duration"),
    (GLOBAL + ROUTING + "group {\n    g {\n        policy: min\n        tolerance: 1s\n    }\n}\n", 10, 9,
     "unknown key in a group `tolerance`"),
    (GLOBAL + ROUTING + "group {\n    policy: min\n}\n", 8, 5, "it takes groups"),
    (GLOBAL + ROUTING + "dns {\n    upstream: 'udp://x:53'\n}\n", 8, 5, "`upstream` in dns is a block"),
    (GLOBAL + ROUTING + "dns {\n    bindx: 127.0.0.1\n}\n", 8, 5, "unknown key in dns `bindx`"),
    (GLOBAL + "routing {\n    fallback: direct\n    dip() -> direct\n}\n", 6, 9, "empty parameter list"),
    (GLOBAL + "routing {\n    fallback: direct\n    dip(ff00::1) -> direct\n}\n", 6, 14, "quote IPv6"),
    (GLOBAL + "routing {\n    fallback: direct\n    must: x\n}\n", 6, 5, "unknown key in routing `must`"),
    (GLOBAL + "routing {\n    fallback: direct /* never closed\n}\n", 5, 22, "unterminated /* comment"),
    (GLOBAL + "routing {\n    fallback: direct # bell \x07\n}\n", 5, 29, "control character"),
    ("a{b{c{d{e{f{g{h{i{j{}}}}}}}}}}", 1, 17, "nested too deeply"),
])
def test_more_errors_are_located(text, line, col, message):
    err = error(text)
    assert message in err.message
    assert (err.line, err.col) == (line, col), err


# ---------------------------------------------------------------------------
# Properties: any text converts to valid TOML or fails with a located DaeImportError.

FRAGMENTS = [
    "global", "routing", "dns", "group", "node", "subscription", "upstream", "request", "response",
    "fixed_domain_ttl", "proxy", "policy", "filter", "fallback", "tproxy_port", "lan_interface", "check_interval",
    "{", "}", "{", "}", ":", ": ", "(", ")", ",", "->", " -> ", "&&", "!", "[", "]", "add_latency", "-500ms",
    "dip(1.1.1.1)", "domain(geosite:cn)", "'ff00::/8'", "'https://x'", '"q"', "'", '"', "30s", "12345", "eth0,eth1",
    "true", "min", "fixed(0)", "asis", "direct", "must_direct", "#c", "# comment\n", "/*", "*/", "/* b */",
    "\n", "\n", " ", "\t", "\r\n", "0x100", "a#b", "é", "\x7f",
]


def check_any(text: str) -> None:
    try:
        out = convert_dae(text, "h.dae")
    except DaeImportError as e:
        assert e.line >= 1 and e.col >= 1
        assert str(e).startswith(f"h.dae:{e.line}:{e.col}: ")
        return
    assert tomlkit.parse(out).unwrap() == tomllib.loads(out)


PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.text(max_size=300))
def test_random_text_only_raises_dae_import_error(text):
    check_any(text)


@PROPERTY
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=80).map(" ".join))
def test_random_token_soup_only_raises_dae_import_error(text):
    check_any(text)


@PROPERTY
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join))
def test_random_values_inside_a_valid_config(value):
    # Deep enough to reach the converter: a value, a rule or a block inside each section.
    for template in (
        "global {{ {v} }}\nrouting {{ fallback: direct }}\n",
        "global {{}}\nrouting {{\n {v}\n fallback: direct\n}}\n",
        "global {{}}\nrouting {{ fallback: direct }}\ngroup {{ g {{ policy: min\n {v}\n }} }}\n",
        "global {{}}\nrouting {{ fallback: direct }}\ndns {{ routing {{ request {{ {v}\nfallback: asis }} }} }}\n",
        "global {{}}\nrouting {{ fallback: direct }}\nnode {{ {v} }}\n",
    ):
        check_any(template.format(v=value))


@PROPERTY
@given(st.integers(0, 10_000), st.sampled_from(["", "}", "{", "'", "->", ":", "\n", "#", "x"]))
def test_mutations_of_rich_only_raise_dae_import_error(at, insert):
    text = (DATA / "rich.dae").read_text()
    at %= len(text)
    check_any(text[:at] + insert + text[at:])
    check_any(text[:at] + text[at + 1:])
