"""The control plane's accept loop, out of file descriptors (EMFILE), on asyncio's loop and uvloop.

Connections keep waiting in the backlog, so the listener stays readable: registered with the
loop during the back-off, it would wake the loop on every turn (a core at 100%). Each run is a
child process of its own, since it lowers its own limit of open files.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import asyncio, logging, os, resource, socket, sys
    import uvloop
    from daetui.control.flowio import accept_loop

    logging.disable(logging.CRITICAL)
    wakes = 0

    class Listener(socket.socket):  # counts the accept loop's attempts: one per wake-up at most
        def _accept(self):
            global wakes
            wakes += 1
            return super()._accept()

    class Flows:  # what the pipeline does with an accepted connection: held open here
        def __init__(self):
            self.held = []

        def accepted(self, sock, addr):
            self.held.append(sock)

    async def main():
        listener = Listener(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(256)
        listener.setblocking(False)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(60)]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 20, hard))
        plane = Flows()
        task = asyncio.ensure_future(accept_loop(listener, plane.accepted))
        await asyncio.sleep(0.5)  # accepted what fits, then EMFILE with connections still waiting
        global wakes
        wakes = 0
        await asyncio.sleep(1.0)
        print(len(plane.held), wakes)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for s in plane.held + clients:
            s.close()

    factory = uvloop.new_event_loop if sys.argv[1] == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
""")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_out_of_descriptors_the_listener_leaves_the_loop_while_it_backs_off(loop):
    out = subprocess.run([sys.executable, "-c", CHILD, loop], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    held, wakes = map(int, out.stdout.split())
    assert 0 < held < 60  # some connections accepted, then the limit: the rest wait in the backlog
    # One accept per 0.1 s back-off at most (and a few around it); spinning would be thousands.
    assert 0 < wakes <= 30, f"{wakes} accepts tried in 1 s while out of descriptors"
