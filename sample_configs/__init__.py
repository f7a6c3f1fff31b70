"""Annotated example configs, shipped as the package data `daetui.sample_configs` (see daetui/resources.py):
the demo runs `lab.toml`, and `daetui validate` accepts every one of them."""
