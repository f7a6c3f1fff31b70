"""The package list, which pyproject.toml cannot say alone.

The kernel programs' sources (`bpf/`), the console's themes (`themes/`),
the example configs (`sample_configs/`, the demo's among them) and the systemd
unit (`systemd/`) stay top-level
folders of the checkout, where a reader of the design looks for them, and are
installed inside the package as `daetui.bpf`, `daetui.themes`,
`daetui.sample_configs` and `daetui.systemd`, so that daetui finds them through importlib.resources wherever
it is installed (daetui/resources.py). testkit/, tests/ and bench/ are not
installed.
"""

from setuptools import find_packages, setup

DATA = {"daetui.bpf": "bpf", "daetui.themes": "themes", "daetui.sample_configs": "sample_configs",
        "daetui.systemd": "systemd"}

setup(
    packages=[*find_packages(include=["daetui", "daetui.*"]), *DATA],
    package_dir=DATA,
    package_data={"daetui.bpf": ["*.c", "*.h"], "daetui.themes": ["*.tcss", "*.toml"],
                  "daetui.sample_configs": ["*.toml", "*.dae"], "daetui.systemd": ["*.service"]},
)
