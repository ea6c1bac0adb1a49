"""API keys: created with scopes, stored hashed, checked in constant time.

A key reads ``ft_<id>_<secret>``. The store keeps the id, a name, the scopes and the SHA-256 of
the secret, never the secret itself: whoever reads the file cannot use it. Scopes:
``predict:<model|*>``, ``feedback:<model|*>``, ``monitor:<model|*>`` and ``admin``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from foretell.errors import NotFoundError, UserError

SCOPE = re.compile(r"^(admin|(predict|feedback|monitor):([A-Za-z0-9][A-Za-z0-9_.-]*|\*))$")
_KEY = re.compile(r"^ft_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class ApiKey:
    """A stored key: everything but the secret."""

    id: str
    name: str
    scopes: list[str]
    sha256: str
    created_at: float = field(default_factory=time.time)

    def allows(self, scope: str) -> bool:
        """Whether this key grants ``scope``: ``predict:breast-cancer``, ``monitor:*`` (every
        model), ``predict:any`` (some model: enough to list the catalogue), ``admin``."""
        if "admin" in self.scopes:
            return True
        kind, _, model = scope.partition(":")
        if model == "any":
            return any(s.startswith(f"{kind}:") for s in self.scopes)
        return scope in self.scopes or f"{kind}:*" in self.scopes


class KeyStore:
    """Keys in a JSON file written atomically with owner-only permissions."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._cache: tuple[float, dict[str, ApiKey]] = (-1.0, {})

    def _load(self) -> dict[str, ApiKey]:
        """The keys, re-read only when the file changed (keys revoked take effect at once)."""
        try:
            mtime = self.path.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return {}
        if mtime == self._cache[0]:
            return dict(self._cache[1])
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            keys = {k["id"]: ApiKey(**k) for k in data["keys"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"key store '{self.path}' is damaged: {exc}") from None
        self._cache = (mtime, keys)
        return dict(keys)

    def _save(self, keys: dict[str, ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"keys": [asdict(k) for k in keys.values()]}, handle, indent=1)
        os.replace(partial, self.path)

    def create(self, name: str, scopes: list[str]) -> tuple[str, ApiKey]:
        """A new key: returns the full key (shown once) and what is stored."""
        bad = [s for s in scopes if not SCOPE.match(s)]
        if not scopes or bad:
            raise UserError(
                "scopes must be predict:<model|*>, feedback:<model|*>, monitor:<model|*> or "
                f"admin; got {bad or 'none'}"
            )
        keys = self._load()
        ident, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        key = ApiKey(ident, name, sorted(set(scopes)), _digest(secret))
        keys[ident] = key
        self._save(keys)
        return f"ft_{ident}_{secret}", key

    def list(self) -> list[ApiKey]:
        return list(self._load().values())

    def revoke(self, ident: str) -> None:
        keys = self._load()
        if keys.pop(ident, None) is None:
            raise NotFoundError(f"no key '{ident}' in {self.path}")
        self._save(keys)

    def verify(self, presented: str) -> ApiKey | None:
        """The key ``presented`` belongs to, or None; the comparison takes constant time."""
        match = _KEY.match(presented)
        if match is None:
            return None
        key = self._load().get(match[1])
        expected = key.sha256 if key else _digest("")
        ok = hmac.compare_digest(_digest(match[2]), expected)
        return key if ok and key is not None else None
