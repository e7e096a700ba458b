"""What every handler uses: the session of the request, the page frame, HTML responses, cookies,
security headers and server-sent events, on :class:`ConsoleBase`.

The handlers are mixins over :class:`ConsoleBase`, one module per area (:mod:`.workflows`,
:mod:`.encodes`, :mod:`.pool`), combined with the middleware and sign-in in
:class:`cosmos.console.app.Console`. Mixins rather than plain functions registered on the router: a
handler keeps the ``self.backend`` and ``self.session(request)`` it had, mypy (strict) checks every
attribute it touches against the annotations here, and the router still gets bound methods, with no
partials or application lookups to type.
"""

from __future__ import annotations

import json

from aiohttp import web

from cosmos.console.backend import Backend
from cosmos.console.sessions import SESSION, Session
from cosmos.console.views import Page
from cosmos.runtime import s3
from cosmos.security import storage

PAGE_SIZE = 50
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; media-src 'self' blob:; worker-src 'self' blob:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


class ConsoleBase:
    """The state and helpers the handlers share. The state is only declared here (for mypy);
    :class:`cosmos.console.app.Console` sets it."""

    backend: Backend
    storage_roots: list[storage.Root]
    s3: s3.S3Client | None
    """The client of the ``s3://`` roots (None without one)."""
    secure: bool

    @staticmethod
    def security_headers(path: str) -> dict[str, str]:
        headers = {
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            "Strict-Transport-Security": "max-age=31536000",
            "Cross-Origin-Opener-Policy": "same-origin",
        }
        if not path.startswith("/static/"):
            headers["Cache-Control"] = "no-store"
        return headers

    @staticmethod
    def session(request: web.Request) -> Session:
        return request[SESSION]

    def page(self, request: web.Request, title: str, active: str = "") -> Page:
        session = self.session(request)
        return Page(title, session.user, session.csrf, active)

    @staticmethod
    def html(text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, status=status, content_type="text/html")

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path="/", httponly=True, secure=self.secure, samesite="Strict"
        )

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "X-Accel-Buffering": "no",
                **self.security_headers(request.path),
            }
        )
        await response.prepare(request)
        return response


async def send_event(response: web.StreamResponse, event: str, data: object) -> None:
    """One server-sent event: its name and ``data`` as compact JSON."""
    await response.write(f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())


def query(**values: str) -> str:
    """``values`` as a URL query string."""
    from urllib.parse import urlencode

    return urlencode(values)
