"""Where relayed flows go: a dialer per protocol (direct, socks5, http(s), shadowsocks, trojan, vless,
vmess), share links and subscriptions, and groups of nodes with their health and selection policies."""
