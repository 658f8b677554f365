"""ASGI guard in front of every route: bearer token, body-size limit, admission control, request counts.

Done at the ASGI layer, before FastAPI reads a body, so an oversized or unauthenticated request costs
nothing, and an overloaded replica answers 503 with ``Retry-After`` at once instead of queueing
without bound (clients such as OpenRLHF's and verl's retry on 5xx with back-off). Every answer, refusals
included, is counted by endpoint and status (:mod:`rmray.serve.telemetry`). ``/admin/`` routes check
their own token (``RMRAY_ADMIN_TOKEN``): the API token neither opens nor is needed for them.
"""

from __future__ import annotations

import hmac
import json
import time

OPEN_PATHS = frozenset({"/healthz"})
ADMIN_PREFIX = "/admin/"
COUNTED = frozenset({"/score", "/score_group", "/get_reward", "/classify", "/admin/models", "/healthz"})


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """``settings`` is read per request (``token``, ``max_body_bytes``, ``max_inflight``), so it can be
    bound after the app is built -- Serve constructs the ingress after importing the FastAPI app."""

    def __init__(self, app, settings, telemetry=None):
        self.app = app
        self.settings = settings
        self.telemetry = telemetry
        self.inflight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if self.telemetry is None:
            return await self._guard(path, scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._guard(path, scope, receive, counted)
        finally:
            self.telemetry.request(path if path in COUNTED else "other", status[0], time.perf_counter() - started)

    async def _guard(self, path, scope, receive, send):
        headers = dict(scope.get("headers") or [])
        token = self.settings.token
        if (token and path not in OPEN_PATHS and not path.startswith(ADMIN_PREFIX)
                and not authorized(headers.get(b"authorization", b""), token)):
            return await _send_json(send, 401, {"detail": "missing or wrong bearer token: send "
                                                "'Authorization: Bearer <token>' (RMRAY_API_TOKEN)"},
                                    [(b"www-authenticate", b"Bearer")])
        if scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        limit = self.settings.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _send_json(send, 413, {"detail": f"body larger than {limit} bytes; split the request"})
        if self.inflight >= self.settings.max_inflight:
            return await _send_json(send, 503, {"detail": "overloaded: too many requests in flight, retry later"},
                                    [(b"retry-after", b"1")])
        self.inflight += 1
        try:
            # The whole body is read here, bounded, before the app sees it: a chunked body (no
            # content-length) over the limit is a 413 like any other, not a parse error inside FastAPI.
            body = await _read_body(receive, limit)
            if body is None:
                return await _send_json(send, 413, {"detail": f"body larger than {limit} bytes; split the request"})
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.inflight -= 1


def authorized(header: bytes, token: str) -> bool:
    """``Authorization: Bearer <token>``; the scheme is case-insensitive (RFC 7235), the token is not."""
    scheme, _, given = header.decode("latin-1").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def _read_body(receive, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes."""
    chunks, seen = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(chunks)
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect message, when it comes

    return replay
