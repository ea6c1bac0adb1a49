"""Publishers: results and dead letters sent on to a Redis stream or an MQTT topic.

Downstream consumers (a ``decisions`` stream, an alerting service) read them. Publishing is
at-least-once: after a crash a batch may be published again, and each record carries its
``message_id`` so a consumer can drop what it has seen.

| URI | publisher |
|---|---|
| ``redis://127.0.0.1:6379/0?stream=decisions`` | XADD one entry per record, field ``data`` |
| ``redis://...?stream=decisions&maxlen=100000`` | the same, trimmed to about 100,000 entries |
| ``mqtt://127.0.0.1:1883/decisions`` | one QoS 1 message per record on the topic |
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from typing import Any

import orjson

from foretell.errors import MissingExtraError, UserError

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NAIVE_UTC


class Publisher(ABC):
    def __init__(self, uri: str) -> None:
        self.uri = uri

    @abstractmethod
    def publish(self, records: list[dict[str, Any]]) -> None:
        """Sends every record; returns once the broker has them."""

    def close(self) -> None:
        return None


#: XADDs every ARGV (after the first, the MAXLEN or "") to KEYS[1] as field ``data``: one
#: command and one reply for a whole batch, instead of one per record.
_XADD_ALL = """
local maxlen = ARGV[1]
for i = 2, #ARGV do
  if maxlen == '' then
    redis.call('XADD', KEYS[1], '*', 'data', ARGV[i])
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'data', ARGV[i])
  end
end
return #ARGV - 1
"""
#: Records per script call: a call holds Redis for its duration, so keep each one short.
_PER_CALL = 1000


class RedisStreamPublisher(Publisher):
    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        try:
            import redis
        except ImportError:
            raise MissingExtraError("redis", "streams", "a Redis stream") from None
        from foretell.sources.redis_stream import parse_redis_uri

        url, options = parse_redis_uri(uri)
        self.stream = options["stream"]
        self.maxlen = int(options["maxlen"]) if "maxlen" in options else None
        self.redis = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        self._xadd_all = self.redis.register_script(_XADD_ALL)

    def publish(self, records: list[dict[str, Any]]) -> None:
        data = [orjson.dumps(r, default=str, option=_OPTIONS) for r in records]
        maxlen = "" if self.maxlen is None else str(self.maxlen)
        for start in range(0, len(data), _PER_CALL):
            self._xadd_all(keys=[self.stream], args=[maxlen, *data[start : start + _PER_CALL]])

    def close(self) -> None:
        self.redis.close()


class MqttPublisher(Publisher):
    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        from foretell.sources.mqtt import connect

        self.client, _, _, self.topic = connect(uri, f"foretell-pub-{uuid.uuid4().hex[:8]}", True)
        if any(c in self.topic for c in "#+"):
            raise UserError(f"'{uri}': a topic to publish to cannot hold wildcards")

    def publish(self, records: list[dict[str, Any]]) -> None:
        try:
            sent = [
                self.client.publish(
                    self.topic, orjson.dumps(r, default=str, option=_OPTIONS), qos=1
                )
                for r in records
            ]
            for info in sent:
                info.wait_for_publish(timeout=30)
        except (RuntimeError, ValueError) as exc:  # paho: not connected, queue full
            raise ConnectionError(f"publishing to {self.uri} failed: {exc}") from exc
        if not all(info.is_published() for info in sent):
            raise ConnectionError(f"the broker of {self.uri} did not acknowledge every message")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def is_publisher(uri: str) -> bool:
    return uri.startswith(("redis://", "rediss://", "mqtt://"))


def open_publisher(uri: str) -> Publisher:
    if uri.startswith("mqtt://"):
        return MqttPublisher(uri)
    if uri.startswith(("redis://", "rediss://")):
        return RedisStreamPublisher(uri)
    raise UserError(f"'{uri}' is not a redis:// stream or mqtt:// topic to publish to")
