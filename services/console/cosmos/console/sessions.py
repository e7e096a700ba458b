"""Who is signed in: sessions by random id, in memory, each holding the user's platform token (sent
as ``authorization: Bearer`` on the user's gRPC calls) until the token expires; and where sign-in may
send the browser next.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from typing import Any
from urllib.parse import urlparse

from aiohttp import web

from cosmos.security.principals import Principal

MAX_SESSIONS = 10_000


@dataclasses.dataclass
class Session:
    """One signed-in browser."""

    token: str
    user: Principal
    csrf: str
    expires: float


SESSION = web.RequestKey("session", Session)


class Sessions:
    """Sessions by random id, in memory (a console restart signs everyone out)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}

    def create(self, token: str, user: Principal, expires: float) -> str:
        if len(self._by_id) >= MAX_SESSIONS:
            self.sweep()
            if len(self._by_id) >= MAX_SESSIONS:  # still full: drop the oldest
                self._by_id.pop(next(iter(self._by_id)))
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = Session(token, user, secrets.token_urlsafe(32), expires)
        return sid

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self._by_id.get(sid)
        if session is not None and session.expires <= time.time():
            del self._by_id[sid]
            return None
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def sweep(self) -> None:
        now = time.time()
        for sid in [k for k, s in self._by_id.items() if s.expires <= now]:
            del self._by_id[sid]


def bearer(session: Session) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {session.token}"),)


def safe_next(value: str) -> str:
    """Where to go after sign-in: a path of this site only (no scheme, no host, no ``//``)."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parsed = urlparse(value)
    return "/" if parsed.scheme or parsed.netloc else value


def claims_exp(token: str) -> int:
    """The ``exp`` claim of a token already verified (the session ends with the token)."""
    import jwt

    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return int(claims["exp"])
