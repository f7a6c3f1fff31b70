"""dae's `include` in import-dae: globs relative to the entry file, sections merged across files, in dae's order."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from daetui.config.dae_import import DaeImportError, convert_dae_file


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def test_globbed_files_are_merged_section_by_section_in_dae_order(tmp_path: Path) -> None:
    entry = _write(tmp_path / "config.dae", "include {\n  config.d/*.dae\n}\nglobal {\n  log_level: warn\n}\n"
                                            "node {\n  a: 'socks5://192.0.2.1:1080'\n}\n")
    # Sorted by name, as Go's filepath.Glob returns them; the includer's items come first.
    _write(tmp_path / "config.d" / "b.dae", "node {\n  c: 'socks5://192.0.2.3:1080'\n}\n"
                                           "routing {\n  dip(10.0.0.0/8) -> direct\n  fallback: direct\n}\n")
    _write(tmp_path / "config.d" / "a.dae", "node {\n  b: 'socks5://192.0.2.2:1080'\n}\n")
    _write(tmp_path / "config.d" / "notes.txt", "not a dae file: skipped, as dae skips it\n")
    conv = convert_dae_file(entry)
    d = tomllib.loads(conv.text)
    assert list(d["node"]) == ["a", "b", "c"]
    assert d["routing"] == {"rules": ["dip(10.0.0.0/8) -> direct"], "fallback": "direct"}
    assert conv.files == [str(entry), str(tmp_path / "config.d" / "a.dae"), str(tmp_path / "config.d" / "b.dae")]
    assert f"# node continued from {tmp_path / 'config.d' / 'a.dae'}:1" in conv.text


def test_a_pattern_that_matches_nothing_is_no_error(tmp_path: Path) -> None:
    entry = _write(tmp_path / "config.dae", "include {\n  nodes.dae\n  /nonexistent/dir/*.dae\n}\n"
                                            "global {}\nrouting {}\n")
    assert tomllib.loads(convert_dae_file(entry).text)["routing"]["fallback"] == "direct"


def test_nested_includes_are_relative_to_the_entry_file(tmp_path: Path) -> None:
    entry = _write(tmp_path / "config.dae", "include {\n  sub/one.dae\n}\nglobal {}\nrouting {}\n")
    # dae joins every pattern with the entry file's directory, also those of an included file.
    _write(tmp_path / "sub" / "one.dae", "include {\n  sub/two.dae\n}\n")
    _write(tmp_path / "sub" / "two.dae", "node {\n  deep: 'socks5://192.0.2.9:1080'\n}\n")
    assert tomllib.loads(convert_dae_file(entry).text)["node"] == {"deep": "socks5://192.0.2.9:1080"}


def test_an_error_in_an_included_file_names_that_file(tmp_path: Path) -> None:
    entry = _write(tmp_path / "config.dae", "include {\n  bad.dae\n}\nglobal {}\nrouting {}\n")
    bad = _write(tmp_path / "bad.dae", "global {\n  tproxy_prot: 1\n}\n")
    with pytest.raises(DaeImportError) as e:
        convert_dae_file(entry)
    assert (e.value.file, e.value.line, e.value.col) == (str(bad), 2, 3)
    assert "did you mean `tproxy_port`?" in e.value.message


def test_circular_includes_are_refused(tmp_path: Path) -> None:
    entry = _write(tmp_path / "config.dae", "include {\n  a.dae\n}\nglobal {}\nrouting {}\n")
    _write(tmp_path / "a.dae", "include {\n  config.dae\n}\n")
    with pytest.raises(DaeImportError, match="circular include"):
        convert_dae_file(entry)


def test_files_outside_the_entry_directory_are_refused(tmp_path: Path) -> None:
    entry = _write(tmp_path / "etc" / "config.dae", "include {\n  ../elsewhere.dae\n}\nglobal {}\nrouting {}\n")
    _write(tmp_path / "elsewhere.dae", "node {\n  x: 'socks5://192.0.2.1:1'\n}\n")
    with pytest.raises(DaeImportError, match="outside"):
        convert_dae_file(entry)


def test_an_open_file_mode_is_warned_as_dae_would_refuse_it(tmp_path: Path) -> None:
    entry = _write(tmp_path / "config.dae", "include {\n  n.dae\n}\nglobal {}\nrouting {}\n")
    _write(tmp_path / "n.dae", "node {\n}\n").chmod(0o644)
    conv = convert_dae_file(entry)
    assert any("permissions 0644 are too open" in w for w in conv.warnings)
