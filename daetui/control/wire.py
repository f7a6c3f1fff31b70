"""The control socket's encoding: dataclasses <-> JSON, guided by type hints.

Bytes travel as base64, tuples as lists, dict keys as strings; `decode`
restores the dataclass (and the key and element types) from the hints, so
both ends work with the same objects. The work per type is done once: each
type gets a compiled encoder and decoder, cached, because a snapshot holds
thousands of values and the daemon encodes one per console per second.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, Union, get_args, get_origin

_SCALARS = (str, int, float, bool, type(None))


# -- encoding ---------------------------------------------------------------------------

@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def encode(obj: Any) -> Any:
    """A JSON-able form of a dataclass tree."""
    t = type(obj)
    if t in _SCALARS:
        return obj
    if t is tuple or t is list:
        return [encode(x) for x in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {name: encode(getattr(obj, name)) for name in _field_names(t)}
    if isinstance(obj, bytes | bytearray):
        return {"b64": base64.b64encode(obj).decode()}
    if isinstance(obj, tuple | list):
        return [encode(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    return obj


# -- decoding ---------------------------------------------------------------------------

Decoder = Callable[[Any], Any]


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _identity(x: Any) -> Any:
    return x


def _checked(tp: type) -> Decoder:
    def check(x: Any) -> Any:
        if tp is float and isinstance(x, int) and not isinstance(x, bool):
            return float(x)
        if not isinstance(x, tp):
            raise TypeError(f"expected {tp.__name__}, got {type(x).__name__}")
        return x
    return check


def _bytes(x: Any) -> bytes:
    if not isinstance(x, dict) or "b64" not in x:
        raise TypeError("expected bytes")
    return base64.b64decode(x["b64"])


@cache
def decoder(tp: Any) -> Decoder:
    """A function that rebuilds a value of type `tp` from its encoded form."""
    origin = get_origin(tp)
    if tp is Any:
        return _identity
    if origin in (Union, types.UnionType):
        options = [decoder(a) for a in get_args(tp) if a is not type(None)]
        nullable = type(None) in get_args(tp)

        def union(x: Any) -> Any:
            if x is None and nullable:
                return None
            for d in options:
                try:
                    return d(x)
                except (TypeError, ValueError, KeyError, AttributeError):
                    continue
            raise ValueError(f"{x!r} fits none of {tp}")
        return union
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        fields = [(f.name, decoder(hints[f.name])) for f in dataclasses.fields(tp) if f.init]

        def dataclass_(x: Any) -> Any:
            return tp(**{name: d(x[name]) for name, d in fields if name in x})
        return dataclass_
    if tp is bytes:
        return _bytes
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            item = decoder(args[0])
            return lambda x: tuple(item(v) for v in x)
        items = [decoder(a) for a in args]
        return lambda x: tuple(d(v) for d, v in zip(items, x, strict=True))
    if origin is list:
        (arg,) = get_args(tp) or (Any,)
        item = decoder(arg)
        return lambda x: [item(v) for v in x]
    if origin is dict:
        kt, vt = get_args(tp) or (str, Any)
        val = decoder(vt)
        if kt is int:
            return lambda x: {int(k): val(v) for k, v in x.items()}
        return lambda x: {k: val(v) for k, v in x.items()}
    if tp in (int, float, str, bool):
        return _checked(tp)
    return _identity


def decode(tp: Any, data: Any) -> Any:
    """Rebuild a value of type `tp` from its encoded form."""
    if data is None:
        return None
    return decoder(tp)(data)


_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps would make one per call for the separators


def dumps(obj: Any) -> bytes:
    """One line of the control protocol."""
    return _JSON.encode(encode(obj)).encode() + b"\n"

