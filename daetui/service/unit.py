"""The systemd unit shipped with daetui (`systemd/daetui.service`), made to fit this installation.

The shipped file is a working unit for a daetui at /usr/bin/daetui with its
config at /etc/daetui/config.toml; `daetui install-service` puts in the
daetui it runs from and the config it is given, and writes it under
ROOT/etc/systemd/system.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from daetui.resources import systemd_dir

UNIT_NAME = "daetui.service"
SHIPPED_EXEC = "/usr/bin/daetui"
SHIPPED_CONFIG = "/etc/daetui/config.toml"
UNIT_DIR = Path("etc/systemd/system")


class UnitError(ValueError):
    """The unit cannot be written as asked."""


def shipped_unit() -> str:
    """The unit file as shipped."""
    return (systemd_dir() / UNIT_NAME).read_text(encoding="utf-8")


def daetui_command() -> list[str]:
    """How systemd starts this daetui: the `daetui` script beside this interpreter, else `python -m daetui`."""
    script = Path(sys.executable).parent / "daetui"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "daetui"]


def _path(p: str) -> str:
    """A path as a unit file holds it: `%` escaped (systemd's specifiers); nothing that needs quoting."""
    if not p.startswith("/") or any(c.isspace() or c in "\"'\\;" or not c.isprintable() for c in p):
        raise UnitError(f"{p!r}: the unit takes absolute paths without spaces, quotes, backslashes or ';'")
    return p.replace("%", "%%")


def render_unit(config: str | os.PathLike[str], command: list[str] | None = None) -> str:
    """The shipped unit with ExecStart/ExecReload/ExecStopPost running `command` and the config at `config`."""
    config_path = Path(config).absolute()
    exe = " ".join(_path(a) for a in (command or daetui_command())).replace("$", "$$")
    cfg = _path(str(config_path))
    out = []
    for line in shipped_unit().splitlines():
        if line.startswith(("ExecStart=", "ExecReload=", "ExecStopPost=")):
            line = line.replace(SHIPPED_EXEC, exe, 1).replace(SHIPPED_CONFIG, cfg.replace("$", "$$"))
        elif line.startswith("ReadWritePaths=-"):
            line = f"ReadWritePaths=-{_path(str(config_path.parent))}"
        out.append(line)
    return "\n".join(out) + "\n"


def install_unit(text: str, root: Path = Path("/"), force: bool = False) -> Path:
    """Write the unit to ROOT/etc/systemd/system (0644, atomically); an existing different one only with `force`."""
    target = root / UNIT_DIR / UNIT_NAME
    if target.exists() and target.read_text(encoding="utf-8") != text and not force:
        raise UnitError(f"{target} exists and differs (--force replaces it; --dry-run shows the new one)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{UNIT_NAME}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    os.replace(tmp, target)
    return target
