"""The kernel programs' C sources, shipped as the package data `daetui.bpf` (see daetui/resources.py)."""
