"""mihomo's error answers: a status code and `{"message": "..."}` (hub/route/errors.go)."""

from __future__ import annotations

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
