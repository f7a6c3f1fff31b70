"""The kernel programs' ABI as user space reads it: the constants of `bpf/daetui.h`
(`constants`) and the `routing_tuples` record, raw and decoded (`flowrecord`).

Below every layer that names a kernel value (the rule compiler, the dataplane,
the console's flow rows); it imports nothing else of daetui but the resources.
"""
