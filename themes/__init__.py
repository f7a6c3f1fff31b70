"""The console's stylesheet and themes, shipped as the package data `daetui.themes` (see daetui/resources.py)."""
