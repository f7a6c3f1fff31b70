"""Config files: defaults, rule tables, and errors that say file, line and column."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daetui.config.errors import ConfigError
from daetui.config.load import load_config, parse_config

GOOD = """\
# home router
[global]
lan_interface = "br-lan, eth1"   # dae's comma form
tproxy_port = 12346

[group.proxy]
policy = "min"

[routing]
rules = [
  'dip(224.0.0.0/3, "ff00::/8") -> direct',
  # a comment between rules
  { rule = "l4proto(udp) && dport(443) -> block", name = "no-quic" },
  { rule = "dport(22) -> direct", enabled = false },
  "sip(192.168.1.0/24) -> proxy",
]
fallback = "proxy"
"""


def test_good_config():
    cfg = parse_config(GOOD, "home.toml")
    assert cfg.global_.lan_interface == ("br-lan", "eth1")
    assert cfg.global_.tproxy_port == 12346
    assert cfg.global_.fail_open is True  # default
    e = cfg.routing.entries
    assert [x.enabled for x in e] == [True, True, False, True]
    assert e[1].name == "no-quic" and e[1].id == "no-quic" and e[1].label == "#2 no-quic"
    assert cfg.routing.groups == ("proxy",)
    ids = cfg.routing.outbound_ids()
    assert (ids["direct"], ids["block"], ids["proxy"]) == (0, 1, 2)


def test_sections_durations_and_dae_options():
    text = """
[global]
check_interval = "1m30s"
sniffing_timeout = "150ms"
dial_mode = "domain++"
tcp_check_url = "http://cp.cloudflare.com,1.1.1.1"
pprof_port = 0

[node]
hk1 = "ss://YWVzLTEyOC1nY206cGFzcw@198.51.100.7:8388#hk1"
"us-2" = "trojan://secret@203.0.113.5:443"

[subscription]
mine = "https://example.com/sub"

[group.proxy]
filter = ["name(keyword: hk)", "subtag(mine)"]
policy = "fixed(0)"

[dns]
upstream = { local = "udp://192.0.2.53:53", remote = "tcp+udp://198.51.100.53:53" }
request = ["qname(suffix: cn) -> local", "fallback: remote"]
response = ["upstream(remote) -> accept", "!qname(suffix: cn) && ip(10.0.0.0/8) -> remote", "fallback: accept"]
ipversion_prefer = 4
fixed_domain_ttl = { "ddns.example.org" = 10 }

[routing]
rules = ["dport(443) -> proxy"]
fallback = "direct"
"""
    cfg = parse_config(text, "c.toml")
    g = cfg.global_
    assert (g.check_interval, g.sniffing_timeout, g.dial_mode) == (90.0, 0.15, "domain++")
    assert g.tcp_check_url == ("http://cp.cloudflare.com", "1.1.1.1")
    assert any("pprof_port is ignored" in w for w in cfg.warnings)
    assert [(n.tag, n.link.split(":")[0]) for n in cfg.nodes] == [("hk1", "ss"), ("us-2", "trojan")]
    assert cfg.subscriptions[0].tag == "mine"
    assert cfg.groups[0].filters == ("name(keyword: hk)", "subtag(mine)") and cfg.groups[0].policy == "fixed(0)"
    assert cfg.dns.upstream["remote"].startswith("tcp+udp://")
    assert cfg.dns.request == ("qname(suffix: cn) -> local",) and cfg.dns.request_fallback == "remote"
    assert cfg.dns.response_fallback == "accept" and cfg.dns.fixed_domain_ttl == {"ddns.example.org": 10}
    assert cfg.routing.groups == ("proxy",)


def test_include_merges_sections_and_errors_name_the_included_file(tmp_path):
    (tmp_path / "nodes.toml").write_text('[node]\nhk = "ss://x@198.51.100.7:1"\n\n[group.proxy]\n')
    main = tmp_path / "main.toml"
    main.write_text('include = ["nodes.toml"]\n[global]\nlan_interface = ["lan0"]\n\n'
                    '[routing]\nrules = ["dport(1) -> proxy"]\n')
    cfg = load_config(main)
    assert [n.tag for n in cfg.nodes] == ["hk"] and cfg.routing_file == str(main)
    assert len(cfg.files) == 2
    (tmp_path / "nodes.toml").write_text('[node]\nhk = "sss://x"\n')
    with pytest.raises(ConfigError) as e:
        load_config(main)
    assert e.value.file == str((tmp_path / "nodes.toml").resolve()) and e.value.line == 2
    assert "did you mean ss://" in e.value.message
    (tmp_path / "nodes.toml").write_text('[global]\nlan_interface = ["lan1"]\n')
    with pytest.raises(ConfigError, match=r"set in .*main\.toml already"):
        load_config(main)
    (tmp_path / "nodes.toml").write_text('include = ["main.toml"]\n')
    with pytest.raises(ConfigError, match="included twice"):
        load_config(main)


def test_rule_ids_are_stable_and_distinct():
    text = '[routing]\nrules = ["dport(1) -> direct", "dport(1) -> direct", "dport(2) -> direct"]\n'
    a = [x.id for x in parse_config(text).routing.entries]
    b = [x.id for x in parse_config(text.replace("dport(2)", "dport(3)")).routing.entries]
    assert len(set(a)) == 3 and a[:2] == b[:2] and a[2] != b[2]


def err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.toml")
    return e.value


@pytest.mark.parametrize(("text", "line", "col", "message"), [
    ("[global]\ntproxy_prot = 1\n", 2, 1, "did you mean 'tproxy_port'"),
    ("[global]\ntproxy_port = 'x'\n", 2, 15, "expected an integer"),
    ("[global]\ntproxy_port = 70000\n", 2, 15, "between 1 and 65535"),
    ("[global]\nfail_open = 1\n", 2, 13, "expected true or false"),
    ("[global]\nlog_level = 'loud'\n", 2, 13, "expected one of error"),
    ("[global]\nso_mark_from_dae = 0x2000000\n", 2, 20, "must not use bit"),
    ("[globl]\n", 1, 1, "did you mean 'global'"),
    ("[routing]\nrules = [\n  'dport(80) -> direct',\n  \"dport(8x) -> direct\",\n]\n", 4, 10, "not a port"),
    ("[routing]\nrules = [{ rule = 'dprt(1) -> direct' }]\n", 2, 20, "did you mean 'dport'"),
    ("[routing]\nrules = [{ rul = 'dport(1) -> direct' }]\n", 2, 12, "did you mean 'rule'"),
    ("[routing]\nrules = [{ rule = 'dport(1) -> direct', enabled = 'no' }]\n", 2, 51,
     "rules.rule #1.enabled: expected true or false"),
    ("[routing]\nrules = [1]\n", 2, 10, "a rule is a string or a table"),
    ("[routing]\nfallback = 'must_x'\n", 2, 12, "cannot be must_"),
    ("[routing]\nrules = ['dport(1) -> porxy']\n[group.proxy]\n", 2, 23, "did you mean 'proxy'"),
    ("[routing]\nfallback = 'proxy'\n", 2, 12, "declare it with a [group.proxy] table"),
    ("[global]\ncheck_interval = '30 s'\n", 2, 18, "not a duration"),
    ("[global]\ndial_mode = 'domain+++'\n", 2, 13, "expected one of ip, domain"),
    ("[node]\na = 1\n", 2, 5, "expected a link"),
    ("[group.direct]\n", 1, 1, "not direct, block or must_"),
    ("[group.g]\npolicy = 'fastest'\n", 2, 10, "expected random, fixed(N)"),
    ("[dns]\nrequest = ['qnam(a) -> x']\n", 2, 13, "did you mean 'qname'"),
    ("[dns]\nrequest = ['fallback: a', 'qname(a) -> x']\n", 2, 12, "the fallback comes last"),
    ("[routing]\nfallback = 'a b'\n", 2, 15, "expected only an outbound name"),
    # \t is one character in the rule but two in the file: the column still lands on the error.
    ('[routing]\nrules = ["dport(1)\\t&& dport(x) -> direct"]\n', 2, 30, "not a port"),
    ("[global\n", 1, 8, "TOML syntax"),
])
def test_errors_name_line_and_column(text, line, col, message):
    e = err(text)
    assert message in e.message
    assert (e.file, e.line, e.col) == ("c.toml", line, col), str(e)
    assert str(e).startswith(f"c.toml:{line}:{col}: ")


def test_error_shows_the_line_with_a_caret():
    e = err("[routing]\nrules = ['dport(1) && sport(99999) -> x']\n")
    lines = str(e).splitlines()
    assert lines[1].strip() == "rules = ['dport(1) && sport(99999) -> x']"
    assert lines[2].index("^") == 4 + lines[1].strip().index("99999") and lines[2].count("^") == 5


def test_load_config_reads_a_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(GOOD)
    assert load_config(p).routing.fallback == "proxy"
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]{}=\"',.# \nabcglobalrutinfx0123->()&!")), max_size=120))
def test_any_text_gives_a_config_or_a_located_error(text):
    try:
        parse_config(text, "f.toml")
    except ConfigError as e:
        assert e.file == "f.toml"
        if e.line:
            assert 1 <= e.line <= text.count("\n") + 2


def test_dns_rules_take_interface_as_routing_rules_do():
    base = ('[dns]\nupstream = {{ a = "udp://192.0.2.1:53" }}\nrequest = ["{} -> a", "fallback: asis"]\n'
            '[routing]\nrules = []\n')
    cfg = parse_config(base.format("interface(lan: lan0, br-guest) && qname(suffix: example.com)"))
    assert cfg.dns.request == ("interface(lan: lan0, br-guest) && qname(suffix: example.com) -> a",)
    with pytest.raises(ConfigError, match=r"3:13: unknown function 'dport'; expected one of qname, qtype, interface"):
        parse_config(base.format("dport(53) && qname(example.com)"))   # not a DNS function


# -- issue 11, fix 8: a config error never shows a secret of the line it quotes -----------------------------

PASSWORD = "Sup3r-S3cret-pw"
UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
TOKEN = "tK9f2LqZx81mWvP0"
SS_USERINFO = base64.urlsafe_b64encode(f"aes-256-gcm:{PASSWORD}".encode()).decode().rstrip("=")
SECRETS = (PASSWORD, UUID, TOKEN, SS_USERINFO)


@pytest.mark.parametrize("text, line, col, message", [
    # A scheme typo: the loader points at the link.
    (f'[node]\nv = "vles://{UUID}@203.0.113.10:443?security=none#v"\n', 2, 5, "did you mean vless://"),
    (f'[node]\ns = "sss://{SS_USERINFO}@203.0.113.10:8388#s"\n', 2, 5, "did you mean ss://"),
    (f'[node]\nt = "trojan://{PASSWORD}@203.0.113.10:443?sni=x" ok\n', 2, 55, "TOML syntax"),
    (f'[subscription]\nsub = "htps://sub.example.com/api/{TOKEN}?token={TOKEN}"\n', 2, 7, "did you mean https://"),
    # Cut short: TOML's own error, on a line the loader cannot take apart.
    (f'[node]\nv = "vless://{UUID}@203.0.113.10:443#v\n', 2, 69, "TOML syntax"),
    (f'[node]\ns = "socks5://alice:{PASSWORD}@203.0.113.10:1080\n', 2, 54, "TOML syntax"),
    # Another key's error on a line that also holds a link (an inline table).
    (f'node = {{ s = "socks5://alice:{PASSWORD}@203.0.113.10:1080", n = 1 }}\n', 1, 70, "expected a link"),
])
def test_config_errors_mask_the_secrets_of_the_line_they_show(text, line, col, message):
    e = err(text)
    shown = str(e)
    assert message in shown
    assert (e.line, e.col) == (line, col), shown   # the location is the file's, whatever was masked
    for secret in SECRETS:
        assert secret not in shown, shown
        assert secret not in (e.source_line or "")
    assert "***" in shown


def test_a_masked_line_keeps_its_caret_on_the_culprit():
    e = err(f'[node]\nv = "vles://{UUID}@203.0.113.10:443?security=none#v"\n')
    quoted, caret = str(e).splitlines()[1:3]
    assert quoted.strip() == 'v = "vles://***#v"'     # the scheme's typo stays in sight
    assert quoted[caret.index("^")] == '"'            # the value starts under the caret
    e = err('[global]\nudp_timeout = "3x"\n' f'[node]\ns = "socks5://alice:{PASSWORD}@203.0.113.10:1080"\n')
    assert str(e).splitlines()[2].index("^") == str(e).splitlines()[1].index('"3x"')


# -- issue 11, fix 9: timers that cannot be zero -----------------------------------------------------------

@pytest.mark.parametrize("text, line, col", [
    ("[global]\nudp_timeout = 0\n", 2, 15),
    ("[global]\nudp_timeout = '0s'\n", 2, 15),
    ("[global]\nudp_timeout = -5\n", 2, 15),
    ("[global]\ncheck_interval = 0\n", 2, 18),
    ("[global]\ncheck_interval = '0ms'\n", 2, 18),
    ("[global]\nlan_interface = 'lan0'\ncheck_interval = -1.5\n", 3, 18),
    ("[group.proxy]\ncheck_interval = '0s'\n", 2, 18),
])
def test_zero_or_negative_timers_are_refused_where_they_are(text, line, col):
    e = err(text)
    assert (e.file, e.line, e.col) == ("c.toml", line, col), str(e)
    assert "expected a duration greater than zero" in e.message


def test_timers_that_may_be_zero_still_may():
    cfg = parse_config("[global]\nsniffing_timeout = 0\ncheck_tolerance = '0s'\nudp_timeout = '100ms'\n")
    assert (cfg.global_.sniffing_timeout, cfg.global_.check_tolerance, cfg.global_.udp_timeout) == (0, 0, 0.1)
