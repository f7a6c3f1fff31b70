#!/bin/sh
# Install what daetui needs on Debian 12, idempotently: Debian packages, kernel
# header links where the running kernel has none, a venv, and the package.
# Called by `make demo` and `make test`; safe to run any number of times.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    exec sudo "$0" "$@"
fi

ARCH=$(dpkg --print-architecture)
# python3-bpfcc: BCC for Debian's python3 (PyPI's "bcc" is something else).
# iperf3, dnsperf: the benchmarks. dnsmasq-base, unbound: the DNS peers (run by the tests
# in the lab, never as a system service); shadowsocks-libev, v2ray, trojan, dante-server,
# tinyproxy, simple-obfs, shadowsocks-v2ray-plugin, openssh-server (ssh -D: socks4a): the proxy peers
# and plugins (likewise); nftables, iptables: the TPROXY peer of bench/proxy_path.py.
PKGS="python3-bpfcc python3-venv iproute2 linux-headers-$ARCH iperf3 bpftool tmux dnsmasq-base unbound dnsperf
shadowsocks-libev v2ray trojan dante-server tinyproxy simple-obfs shadowsocks-v2ray-plugin openssh-server nftables iptables
chromium fonts-liberation"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing"
    # Packages of servers (the test peers) must not start system-wide services.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy=yes
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends $missing >/dev/null
    [ -n "$policy" ] && rm -f /usr/sbin/policy-rc.d
fi

# BCC compiles against the running kernel's headers. Where the kernel came
# without them (this VM's kernel), point build/ and source/ at Debian's.
K=$(uname -r)
if [ ! -e "/lib/modules/$K/build" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-"$ARCH" 2>/dev/null | sort -V | tail -n1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
    if [ -z "$hdr" ] || [ -z "$common" ]; then
        echo "setup: no kernel headers under /usr/src" >&2
        exit 1
    fi
    mkdir -p "/lib/modules/$K"
    ln -sfn "$hdr" "/lib/modules/$K/build"
    ln -sfn "$common" "/lib/modules/$K/source"
    echo "setup: linked /lib/modules/$K/build -> $hdr"
fi

# The venv sees Debian's bcc (system site packages) and takes the rest from PyPI.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.daetui-installed
# Installed again when what decides the install changes (dependencies, the package list).
want=$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[test]'
    echo "$want" > "$stamp"
fi
