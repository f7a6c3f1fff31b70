"""The classifier's tables, built from compiled rules (the kernel's use of them: tests/kernel/test_classifier.py)."""

from __future__ import annotations

from daetui.abi.constants import ABI
from daetui.config.load import parse_config
from daetui.routing.classify import build_classifier
from daetui.routing.compile import compile_rules


def rules(*texts: str, fallback: str = "direct"):
    body = "".join(f'  "{t}",\n' for t in texts)
    cfg = parse_config(f'[group.ga]\n[routing]\nrules = [\n{body}]\nfallback = "{fallback}"\n', "t.toml")
    return compile_rules(cfg.routing, ifindex=lambda name: {"lan0": 2, "wan0": 3}.get(name, 0))


def cls_of(value: int) -> tuple[int, int | None]:
    """A class value as (first word of its bitmap, extra rule position or None)."""
    extra = value & ((1 << ABI.CLS_EXTRA_BITS) - 1)
    return value >> ABI.CLS_EXTRA_BITS, extra - 1 if extra else None


def bitmap(c, value: int) -> int:
    first, extra = cls_of(value)
    bits = sum(w << (64 * i) for i, w in enumerate(c.words[first:first + c.n_words]))
    return bits | (1 << extra if extra is not None else 0)


def test_a_port_s_class_holds_the_rules_whose_port_functions_hold_for_it():
    c = build_classifier(rules("dport(80) -> ga", "dport(443) && dip(10.0.0.0/8) -> block",
                               "!dport(80, 8000-8080) -> direct", "dip(10.1.0.0/16) -> ga"))
    assert c.ok and c.n_rules == 4 and c.n_words == 1
    dport = c.ports[0]
    assert bitmap(c, dport[80]) == 0b1001       # rule 0; rule 3 has no port function
    assert bitmap(c, dport[443]) == 0b1110
    assert bitmap(c, dport[8000]) == bitmap(c, dport[8080]) == 0b1000
    assert bitmap(c, dport[8081]) == 0b1100
    # sport: no rule names one, every port is the all-rules class.
    assert len(set(c.ports[1])) == 1


def test_prefixes_carry_their_ancestors_sets_and_an_address_outside_them_gets_the_default():
    c = build_classifier(rules("dip(10.0.0.0/8) -> ga", "dip(10.1.0.0/16) -> block", "!dip(10.1.2.3) -> direct"))
    by_net = {str(net): bitmap(c, v) for side, net, v in c.ip if side == 0}
    assert by_net == {"10.0.0.0/8": 0b101, "10.1.0.0/16": 0b111, "10.1.2.3/32": 0b011}
    assert bitmap(c, c.defaults[ABI.CLS_F_DIP]) == 0b100


def test_one_bitmap_serves_thousands_of_one_value_rules():
    """4096 rules each naming its own port: the classes are 'no port rule' plus one extra bit, one bitmap."""
    c = build_classifier(rules(*(f"dport({10000 + i}) -> ga" for i in range(4096))))
    assert c.ok and c.n_words == 64
    assert c.n_bitmaps <= 4
    assert cls_of(c.ports[0][10005]) == (cls_of(c.ports[0][0])[0], 5)


def test_an_interface_function_naming_both_sides_is_one_field():
    c = build_classifier(rules("interface(lan: lan0, wan: wan0) -> ga", "interface(lan: lan0) -> block"))
    assert c.has_wan and c.ok
    lan = {i: x for kind, i, _, x in c.keyed if kind == ABI.CLS_KEY_LAN}
    wan = {i: x for kind, i, _, x in c.keyed if kind == ABI.CLS_KEY_WAN}

    def pair(a: int, b: int) -> int:
        return bitmap(c, c.ifaces[lan.get(a, 0) * ABI.CLS_IFACES + wan.get(b, 0)])

    assert pair(2, 3) == 0b11 and pair(2, 9) == 0b11 and pair(9, 3) == 0b01 and pair(9, 9) == 0


def test_rules_that_cannot_match_are_cleared_and_must_rules_and_domains_are_kept_per_position():
    c = build_classifier(rules("interface(lan: nosuch0) -> ga", "dport(53) -> must_rules",
                               "domain(suffix: a.test) && !domain(keyword: b) -> block"))
    assert c.rules[1].must_rules and not c.rules[0].must_rules
    assert (c.rules[2].dom_first, c.rules[2].dom_count, c.rules[2].dom_negate) == (0, 2, 0b10)
    assert c.rules[2].ms_first == 2
    # No interface here is named nosuch0: every flow's interface pair is "any other", where rule 0 is false.
    assert not bitmap(c, c.ifaces[0]) & 1 and bitmap(c, c.ifaces[0]) & 0b110 == 0b110


def test_what_does_not_fit_is_walked_with_the_reason():
    many = " && ".join(f"domain(suffix: n{i}.test)" for i in range(ABI.CLS_MAX_RULE_DOMAINS + 1))
    c = build_classifier(rules(f"{many} -> ga"))
    assert not c.ok and "domain()" in c.why
    assert not build_classifier(rules()).ok
