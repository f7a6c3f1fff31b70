"""Config files: defaults, rule tables, and errors that say file, line and column."""

from __future__ import annotations

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
    assert cfg.routing.outbound_ids() == {"direct": 0, "block": 1, "proxy": 2}


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
    ("[dns]\n", 1, 1, "not supported yet"),
    ("[routing]\nrules = [\n  'dport(80) -> direct',\n  \"dport(8x) -> direct\",\n]\n", 4, 10, "not a port"),
    ("[routing]\nrules = [{ rule = 'dprt(1) -> direct' }]\n", 2, 20, "did you mean 'dport'"),
    ("[routing]\nrules = [{ rul = 'dport(1) -> direct' }]\n", 2, 12, "did you mean 'rule'"),
    ("[routing]\nrules = [{ rule = 'dport(1) -> direct', enabled = 'no' }]\n", 2, 51,
     "rules.rule #1.enabled: expected true or false"),
    ("[routing]\nrules = [1]\n", 2, 10, "a rule is a string or a table"),
    ("[routing]\nfallback = 'must_x'\n", 2, 12, "cannot be must_"),
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
