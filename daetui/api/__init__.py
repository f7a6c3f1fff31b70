"""The clash/mihomo-compatible controller API and Prometheus /metrics, served in the daemon.

Dashboards (metacubexd, yacd, zashboard), phone apps and terminal clients
speak mihomo's "external controller" REST API (its hub/route/*); this package
answers it from the control plane's own view, kernel-direct flows included.
It sits above `control` like the console does: it reads snapshots and calls
the ControlPlane's commands, never its maps or sockets.
"""
