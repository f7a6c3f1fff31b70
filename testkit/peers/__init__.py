"""Real protocol peers from Debian's packages, run in a lab's wan namespace for tests and benchmarks.

Each is a `daetui.lab.peer.LabPeer` (the product's lab runs unbound for the
demo with the same base): a server process of its own, ended by its pid.
"""
