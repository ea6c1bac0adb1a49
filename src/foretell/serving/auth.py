"""Authorisation of REST requests: which scope each route needs, checked before routing.

The catalogue (``/v1/models``, ``/v2``) needs a predict scope for any model; ``/metrics``
covers every model, so it needs ``monitor:*``.

Health, the OpenAPI document and the docs page are open. Everything else needs
``Authorization: Bearer <key>`` with the route's scope: 401 without a valid key, 403 with a
valid key that lacks the scope.

The web pages (``/`` and ``/ui/...``) also take the key from the cookie the sign-in page sets,
and send a browser without a fitting key to the sign-in page rather than answering JSON.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from foretell.errors import ForbiddenError, UnauthorizedError
from foretell.serving.keys import ApiKey, KeyStore
from foretell.serving.limits import send_error

MISSING_KEY = (
    "a valid API key is required: send 'Authorization: Bearer <key>' "
    "(create one with: foretell keys create --scope ...)"
)


def authorise(keys: KeyStore, header: str, needed: str) -> ApiKey:
    """The key in ``header``; raises UnauthorizedError or ForbiddenError unless it grants
    ``needed``."""
    scheme, _, token = header.partition(" ")
    key = keys.verify(token.strip()) if scheme.lower() == "bearer" else None
    if key is None:
        raise UnauthorizedError(MISSING_KEY)
    if not key.allows(needed):
        raise ForbiddenError(f"key '{key.id}' lacks the scope '{needed}'")
    return key


#: The cookie that holds the key of a person signed in to the web pages.
COOKIE = "foretell_key"
SIGN_IN = "/ui/sign-in"

_MODEL = r"(?P<model>[^/:]+)"
#: (path pattern, scope kind); the scope is ``kind:<model>`` when the path names a model.
RULES: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(p), kind)
    for p, kind in [
        (r"^/v2/health/(live|ready)$", None),
        (r"^/(docs(/.*)?|openapi\.json)$", None),
        (r"^/ui/(static/.*|sign-in|sign-out)$", None),
        (r"^/$", "predict:any"),
        (rf"^/ui/models/{_MODEL}(/results/[^/]+)?$", "predict"),
        (rf"^/ui/models/{_MODEL}/feedback$", "feedback"),
        (rf"^/ui/models/{_MODEL}/monitoring$", "monitor"),
        (r"^/metrics$", "monitor:*"),
        (rf"^/v1/models/{_MODEL}:(predict|explain)$", "predict"),
        (rf"^/v1/models/{_MODEL}/feedback$", "feedback"),
        (rf"^/v1/models/{_MODEL}/(monitoring|posterior)$", "monitor"),
        (rf"^/v1/models/{_MODEL}/(update|rollback)$", "admin"),
        (rf"^/v1/models/{_MODEL}$", "predict"),
        (r"^/v1/models$", "predict:any"),
        (r"^/v2$", "predict:any"),
        (rf"^/v2/models/{_MODEL}(/versions/[^/]+)?(/ready|/infer)?$", "predict"),
    ]
]


def auth_by_default(host: str) -> bool:
    """Keys are required by default whenever the server listens beyond loopback."""
    return not (host in ("localhost", "::1") or host.startswith("127."))


def required_scope(path: str) -> str | None:
    """The scope ``path`` needs: None for open routes, ``admin`` for anything unlisted."""
    for pattern, kind in RULES:
        match = pattern.match(path)
        if match:
            if kind is None or ":" in kind or kind == "admin":
                return kind
            return f"{kind}:{match['model']}"
    return "admin"


class Authorise:
    """ASGI middleware: answers 401 or 403 with a JSON error before the route runs."""

    def __init__(self, app: ASGIApp, keys: KeyStore) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["path"])
        if needed is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        header = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        key = self.keys.verify(token.strip()) if scheme.lower() == "bearer" else None
        page = is_page(scope["path"])
        if key is None and page:
            cookies = cookie_parser(headers.get(b"cookie", b"").decode("latin-1"))
            key = self.keys.verify(cookies.get(COOKIE, ""))
        if page and (key is None or not key.allows(needed)):
            await _to_sign_in(send, scope, needed if key is not None else None)
            return
        if key is None:
            await send_error(send, UnauthorizedError(MISSING_KEY))
            return
        if not key.allows(needed):
            await send_error(send, ForbiddenError(f"key '{key.id}' lacks the scope '{needed}'"))
            return
        scope.setdefault("state", {})["key_id"] = key.id  # rate limits count per key
        scope["state"]["api_key"] = key  # the pages show what the key opens
        await self.app(scope, receive, send)


def is_page(path: str) -> bool:
    """Whether ``path`` is one of the web pages rather than an API route."""
    return path == "/" or path.startswith("/ui/")


async def _to_sign_in(send: Send, scope: Scope, lacking: str | None) -> None:
    """Sends a browser to the sign-in page, which brings it back here afterwards."""
    query = scope.get("query_string", b"").decode("latin-1")
    back = scope["path"] + (f"?{query}" if query else "")
    target = f"{SIGN_IN}?next={quote(back, safe='')}"
    if lacking is not None:
        target += f"&scope={quote(lacking, safe='')}"
    headers = [(b"location", target.encode("latin-1")), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
