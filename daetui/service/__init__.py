"""daetui under systemd: its unit file (unit.py) and what the daemon tells systemd (notify.py)."""
