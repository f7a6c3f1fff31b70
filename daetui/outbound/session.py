"""A proxy server's session for one request: its TLS settings, and the connection opened through `via`.

Shared by trojan.py, vless.py and vmess.py.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from daetui.net.stream import Dialer, DialError, Stream
from daetui.net.tls import client_context, server_name, start_tls


def node_context(node: object, allow_insecure: bool, ca_file: str | Path | None,
                 ssl_context: ssl.SSLContext | None) -> ssl.SSLContext:
    """A TLS node's client context: `ssl_context` as given, else one from its link and daetui's settings.

    `allow_insecure` is daetui's global setting (either it or the link's turns the
    certificate check off); `ca_file` trusts those CAs instead of the system's (the
    lab's CA in tests); `ssl_context`, when given, is used as it is. All three
    matter only for a node with TLS.
    """
    return ssl_context or client_context(allow_insecure=allow_insecure or bool(getattr(node, "allow_insecure", False)),
                                         ca_file=ca_file, alpn=getattr(node, "alpn", ()))


async def open_session(via: Dialer, host: str, port: int, ctx: ssl.SSLContext | None, sni: str,
                       timeout: float, half_close: bool, request: bytes, protocol: str) -> Stream:
    """A proxy server's connection for one request: through `via`, in TLS when `ctx` is given, and
    `request` sent first; closed again if any of it fails (trojan, vless and vmess open theirs so)."""
    stream = await via.connect(host, port)
    if ctx is not None:
        stream = await start_tls(stream, ctx, server_name(host, sni), timeout, half_close)
    try:
        await stream.write(request)
    except OSError as e:
        stream.close()
        raise DialError(f"{protocol}: sending the request: {e.strerror or e}") from None
    except BaseException:
        stream.close()
        raise
    return stream
