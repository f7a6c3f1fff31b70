"""The namespace lab of `daetui lab` and `daetui demo`: lan, router and wan namespaces with no route out,
the servers of the "internet", unbound for DNS, and the demo's traffic."""
