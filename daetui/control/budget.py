"""The relay path's budgets: descriptors, and flows per LAN client and overall.

Every relayed flow holds descriptors (a TCP relay: the client's socket and
the upstream's; a UDP NAT entry: its upstream socket and a share of a reply
socket), a task and buffers. Without a bound, one LAN device opening flows
in a loop exhausts RLIMIT_NOFILE and every other device's next flow fails
(EMFILE in accept). So:

- at start the soft descriptor limit is raised to the hard one
  (`raise_nofile_limit`; the default soft limit of 1024 is ~165 relays);
- `FlowBudget` counts open flows by client address and refuses a new one
  over `max_flows_per_client`, or over `max_flows` overall; the overall
  bound is also held under what the descriptor limit allows
  (`flows_for_descriptors`), so the daemon stays under 80 % of its limit.
  Refused flows are counted (the console's Overview shows them).
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import time
from dataclasses import dataclass, field

log = logging.getLogger("daetui.control")

FDS_PER_FLOW = 2         # a TCP relay's two sockets; a UDP entry's socket and its reply socket at most
FD_SHARE = 0.8           # the flows' budget keeps the daemon under this share of its descriptor limit
FD_RESERVE = 256         # listeners, maps, DNS, health checks, control clients, logs
MIN_FLOWS = 64           # whatever the limit, a few flows are let through


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the (soft, hard) in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        # Unlimited hard: the kernel's nr_open still bounds it, and setrlimit refuses more than that.
        try:
            with open("/proc/sys/fs/nr_open") as f:
                hard = int(f.read())
        except (OSError, ValueError):
            hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            log.debug("descriptor limit raised from %d to %d", soft, hard)
            soft = hard
        except (OSError, ValueError) as e:
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, hard, e)
    return soft, hard


def release_freed_memory() -> None:
    """Give the heap's freed pages back to the system (glibc's malloc_trim).

    Compiling the kernel programs (BCC, LLVM) frees most of what it took, but
    the allocator keeps it: the daemon would sit at that peak for its life.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def pipe_bound(fd_limit: int) -> int:
    """Splice pipes (two descriptors each) the relays may hold at once, for this descriptor limit."""
    return max(8, min(256, fd_limit // 16))


def flows_for_descriptors(fd_limit: int) -> int:
    """The most flows that keep the daemon under FD_SHARE of `fd_limit` (pipes and the reserve counted)."""
    spare = int(fd_limit * FD_SHARE) - FD_RESERVE - 2 * pipe_bound(fd_limit)
    return max(MIN_FLOWS, spare // FDS_PER_FLOW)


def open_descriptors() -> int:
    """How many descriptors this process holds now."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own
    except OSError:
        return 0


@dataclass
class FlowBudget:
    """Open flows per client address and overall; `take` refuses one over either bound."""

    max_flows: int = 16384
    max_flows_per_client: int = 4096
    by_client: dict[str, int] = field(default_factory=dict)
    flows: int = 0
    refused: int = 0          # for the overall bound
    refused_client: int = 0   # for a client's bound
    last_refused: str = ""    # the client of the last refusal
    last_refused_at: float = 0.0
    _warned: float = 0.0

    def take(self, client: str) -> bool:
        """Count a new flow of `client`, or refuse it (counted): False when a bound is reached."""
        held = self.by_client.get(client, 0)
        if held >= self.max_flows_per_client:
            self.refused_client += 1
            return self._refuse(client, f"its budget of {self.max_flows_per_client} flows")
        if self.flows >= self.max_flows:
            self.refused += 1
            return self._refuse(client, f"the budget of {self.max_flows} flows of all clients")
        self.by_client[client] = held + 1
        self.flows += 1
        return True

    def give(self, client: str) -> None:
        """A flow of `client` ended."""
        held = self.by_client.get(client, 0)
        if held <= 0:
            return
        self.flows -= 1
        if held == 1:
            del self.by_client[client]  # the table holds only clients with flows open
        else:
            self.by_client[client] = held - 1

    def busiest(self) -> tuple[str, int]:
        """The client holding most flows, and how many ("", 0 with none)."""
        if not self.by_client:
            return "", 0
        return max(self.by_client.items(), key=lambda kv: kv[1])

    def _refuse(self, client: str, why: str) -> bool:
        now = time.monotonic()
        self.last_refused, self.last_refused_at = client, time.time()
        if now - self._warned > 10:  # a flood of refusals is one line per 10 s, the counts say the rest
            self._warned = now
            log.warning("flow from %s refused: over %s (refused so far: %d by client budget, %d overall)",
                        client, why, self.refused_client, self.refused)
        return False
