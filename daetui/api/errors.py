"""mihomo's error answers: a status code and `{"message": "..."}` (hub/route/errors.go)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from daetui.redact import redact

UNAUTHORIZED = "Unauthorized"
BAD_REQUEST = "Body invalid"
FORBIDDEN = "Forbidden"
NOT_FOUND = "Resource not found"
TIMEOUT = "Timeout"


def error(status: int, message: str) -> web.Response:
    """An error answer as mihomo writes one; the message is redacted (it may quote a link)."""
    return web.json_response({"message": redact(message)}, status=status)


class ApiError(Exception):
    """Raised by a handler: answered as `error(status, message)`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str = BAD_REQUEST) -> ApiError:
    return ApiError(400, message)


def not_found(message: str = NOT_FOUND) -> ApiError:
    return ApiError(404, message)


def json_object(body: bytes, empty_ok: bool = False) -> dict[str, Any]:
    """A request's body as a JSON object; 400 "Body invalid" for anything else (`empty_ok`: none is {})."""
    if empty_ok and not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad_request() from None
    if not isinstance(data, dict):
        raise bad_request()
    return data
