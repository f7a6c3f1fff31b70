"""Editing rules in the config file: comments and layout kept, atomic writes, a backup."""

from __future__ import annotations

import stat

import pytest

from daetui.config.edit import EditError, RulesEditor
from daetui.config.load import load_config

ORIGINAL = """\
# Home router: edited by hand and by the console.
[global]
lan_interface = ["br-lan"]   # the bridge

[group.proxy]
# no nodes yet

[routing]
# Rules, first match wins.
rules = [
  # multicast stays home
  "dip(224.0.0.0/3, 'ff00::/8') -> direct",
  # web through the proxy
  "dport(80, 443) -> proxy",  # the usual
  { rule = "dport(3074) -> direct", name = "xbox" },
  # keep last
  "l4proto(udp) && dport(53) -> direct"
]
fallback = "proxy"  # everything else
"""


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "config.toml"
    p.write_text(ORIGINAL)
    p.chmod(0o640)
    return p


def comments(text: str) -> list[str]:
    return [ln.split("#", 1)[1].strip() for ln in text.splitlines() if "#" in ln]


def test_toggle_writes_only_that_rule_and_keeps_every_comment(cfg):
    ed = RulesEditor(cfg)
    ed.set_enabled(1, False)
    loaded = ed.save()
    new = cfg.read_text()
    assert comments(new) == comments(ORIGINAL)
    diff = [(a, b) for a, b in zip(ORIGINAL.splitlines(), new.splitlines(), strict=True) if a != b]
    assert diff == [('  "dport(80, 443) -> proxy",  # the usual',
                     '  { rule = "dport(80, 443) -> proxy", enabled = false },  # the usual')]
    assert [e.enabled for e in loaded.routing.entries] == [True, False, True, True]
    assert (cfg.with_name("config.toml.bak")).read_text() == ORIGINAL
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640
    # And back: the plain string it was.
    ed = RulesEditor(cfg)
    ed.set_enabled(1, True)
    ed.save()
    assert cfg.read_text() == ORIGINAL


def test_named_rules_keep_their_name(cfg):
    ed = RulesEditor(cfg)
    ed.set_enabled(2, False)
    ed.set_rule(2, "dport(3074, 3075) -> direct")
    ed.save()
    e = load_config(cfg).routing.entries[2]
    assert (e.name, e.enabled, str(e.rule)) == ("xbox", False, "dport(3074, 3075) -> direct")


def test_move_takes_the_comment_along(cfg):
    ed = RulesEditor(cfg)
    ed.move(3, 0)
    ed.save()
    new = cfg.read_text()
    assert new.index("# keep last") < new.index("l4proto(udp)") < new.index("# multicast stays home")
    assert sorted(comments(new)) == sorted(comments(ORIGINAL))
    rules = [str(e.rule) for e in load_config(cfg).routing.entries]
    assert rules[0] == "l4proto(udp) && dport(53) -> direct" and rules[1].startswith("dip(")
    ed = RulesEditor(cfg)
    ed.move(0, 3)  # and back to the end, where it had no trailing comma
    ed.save()
    assert [str(e.rule) for e in load_config(cfg).routing.entries][3] == "l4proto(udp) && dport(53) -> direct"


def test_insert_and_remove(cfg):
    ed = RulesEditor(cfg)
    ed.insert(1, "mac('02:00:5e:00:02:10') -> block")
    ed.insert(len(ed), "dport(9) -> direct")
    ed.remove(3)  # the xbox rule: fourth, after the insert at 1
    cfg_loaded = ed.save()
    texts = [str(e.rule) for e in cfg_loaded.routing.entries]
    assert texts[1] == "mac('02:00:5e:00:02:10') -> block" and texts[-1] == "dport(9) -> direct"
    assert "xbox" not in cfg.read_text() and "# web through the proxy" in cfg.read_text()


def test_an_invalid_edit_writes_nothing(cfg):
    ed = RulesEditor(cfg)
    ed.set_rule(0, "dport(99999) -> direct")
    with pytest.raises(EditError, match="out of range"):
        ed.save()
    ed = RulesEditor(cfg)
    ed.set_rule(0, "dport(1) -> nosuchgroup")
    with pytest.raises(EditError, match="no group named 'nosuchgroup'"):
        ed.save()
    assert cfg.read_text() == ORIGINAL
    assert not cfg.with_name("config.toml.bak").exists()
    with pytest.raises(EditError, match="no rule #9"):
        RulesEditor(cfg).set_enabled(8, False)
