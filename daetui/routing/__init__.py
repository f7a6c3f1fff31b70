"""dae's rule language: the parser, the functions and their values, checked rule sets, the compiler to
the kernel's match sets, the user-space matcher and explain, DNS rules, and geoip/geosite data."""
