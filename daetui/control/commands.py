"""The control socket's commands, declared once.

Each command is a typed stub on `ControlApi` under `@command`: the stub's name
is the client's method, its parameters (names, types, defaults) are the
request's "args", its return annotation is what `wire.decode` rebuilds from
the answer; `command()` says the name on the wire, which ControlPlane method
answers it and whether that method blocks (the server then runs it in a
thread).

From this one list:
- `ControlClient` (client.py) and the console's test double (tests/ui/frozen.py)
  are `ControlApi`s: they supply `call`, `events` and `close`; every command
  method comes from here, so the console's `Source` is a `ControlApi`;
- `ControlServer` (server.py) finds the command, checks and converts its
  arguments and calls the plane's method. The few commands that take more
  than one call of the plane (`serves=None`: ping, snapshot, stop) have a
  handler of their own there.

A client sends the arguments its caller gave and no others; the server passes
on those that are present and not null, so an argument left out takes the
plane's own default (the stubs' defaults say the same, which
tests/unit/test_control_commands.py checks against the plane).

Adding a command: a stub here; if the plane has no method that takes the
stub's arguments, a handler in ControlServer.OWN. That test fails while a
command is declared but not served, or served but not declared.

`subscribe` is the one request that is not a command: it turns the connection
into an event stream too (ControlClient.events).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import inspect
import types
import typing
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, Union, cast, get_args, get_origin

from daetui.control import wire
from daetui.control.events import Event
from daetui.control.state import LogLine, MapEntries, MapInfo, ReloadResult, Snapshot
from daetui.dns.state import DnsTrace
from daetui.routing.explain import ExplainResult

SUBSCRIBE = "subscribe"
DEFAULT_TIMEOUT = 30.0
# `call(cmd, timeout=..., **args)` takes these itself: no command argument may be named so.
_RESERVED = {"cmd", "timeout"}

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Param:
    """One argument of a command."""

    name: str
    type: Any
    default: Any = inspect.Parameter.empty

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    @property
    def nullable(self) -> bool:
        return _is_union(self.type) and type(None) in get_args(self.type)


@dataclass(frozen=True)
class Command:
    """One command of the control socket, as its stub declares it."""

    name: str                   # "cmd" in the request
    method: str                 # the ControlApi method that sends it
    serves: str | None          # the ControlPlane method that answers; None: ControlServer.OWN does
    blocking: bool              # the plane's method blocks (syscalls): the server runs it in a thread
    timeout: float              # how long a client waits for the answer, seconds
    big_answer: bool            # the client decodes the answer off its event loop
    signature: inspect.Signature  # the stub's, without self
    params: tuple[Param, ...]
    result: Any                 # the answer's type for wire.decode; None: the answer only says "done"
    doc: str

    @classmethod
    def of(cls, stub: Callable[..., Any], name: str, serves: str | None, blocking: bool, timeout: float,
           big_answer: bool) -> Command:
        sig = inspect.signature(stub)
        hints = typing.get_type_hints(stub)
        params = tuple(Param(p.name, hints[p.name], p.default) for p in list(sig.parameters.values())[1:])
        for p in params:
            if p.name in _RESERVED:
                raise TypeError(f"command {name}: an argument cannot be named {p.name!r}")
        result = hints.get("return")
        return cls(name, stub.__name__, serves, blocking, timeout, big_answer,
                   sig.replace(parameters=list(sig.parameters.values())[1:]), params,
                   None if result is type(None) else result, inspect.getdoc(stub) or "")

    # -- the client's side ------------------------------------------------------------------
    async def request(self, api: ControlApi, *args: Any, **kwargs: Any) -> Any:
        """Send this command with the arguments the caller gave; the answer, decoded."""
        given = self.signature.bind(*args, **kwargs).arguments
        raw = await api.call(self.name, timeout=self.timeout, **given)
        if self.result is None:
            return None
        if self.big_answer and api.big_answers_in_thread:
            # Thousands of rows: the console's work, off its event loop.
            return await asyncio.to_thread(wire.decode, self.result, raw)
        return wire.decode(self.result, raw)

    # -- the server's side -------------------------------------------------------------------
    def arguments(self, args: dict[str, Any]) -> dict[str, Any]:
        """The request's arguments for the plane: checked, converted to their types; absent or null
        optional ones left out (the plane's default applies)."""
        out: dict[str, Any] = {}
        for p in self.params:
            value = args.get(p.name)
            if value is None:
                if p.required and p.nullable:
                    out[p.name] = None
                elif p.required:
                    raise ValueError(f"{self.name}: argument {p.name!r} missing")
                continue
            out[p.name] = convert(p.type, value)
        return out


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def convert(tp: Any, value: Any) -> Any:
    """A JSON value as the declared type: str, int, float, bool, a list of them, or optional (as the
    server always took them: `"5000"` is a fine limit)."""
    if _is_union(tp):
        options = [a for a in get_args(tp) if a is not type(None)]
        return convert(options[0], value) if len(options) == 1 else value
    if get_origin(tp) is list:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        (item,) = get_args(tp)
        return [convert(item, v) for v in value]
    if tp in (str, int, float, bool):
        return tp(value)
    return value


COMMANDS: dict[str, Command] = {}


def command(name: str | None = None, *, serves: str | None, blocking: bool = False,
            timeout: float = DEFAULT_TIMEOUT, big_answer: bool = False) -> Callable[[F], F]:
    """Declare the stub under it as a command (see the module's docstring); the stub becomes its sender."""
    def declare(stub: F) -> F:
        spec = Command.of(stub, name or stub.__name__, serves, blocking, timeout, big_answer)
        if spec.name in COMMANDS:
            raise ValueError(f"command {spec.name!r} declared twice")
        COMMANDS[spec.name] = spec

        @functools.wraps(stub)
        async def send(api: ControlApi, *args: Any, **kwargs: Any) -> Any:
            return await spec.request(api, *args, **kwargs)
        send.command = spec  # type: ignore[attr-defined]  # the declaration, for whoever holds the method
        return cast(F, send)
    return declare


class Transport(abc.ABC):
    """What carries the commands: the control socket (ControlClient), or a recording (tests/ui/frozen.py)."""

    # Decode a big answer (a snapshot) in a thread, off the caller's event loop.
    big_answers_in_thread: ClassVar[bool] = True

    @abc.abstractmethod
    async def call(self, cmd: str, timeout: float = DEFAULT_TIMEOUT, **args: Any) -> Any:
        """Send one request and wait for its result (raw JSON values); ControlError when it fails."""

    @abc.abstractmethod
    def events(self) -> AsyncIterator[Event]:
        """The daemon's events from now on (log lines, connections opened and closed)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Let go of the connection."""


class ControlApi(Transport):
    """The control plane as the console and the CLI see it: the control socket's commands.

    Each method below is a declaration (see the module's docstring) and sends
    its command through the transport's `call`.
    """

    # -- the commands -----------------------------------------------------------------------
    @command(serves=None)
    async def ping(self) -> dict[str, Any]:
        """The protocol version, the daemon's pid, start time and config file, and whether it runs."""

    @command(serves=None, big_answer=True)
    async def snapshot(self, flows: bool = True, dns: bool = True) -> Snapshot:
        """Everything the console shows; `flows` the kernel's flows too, `dns` the DNS state."""

    @command(serves="recent_logs")
    async def logs(self) -> list[LogLine]:
        """The log lines the daemon keeps (the event stream brings the next ones)."""

    @command(serves="maps_info", blocking=True)
    async def maps(self) -> list[MapInfo]:
        """Every eBPF map of the programs: type, size, fill."""

    @command(serves="map_entries", blocking=True)
    async def map_entries(self, name: str, search: str = "", limit: int = 5000) -> MapEntries:
        """One map's entries, decoded; only those containing `search`, at most `limit`."""

    @command("close", serves="close_connections")
    async def close_connections(self, ids: list[int]) -> int:
        """Close relayed connections (their clients see a reset); how many were open."""

    @command("stop", serves=None)
    async def stop_daemon(self) -> None:
        """Stop the daemon: it undoes every change it made, then exits."""

    @command(serves="reload_from_file", timeout=120)
    async def reload(self, abort: bool = False) -> ReloadResult:
        """Read the config file again and apply it; `abort` resets the flows the new rules route elsewhere."""

    @command(serves="preview_reload")
    async def reload_preview(self) -> ReloadResult:
        """What reloading the config file would change (nothing is applied)."""

    @command(serves="edit_rules", timeout=120)
    async def edit_rules(self, op: str, index: int, text: str = "", to: int = 0, enabled: bool = True,
                         expect: str | None = None) -> ReloadResult:
        """Edit a rule in the daemon's config file (and reload it): toggle, set, insert, remove, move.

        `expect` is the rule's text as the console saw it: the edit is refused if it changed meanwhile."""

    @command(serves="learn_name")
    async def learn_name(self, addr: str, name: str) -> None:
        """`addr` answers to `name` from now on (no expiry): its flows are routed by domain rules."""

    @command(serves="dns_lookup")
    async def dns_lookup(self, name: str, qtype: str = "A") -> DnsTrace:
        """Resolve through the daemon's DNS controller; the answer and the way it went."""

    @command(serves="dns_flush")
    async def dns_flush(self) -> int:
        """Empty the DNS cache; how many entries it held."""

    @command(serves="pin_node")
    async def pin_node(self, group: str, node: str | None) -> None:
        """Pin a group to a node (None: unpin)."""

    @command(serves="check_nodes", timeout=60)
    async def check_nodes(self, names: list[str]) -> None:
        """Check nodes now (a group's name checks all of its nodes)."""

    @command(serves="explain")
    async def explain(self, target: str, port: int | None = None, proto: str = "tcp", mac: str | None = None,
                      iface: str | None = None, pname: str | None = None, src: str | None = None,
                      sport: int | None = None, dscp: int = 0, wan: str | None = None) -> ExplainResult:
        """How the rules route a flow like this one, with what the daemon knows (as `daetui explain`)."""
