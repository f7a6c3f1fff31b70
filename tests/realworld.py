"""The real-world corpus (../shared/realworld, beside the project): where it is, and geo data for its cases.

The corpus is public material nobody here wrote (dae configs, rule strings,
share links, subscriptions), each case with what dae does with it
(SOURCES.md there). Tests read it where it is and skip when it is absent;
it is never copied into the project.

Geo data is not in the corpus: `write_geodata` writes geoip.dat/geosite.dat
(and the files `ext:"file.dat:tag"` names) holding every tag a text names, in
v2ray's layout, so a case fails on what daetui does with it, not on a tag
missing from whatever .dat files this machine has.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from daetui.routing.geodata import DomainEntry, write_geoip, write_geosite

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "realworld"

_GEO = re.compile(r"""\b(geoip|geosite)\s*:\s*['"]?(!?)([A-Za-z0-9_\-!.]+)((?:@[A-Za-z0-9_\-!]+)*)""")
_EXT = re.compile(r"""\bext\s*:\s*(['"])([^'"]+):([^'"]+)\1""")


def corpus() -> Path:
    """The corpus directory; the calling test is skipped where it is absent."""
    if not (CORPUS / "SOURCES.md").is_file():
        pytest.skip(f"the real-world corpus is not at {CORPUS}")
    return CORPUS


def load_json(name: str) -> Any:
    """One of the corpus's JSON files (rules.json, configs/manifest.json, ...)."""
    return json.loads((corpus() / name).read_text(encoding="utf-8"))


def write_geodata(directory: Path, text: str) -> None:
    """geoip.dat, geosite.dat and every ext file in `directory`, holding each tag `text` names.

    A geosite tag holds one suffix entry per attribute set named with it (so
    `geosite:google@cn` finds an entry); an ext file holds its tags both as
    geoip and geosite would read them is impossible in one file, so an ext
    tag used in domain() gets a geosite file and one used in ip rules a
    geoip file, the later use winning (dae fails the same way at run time).
    """
    ips: dict[str, list[str]] = {}
    sites: dict[str, list[DomainEntry]] = {}
    for n, m in enumerate(_GEO.finditer(text)):
        kind, tag, attrs = m.group(1), m.group(3).strip("!").lower(), m.group(4)
        if kind == "geoip":
            ips.setdefault(tag, [f"198.18.{n % 250}.0/24"])
        else:
            attributes = frozenset(a.lower().lstrip("!") for a in attrs.split("@") if a)
            sites.setdefault(tag, []).append(DomainEntry("suffix", f"{tag}.example", attributes))
            sites[tag].append(DomainEntry("suffix", f"plain-{tag}.example"))
    write_geoip(directory / "geoip.dat", ips or {"private": ["10.0.0.0/8"]})
    write_geosite(directory / "geosite.dat", sites or {"cn": [DomainEntry("suffix", "cn")]})
    ext_ip: dict[str, dict[str, list[str]]] = {}
    ext_site: dict[str, dict[str, list[DomainEntry]]] = {}
    for m in _EXT.finditer(text):
        file, tag = m.group(2), m.group(3).lower()
        before = text[:m.start()]
        func = re.findall(r"([a-z_]+)\s*\([^()]*$", before)
        if func and func[-1] in ("domain",):
            ext_site.setdefault(file, {})[tag] = [DomainEntry("suffix", f"{tag}.example")]
        else:
            ext_ip.setdefault(file, {})[tag] = ["198.19.0.0/24"]
    for file, tags in ext_site.items():
        write_geosite(directory / file, tags)
    for file, ip_tags in ext_ip.items():
        if file not in ext_site:
            write_geoip(directory / file, ip_tags)
