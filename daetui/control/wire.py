"""The control socket's encoding: dataclasses <-> JSON, guided by type hints.

Bytes travel as base64, tuples as lists, dict keys as strings; `decode`
restores the dataclass (and the key and element types) from the hints, so
both ends work with the same objects.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import types
import typing
from functools import cache
from typing import Any, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


def encode(obj: Any) -> Any:
    """A JSON-able form of a dataclass tree."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, bytes | bytearray):
        return {"b64": base64.b64encode(obj).decode()}
    if isinstance(obj, tuple | list):
        return [encode(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    return obj


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(tp: Any, data: Any) -> Any:
    """Rebuild a value of type `tp` from its encoded form."""
    if data is None:
        return None
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return decode(arg, data)
            except (TypeError, ValueError, KeyError, AttributeError):
                continue
        raise ValueError(f"{data!r} fits none of {tp}")
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        kwargs = {f.name: decode(hints[f.name], data[f.name]) for f in dataclasses.fields(tp)
                  if f.init and f.name in data}
        return tp(**kwargs)
    if tp is bytes:
        if not isinstance(data, dict) or "b64" not in data:
            raise TypeError("expected bytes")
        return base64.b64decode(data["b64"])
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], x) for x in data)
        return tuple(decode(a, x) for a, x in zip(args, data, strict=True))
    if origin is list:
        (arg,) = get_args(tp) or (Any,)
        return [decode(arg, x) for x in data]
    if origin is dict:
        kt, vt = get_args(tp) or (str, Any)
        return {(int(k) if kt is int else k): decode(vt, v) for k, v in data.items()}
    if tp is float and isinstance(data, int):
        return float(data)
    if tp in (int, float, str, bool) and not isinstance(data, tp):
        raise TypeError(f"expected {tp.__name__}, got {type(data).__name__}")
    return data


def dumps(obj: Any) -> bytes:
    """One line of the control protocol."""
    return json.dumps(encode(obj), separators=(",", ":")).encode() + b"\n"


def loads(line: bytes) -> Any:
    return json.loads(line)
