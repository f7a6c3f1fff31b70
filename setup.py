"""The package list, which pyproject.toml cannot say alone.

The kernel programs' sources (`bpf/`) and the console's themes (`themes/`)
stay top-level folders of the checkout, where a reader of the design looks for
them, and are installed inside the package as `daetui.bpf` and
`daetui.themes`, so that daetui finds them through importlib.resources wherever
it is installed (daetui/resources.py). testkit/, tests/ and bench/ are not
installed.
"""

from setuptools import find_packages, setup

DATA = {"daetui.bpf": "bpf", "daetui.themes": "themes"}

setup(
    packages=[*find_packages(include=["daetui", "daetui.*"]), *DATA],
    package_dir=DATA,
    package_data={"daetui.bpf": ["*.c", "*.h"], "daetui.themes": ["*.tcss", "*.toml"]},
)
