"""daetui: a transparent proxy for Linux routers; eBPF splits the traffic, an asyncio control plane relays
what the kernel hands it, and a Textual console shows and changes it live. README.md, "Layout", shows
the packages and the layers they form."""
