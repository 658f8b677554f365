"""ASGI guard in front of every route: bearer token, body-size limit, admission control.

Done at the ASGI layer, before FastAPI reads a body, so an oversized or unauthenticated request costs
nothing, and an overloaded replica answers 503 with ``Retry-After`` at once instead of queueing
without bound (clients such as OpenRLHF's and verl's retry on 5xx with back-off).
"""

from __future__ import annotations

import hmac
import json

OPEN_PATHS = frozenset({"/healthz"})


class _TooLarge(Exception):
    pass


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """``settings`` is read per request (``token``, ``max_body_bytes``, ``max_inflight``), so it can be
    bound after the app is built -- Serve constructs the ingress after importing the FastAPI app."""

    def __init__(self, app, settings):
        self.app = app
        self.settings = settings
        self.inflight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        headers = dict(scope.get("headers") or [])
        token = self.settings.token
        if token and path not in OPEN_PATHS:
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
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
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        self.inflight += 1
        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, {"detail": f"body larger than {limit} bytes; split the request"})
        finally:
            self.inflight -= 1
