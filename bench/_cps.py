"""New TCP connections per second: a server that accepts and closes, a client that connects in a loop.

    python bench/_cps.py server ADDR PORT [--answer]
    python bench/_cps.py client ADDR PORT SECONDS [--ask]   -> prints the number of completed connections

With --answer/--ask each connection is a short request and answer (the client
sends a line, the server answers with the address it saw, then closes): what a
proxy must carry, not only accept (bench/proxy_path.py).
"""

from __future__ import annotations

import socket
import sys
import time


def server(addr: str, port: int, answer: bool = False) -> None:
    ls = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(4096)
    print("ready", flush=True)
    while True:
        c, peer = ls.accept()
        try:
            if answer:
                c.settimeout(2)  # a connection that never sends must not stall the next ones
                if c.recv(64):
                    c.sendall(f"{peer[0]}\n".encode())
        except OSError:
            pass
        finally:
            c.close()  # the server closes first: TIME_WAIT stays here, not on the client's ports


def client(addr: str, port: int, seconds: float, ask: bool = False) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s = socket.socket(family)
        try:
            if ask:
                s.settimeout(5)
            s.connect((addr, port))
            if ask:
                s.sendall(b"GET\n")
                got = b""
                while data := s.recv(256):
                    got += data
                n += got.endswith(b"\n")
            else:
                s.recv(1)  # wait for the server's FIN: the connection completed
                n += 1
        except OSError:
            pass
        finally:
            s.close()
    print(n)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], int(sys.argv[3]), "--answer" in sys.argv[4:])
    else:
        client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), "--ask" in sys.argv[5:])
