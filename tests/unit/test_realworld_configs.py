"""Every dae config of the real-world corpus, converted and checked as a user switching from dae would.

A config dae accepts converts and validates, its rules, nodes and groups
equal what the dae text holds, in order (read off the text here by a reader
of its own, not by the converter); a node daetui cannot dial is left out with
a warning naming it. A config dae rejects fails with a message located in the
.dae file. The corpus and what dae does with each case: ../shared/realworld.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from realworld import corpus, load_json, write_geodata

from daetui.config.dae_import import Conversion, DaeImportError, convert_dae_file
from daetui.config.errors import ConfigError
from daetui.config.load import load_config, set_link_check
from daetui.outbound.links import link_problem

# dae accepts these, yet fails at run time, as the corpus says: the result is checked to fail so too, located.
DAE_FAILS_AT_RUN_TIME = {
    # ext:"yourdatfile.dat:yourtag" in both domain() and dip(): one file cannot be geosite and geoip.
    "dae-docs-routing": "yourdatfile.dat",
    # The upstream 'google:"8.8.8.8:53"' has no scheme (dae: ErrBadUpstreamFormat at run time).
    "dae-test-decode": "expected scheme://host:port",
}


def _cases(verdict: str) -> list[dict]:
    try:
        return [c for c in load_json("configs/manifest.json") if c["dae"] == verdict]
    except pytest.skip.Exception:
        return []


@pytest.fixture(autouse=True)
def _links_judged():
    set_link_check(link_problem)
    yield
    set_link_check(None)


def _copy(case: dict, tmp: Path) -> Path:
    """The case's files in tmp (mode 0600, as dae wants them), and the entry file's path there."""
    src = corpus() / "configs" / case["file"]
    into = tmp / "in"
    if "/" in case["file"]:
        shutil.copytree(src.parent, into)
    else:
        into.mkdir()
        shutil.copy(src, into / src.name)
    for f in into.rglob("*.dae"):
        f.chmod(0o600)
    return into / src.name


def _convert_and_load(case: dict, tmp: Path) -> tuple[Conversion, object]:
    entry = _copy(case, tmp)
    write_geodata(tmp, "\n".join(f.read_text(encoding="utf-8") for f in sorted(tmp.rglob("*.dae"))))
    conv = convert_dae_file(entry, check_link=link_problem)
    out = tmp / "config.toml"
    out.write_text(conv.text, encoding="utf-8")
    out.chmod(0o600)
    return conv, load_config(out)


# -- an independent reading of the dae text: sections by brace matching, after comments are gone --------

def _strip_comments(text: str) -> str:
    out, i, quote = [], 0, ""
    while i < len(text):
        c = text[i]
        if quote:
            out.append(c)
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
            out.append(c)
        elif c == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = len(text) if end < 0 else end + 2
            out.append(" ")
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _blocks(text: str, name: str) -> list[str]:
    """The bodies of every top-level `name {` section."""
    bodies, depth, i = [], 0, 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            i = text.index(c, i + 1) + 1
            continue
        if c == "{":
            if depth == 0 and re.search(rf"(?:^|[\s}}]){name}\s*$", text[:i]):
                close, d = i + 1, 1
                while d:
                    if text[close] in "'\"":
                        close = text.index(text[close], close + 1)
                    d += {"{": 1, "}": -1}.get(text[close], 0)
                    close += 1
                bodies.append(text[i + 1:close - 1])
                i = close
                continue
            depth += 1
        elif c == "}":
            depth -= 1
        i += 1
    return bodies


def _texts(case: dict, tmp: Path) -> list[str]:
    """The case's files, comments removed, in dae's include order (the entry first, then the rest sorted)."""
    entry = tmp / "in" / Path(case["file"]).name
    rest = sorted(p for p in (tmp / "in").rglob("*.dae") if p != entry)
    return [_strip_comments(p.read_text(encoding="utf-8")) for p in [entry, *rest]]


_RULE = re.compile(r"((?:!?\s*[A-Za-z_]\w*\s*\((?:[^()'\"]|'[^']*'|\"[^\"]*\")*\)\s*(?:&&\s*)?)+)"
                   r"->\s*([A-Za-z_]\w*(?:\s*\([^()]*\))?)")


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


def _dae_rules(texts: list[str]) -> list[str]:
    return [_squash(m.group(1) + "->" + m.group(2)) for t in texts for body in _blocks(t, "routing")
            for m in _RULE.finditer(body)]


def _dae_tags(texts: list[str], section: str) -> list[str]:
    tags: list[str] = []
    for t in texts:
        for body in _blocks(t, section):
            for m in re.finditer(r"(?m)^\s*(?:([A-Za-z_][\w.\-]*)\s*:\s*)?(['\"])(.*?)\2", body):
                tags.append(m.group(1) or "")
    return tags


def _dae_groups(texts: list[str]) -> list[str]:
    names = []
    for t in texts:
        for body in _blocks(t, "group"):
            depth = 0
            for m in re.finditer(r"([A-Za-z_][\w\-]*)?\s*([{}])", body):
                if m.group(2) == "{":
                    if depth == 0:
                        names.append(m.group(1))
                    depth += 1
                else:
                    depth -= 1
    return names


# -- the cases -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", _cases("accepts"), ids=lambda c: c["id"])
def test_a_config_dae_accepts_converts_and_validates(case: dict, tmp_path: Path) -> None:
    if case["id"] in DAE_FAILS_AT_RUN_TIME:
        with pytest.raises(ConfigError) as e:
            _convert_and_load(case, tmp_path)
        assert DAE_FAILS_AT_RUN_TIME[case["id"]] in e.value.message
        return
    conv, cfg = _convert_and_load(case, tmp_path)
    texts = _texts(case, tmp_path)
    # Rules: every one the dae text holds, in order, as written (but for whitespace).
    assert [_squash(e.rule.text) for e in cfg.routing.entries] == _dae_rules(texts)
    # Groups in order.
    assert [g.name for g in cfg.groups] == _dae_groups(texts)
    # Nodes: the dae text's, in order, but those left out, each with a warning naming it.
    dae_nodes = _dae_tags(texts, "node")
    named = list(dict.fromkeys(t for t in dae_nodes if t))     # a tag given twice: dae keeps the last
    untagged = dae_nodes.count("")
    kept = [n.tag for n in cfg.nodes]
    assert len(kept) + len(conv.left_out) == len(named) + untagged
    assert [t for t in kept if t in named] == [t for t in named if t not in conv.left_out]
    for tag in conv.left_out:
        assert any(f" {tag} left out: " in w for w in conv.warnings), tag
    # Nothing in what was written or said points at a file that was never written.
    assert all(".toml" not in w for w in conv.warnings)


@pytest.mark.parametrize("case", _cases("rejects"), ids=lambda c: c["id"])
def test_a_config_dae_rejects_is_refused_where_it_is_wrong(case: dict, tmp_path: Path) -> None:
    if case["id"] in DAE_FAILS_AT_RUN_TIME:
        with pytest.raises(ConfigError) as e:
            _convert_and_load(case, tmp_path)
        assert DAE_FAILS_AT_RUN_TIME[case["id"]] in e.value.message
        return
    with pytest.raises(DaeImportError) as err:
        _convert_and_load(case, tmp_path)
    assert err.value.file.endswith(".dae") and err.value.line > 0 and err.value.col > 0, str(err.value)


def test_an_error_found_after_conversion_points_into_the_dae_file(tmp_path: Path) -> None:
    """A value only the loader can judge (an upstream's address) is reported at its line in the .dae."""
    case = next(c for c in load_json("configs/manifest.json") if c["id"] == "dae-test-decode")
    entry = _copy(case, tmp_path)
    conv = convert_dae_file(entry, check_link=link_problem)
    out = tmp_path / "never-written.toml"
    with pytest.raises(ConfigError) as e:
        load_config(out, overrides={str(out.resolve()): conv.text})
    where = conv.locate(e.value.path)
    assert where is not None
    file, line, _ = where
    assert file == str(entry)
    assert "google" in entry.read_text(encoding="utf-8").splitlines()[line - 1]


# The words of a refusal for want of a client (links.refusal, the protocol modules' "not supported").
NO_CLIENT = ("daetui has no", "is not supported: no", "no client for", "is not supported; supported")


def test_configs_with_a_node_of_a_protocol_with_no_server_here(tmp_path: Path) -> None:
    """The counts the README states: no config loses a node for want of a client any more (tuic, hysteria2,
    anytls, ss2022, gRPC and REALITY are dialled now); 6 lose placeholders (dae's `'ss://LINK'`, `port`, ...)."""
    corpus()   # skipped where the corpus is absent: the count is of its configs
    no_client, placeholders = [], []
    for i, case in enumerate(_cases("accepts")):
        if case["id"] in DAE_FAILS_AT_RUN_TIME:
            continue
        (tmp_path / str(i)).mkdir()
        conv, _ = _convert_and_load(case, tmp_path / str(i))
        left = [w for w in conv.warnings if " left out: " in w]
        if any(word in w for w in left for word in NO_CLIENT):
            no_client.append(case["id"])
        elif left:
            placeholders.append(case["id"])
    assert no_client == []
    assert len(placeholders) == 6, placeholders


def test_the_corpus_is_all_here() -> None:
    """22 configs dae accepts, 5 it rejects (SOURCES.md): none silently missing from the cases above."""
    corpus()
    assert (len(_cases("accepts")), len(_cases("rejects"))) == (22, 5)
