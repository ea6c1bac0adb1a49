"""Results of uploaded files, kept a short while so the page can offer them as a download."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict


class Downloads:
    """A bounded in-memory cache: at most ``entries`` files and ``max_bytes`` in all, each kept
    ``seconds``; the oldest go first. Each file belongs to one model, so a token cannot be
    fetched through a page the caller's key does not open."""

    def __init__(self, entries: int = 16, max_bytes: int = 64 << 20, seconds: float = 900) -> None:
        self.entries, self.max_bytes, self.seconds = entries, max_bytes, seconds
        self._files: OrderedDict[str, tuple[float, str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, model: str, content: bytes) -> str:
        """Keeps ``content``; returns the token that fetches it."""
        token = secrets.token_urlsafe(16)
        with self._lock:
            self._files[token] = (time.monotonic(), model, content)
            self._evict()
        return token

    def get(self, model: str, token: str) -> bytes | None:
        with self._lock:
            self._evict()
            found = self._files.get(token)
        return found[2] if found is not None and found[1] == model else None

    def _evict(self) -> None:
        expired = time.monotonic() - self.seconds
        total = sum(len(f[2]) for f in self._files.values())
        while self._files and (
            len(self._files) > self.entries
            or total > self.max_bytes
            or next(iter(self._files.values()))[0] < expired
        ):
            total -= len(self._files.popitem(last=False)[1][2])
