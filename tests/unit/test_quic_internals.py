"""What daetui takes from aioquic beyond its public API is still there (an upgrade must fail here, loudly).

net/quic.py's PacedQuic (hysteria2's and tuic's connections) ties a stream's receive window to its
reader by overriding `QuicConnection._write_stream_limits`; _hy2_conn.py tells who closed by overriding
`_handle_connection_close_frame`, bounds the datagram queue
(`_datagrams_pending`), reads the peer's datagram size
(`_remote_max_datagram_frame_size`), a stream's unacknowledged bytes
(`_streams[id].sender._buffer`) and the server's certificate
(`tls._peer_certificate`).
"""

from __future__ import annotations

import inspect
from collections import deque

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.stream import QuicStream
from aioquic.tls import Context

from daetui.outbound._hy2_conn import _Quic


def test_overridden_methods_keep_their_signatures() -> None:
    params = list(inspect.signature(QuicConnection._write_stream_limits).parameters)
    assert params == ["self", "builder", "space", "stream"]
    params = list(inspect.signature(QuicConnection._handle_connection_close_frame).parameters)
    assert params == ["self", "context", "frame_type", "buf"]
    assert list(inspect.signature(QuicConnection._on_max_stream_data_delivery).parameters)[1:] == ["delivery", "stream"]
    assert MAX_STREAM_DATA_FRAME_CAPACITY > 0


def test_private_state_read_is_there() -> None:
    quic = _Quic(configuration=QuicConfiguration(is_client=True, max_datagram_frame_size=65535))
    assert isinstance(quic._datagrams_pending, deque)
    assert quic._remote_max_datagram_frame_size is None  # known once the handshake is done
    assert isinstance(quic._streams, dict)
    assert quic.read_limits == {}
    stream = QuicStream(stream_id=0, max_stream_data_local=1, max_stream_data_remote=1)
    assert isinstance(stream.sender._buffer, bytearray)
    assert (stream.max_stream_data_local, stream.max_stream_data_local_sent) == (1, 1)
    assert "_peer_certificate" in inspect.getsource(Context.__init__)
