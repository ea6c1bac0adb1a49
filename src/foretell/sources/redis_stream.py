"""Redis Streams: a consumer group, acknowledged after storing, stale entries reclaimed.

URI: ``redis://127.0.0.1:6379/0?stream=events&group=foretell&consumer=NAME``. Entries hold
either one field ``data`` with a JSON object, or one field per feature (values as JSON text).
A consumer first re-reads its own pending entries (those it read but had not acknowledged when
it stopped), then claims entries idle for longer than ``claim_idle_ms`` (default 30000) from
dead consumers of the group (XAUTOCLAIM, every ``claim_idle_ms / 2``, at most every 5 s),
then reads new ones (XREADGROUP ``>``). Entries deleted while pending are acknowledged and
skipped. A consumer's name defaults to ``HOST-PID``; give a stable one (``&consumer=NAME``)
so that a restarted consumer reads its own pending entries at once instead of waiting for
another to claim them.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from foretell.errors import MissingExtraError, UserError
from foretell.sources.stream import Message, StreamSource


def parse_redis_uri(uri: str, need: str = "stream") -> tuple[str, dict[str, str]]:
    """The connection URL and the query options of a ``redis://`` URI."""
    parts = urlsplit(uri)
    if parts.scheme not in ("redis", "rediss"):
        raise UserError(f"'{uri}' is not a redis:// URI")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if not options.get(need):
        raise UserError(f"'{uri}' needs ?{need}=NAME")
    return parts._replace(query="").geturl(), options


def _value(raw: bytes) -> Any:
    import orjson

    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


class RedisStreamSource(StreamSource):
    """Reads a stream through a consumer group with XREADGROUP and XAUTOCLAIM."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        try:
            import redis
        except ImportError:
            raise MissingExtraError("redis", "streams", "a Redis stream") from None

        url, options = parse_redis_uri(uri)
        self.stream = options["stream"]
        self.group = options.get("group", "foretell")
        self.consumer = options.get("consumer") or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = int(options.get("claim_idle_ms", 30_000))
        self.redis = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        except redis.ConnectionError as exc:
            raise UserError(f"cannot reach Redis at {url}: {exc}") from None
        self.own_pending = True
        self.pending_from = "0"
        self.claim_from = "0-0"
        # Reclaiming is a scan of the group's pending entries: do it every half idle time
        # (at most every 5 s), not before every read.
        self.claim_every = min(max(self.claim_idle_ms / 2000.0, 0.05), 5.0)
        self.next_claim = 0.0

    def read(self, count: int, timeout: float) -> list[Message]:
        while self.own_pending:  # what this consumer read before a crash, first
            entries, last = self._group_read(self.pending_from, count, None)
            if last is None:
                self.own_pending = False
                break
            self.pending_from = last  # the batch may still be in flight: read past it
            if entries:
                return entries
        now = time.monotonic()
        if self.claim_from != "0-0" or now >= self.next_claim:
            claimed = self._claim(count)
            if self.claim_from == "0-0":  # the scan of the pending entries is complete
                self.next_claim = now + self.claim_every
            if claimed:
                return claimed
        return self._group_read(">", count, max(1, int(timeout * 1000)))[0]

    def _group_read(
        self, start: str, count: int, block: int | None
    ) -> tuple[list[Message], str | None]:
        """The entries read, and the id of the last one in the reply (deleted ones count)."""
        reply: Any = self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=count, block=block
        )
        messages, deleted, last = [], [], None
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                if fields:
                    messages.append(self._message(entry_id, fields))
                else:  # deleted (XDEL, trimmed) while pending: nothing left to process
                    deleted.append(entry_id)
        if deleted:
            self.redis.xack(self.stream, self.group, *deleted)
        return messages, None if last is None else last.decode()

    def _claim(self, count: int) -> list[Message]:
        reply: Any = self.redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            self.claim_idle_ms,
            start_id=self.claim_from,
            count=count,
        )
        self.claim_from = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        entries: list[tuple[bytes, dict[bytes, bytes]]] = list(reply[1])
        return [self._message(i, f) for i, f in entries if f]

    def _message(self, entry_id: bytes, fields: dict[bytes, bytes]) -> Message:
        ident = entry_id.decode()
        millis = int(ident.partition("-")[0])
        body: Any = fields.get(b"data") if len(fields) == 1 else None
        if body is None:
            body = {k.decode(): _value(v) for k, v in fields.items()}
        return Message(ident, body, millis / 1000.0, ident)

    def ack(self, messages: list[Message]) -> None:
        if messages:
            self.redis.xack(self.stream, self.group, *[m.handle for m in messages])

    def lag(self) -> int | None:
        """Entries not yet read by the group plus entries read and not acknowledged."""
        for group in self.redis.xinfo_groups(self.stream):
            if group.get("name") in (self.group, self.group.encode()):
                lag = group.get("lag")
                return None if lag is None else int(lag) + int(group.get("pending", 0))
        return None

    def close(self) -> None:
        self.redis.close()
