"""dae's key table (daetui/config/dae_keys.py) against daetui's schema. (The keys real configs use are held
against it by tests/unit/test_realworld_configs.py, which converts each.)"""

from __future__ import annotations

from daetui.config import dae_keys, schema


def test_every_dae_key_with_a_meaning_is_a_daetui_key() -> None:
    for name, key in dae_keys.GLOBAL.items():
        if key.has_meaning:
            assert key.target(name) in schema.GLOBAL, name
        else:
            assert name not in schema.GLOBAL, f"{name} has a meaning in the schema but not in dae_keys"
    for name, key in dae_keys.DNS.items():
        if key.kind != "block" or name in ("upstream", "fixed_domain_ttl"):
            assert key.target(name) in schema.DNS, name
    for name in dae_keys.GROUP:
        assert name in schema.GROUP, name


def test_the_loader_warns_of_exactly_the_dae_keys_without_meaning() -> None:
    assert {k: v.why for k, v in dae_keys.GLOBAL.items() if not v.has_meaning} == schema.DAE_ONLY
    assert all(why for why in schema.DAE_ONLY.values())
