"""The systemd unit, shipped as the package data `daetui.systemd` (see daetui/resources.py)."""
