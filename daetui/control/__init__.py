"""The control plane: the ControlPlane (plane.py) and one module per concern it wires together: the
per-flow pipeline, the routing decision, the kernel's synchronisation, DNS, reload, relays, UDP NAT,
the connection table, events, and the control socket with its commands."""
