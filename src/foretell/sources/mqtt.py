"""MQTT topics (IoT readings): QoS 1, a persistent session, acknowledged after storing.

URI: ``mqtt://127.0.0.1:1883/sensors/#?client_id=foretell``. The broker keeps the session of
``client_id`` while the consumer is away and delivers again every QoS 1 message that was not
acknowledged, so a crash loses nothing; MQTT allows a redelivered duplicate, which the
idempotent write absorbs. A message's idempotency key is its JSON ``id`` field, or else the
topic and a hash of the payload.
"""

from __future__ import annotations

import hashlib
import queue
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from foretell.errors import MissingExtraError, UserError
from foretell.sources.stream import Message, StreamSource


def parse_mqtt_uri(uri: str) -> tuple[str, int, str, dict[str, str]]:
    """Host, port, topic and options of an ``mqtt://host:port/topic`` URI."""
    parts = urlsplit(uri)
    topic = unquote(parts.path.lstrip("/"))
    if parts.scheme != "mqtt" or not parts.hostname or not topic:
        raise UserError(f"'{uri}' must read mqtt://host:port/topic (a topic filter for sources)")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return parts.hostname, parts.port or 1883, topic, options


def connect(uri: str, client_id: str, clean: bool) -> tuple[Any, str, int, str]:
    """A connected paho client for ``uri`` (network loop running) and the topic."""
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError:
        raise MissingExtraError("paho-mqtt", "streams", "an MQTT source") from None
    host, port, topic, _ = parse_mqtt_uri(uri)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean,
        protocol=mqtt.MQTTv311,
        manual_ack=not clean,
    )
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise UserError(f"cannot reach the MQTT broker at {host}:{port}: {exc}") from None
    client.loop_start()
    return client, host, port, topic


class MqttSource(StreamSource):
    """Subscribes with QoS 1 and acknowledges each message once it is stored."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        options = parse_mqtt_uri(uri)[3]
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.client, _, _, self.topic = connect(uri, options.get("client_id", "foretell"), False)
        self.client.on_message = lambda client, userdata, msg: self.inbox.put(msg)
        self.client.subscribe(self.topic, qos=1)

    def read(self, count: int, timeout: float) -> list[Message]:
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(messages) < count:
            wait = deadline - time.monotonic()
            try:
                msg = self.inbox.get(timeout=max(wait, 0)) if wait > 0 else self.inbox.get_nowait()
            except queue.Empty:
                break
            messages.append(self._message(msg))
        return messages

    def _message(self, msg: Any) -> Message:
        payload: bytes = msg.payload
        ident = None
        try:
            body = orjson.loads(payload)
            if isinstance(body, dict) and isinstance(body.get("id"), str | int):
                ident = str(body["id"])
        except orjson.JSONDecodeError:
            pass
        if ident is None:
            ident = f"{msg.topic}:{hashlib.sha256(payload).hexdigest()[:24]}"
        return Message(ident, payload, time.time(), msg)

    def ack(self, messages: list[Message]) -> None:
        for m in messages:
            self.client.ack(m.handle.mid, m.handle.qos)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
