"""What the tests and the benchmarks share, and the product never imports.

Real protocol peers run in the lab, the daemon as a process, and a harness that
runs the kernel programs on crafted packets. Not part of the installed package:
it lives beside `daetui/` and is found from the checkout (pytest's `pythonpath`,
the benchmarks' own path).
"""
