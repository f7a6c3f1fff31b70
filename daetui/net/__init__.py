"""The bottom layer: sockets and what every protocol stands on.

Socket options and marks (`sockopts`), network namespaces (`netns`), host
text (`address`), the stream and dialer interfaces every outbound and the DNS
upstreams speak (`stream`), TLS over any stream (`tls`), framed reads
(`buffered`). It imports nothing else of daetui.
"""
