"""New TCP connections per second: a server that accepts and closes, a client that connects in a loop.

    python bench/_cps.py server ADDR PORT
    python bench/_cps.py client ADDR PORT SECONDS   -> prints the number of completed connections
"""

from __future__ import annotations

import socket
import sys
import time


def server(addr: str, port: int) -> None:
    ls = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(4096)
    print("ready", flush=True)
    while True:
        c, _ = ls.accept()
        c.close()  # the server closes first: TIME_WAIT stays here, not on the client's ports


def client(addr: str, port: int, seconds: float) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s = socket.socket(family)
        try:
            s.connect((addr, port))
            s.recv(1)  # wait for the server's FIN: the connection completed
            n += 1
        except OSError:
            pass
        finally:
            s.close()
    print(n)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], int(sys.argv[3]))
    else:
        client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
