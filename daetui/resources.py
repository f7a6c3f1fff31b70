"""Where the files daetui ships beside its code are: the kernel programs' C sources, the console's themes,
the example configs and the systemd unit.

The checkout keeps them in the top-level `bpf/`, `themes/`, `sample_configs/` and `systemd/`
folders (the source of truth); the build installs them as the packages `daetui.bpf`,
`daetui.themes`, `daetui.sample_configs` and `daetui.systemd` (see setup.py), and an
editable install maps those names back to the folders. So they are found the same way installed or not, from any
working directory: through importlib.resources, never by walking up from a
module's own path.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path


@cache
def _directory(package: str) -> Path:
    root = resources.files(package)
    # BCC compiles from a real file and includes from a real directory: a zipped install would need
    # extracting first, which daetui (installed as files by pip) never is.
    if not isinstance(root, Path):
        raise RuntimeError(f"{package} is not installed as files on disk ({root!r})")
    return root


def bpf_dir() -> Path:
    """The kernel programs' sources (`lan.c`) and the header holding the map layouts (`daetui.h`)."""
    return _directory("daetui.bpf")


def themes_dir() -> Path:
    """The console's stylesheet (`daetui.tcss`) and themes (`*.toml`)."""
    return _directory("daetui.themes")


def systemd_dir() -> Path:
    """The systemd unit (`daetui.service`), which `daetui install-service` writes."""
    return _directory("daetui.systemd")


def sample_configs_dir() -> Path:
    """The example configs (`lab.toml` is the demo's)."""
    return _directory("daetui.sample_configs")
