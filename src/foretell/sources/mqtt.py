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


def connect(
    uri: str,
    client_id: str,
    clean: bool,
    on_message: Any = None,
    on_connect: Any = None,
) -> tuple[Any, str, int, str]:
    """A connected paho client for ``uri`` (network loop running) and the topic.

    The callbacks are set before connecting: a persistent session's queued messages arrive
    right after the broker accepts the connection, and paho drops what has no handler.
    """
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
    if on_message is not None:
        client.on_message = on_message
    if on_connect is not None:
        client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise UserError(f"cannot reach the MQTT broker at {host}:{port}: {exc}") from None
    client.loop_start()
    return client, host, port, topic


class MqttSource(StreamSource):
    """Subscribes with QoS 1 and acknowledges each message once it is stored.

    The broker sends at most its in-flight window of unacknowledged QoS 1 messages (mosquitto's
    ``max_inflight_messages``, 20 by default) before it waits for acknowledgements, so a
    micro-batch holds at most that many: raise it on the broker for throughput.
    """

    #: After a batch's first message, how long a gap in arrivals ends the batch.
    LINGER = 0.005

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        _, _, self.topic, options = parse_mqtt_uri(uri)  # before connecting: on_connect uses it
        self.inbox: queue.Queue[tuple[int, float, Any]] = queue.Queue()
        self.session = 0  # bumped on every (re)connection: acks of an older one are void
        self.client, _, _, _ = connect(
            uri,
            options.get("client_id", "foretell"),
            False,
            on_message=self._on_message,
            on_connect=self._on_connect,
        )

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.session += 1
        if not getattr(reason, "is_failure", False):
            client.subscribe(self.topic, qos=1)  # kept by a persistent session; harmless again

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.inbox.put((self.session, time.time(), msg))

    def read(self, count: int, timeout: float) -> list[Message]:
        """Waits up to ``timeout`` for a first message, then takes what keeps arriving (a gap
        of ``LINGER`` ends the batch: the broker's window may hold no more)."""
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(messages) < count:
            wait = deadline - time.monotonic() if not messages else self.LINGER
            try:
                item = self.inbox.get(timeout=wait) if wait > 0 else self.inbox.get_nowait()
            except queue.Empty:
                break
            messages.append(self._message(*item))
        return messages

    def _message(self, session: int, arrived: float, msg: Any) -> Message:
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
        return Message(ident, payload, arrived, (session, msg.mid, msg.qos))

    def ack(self, messages: list[Message]) -> None:
        for m in messages:
            session, mid, qos = m.handle
            if session == self.session:  # after a reconnection the broker sends it again
                self.client.ack(mid, qos)

    def lag(self) -> int | None:
        """Messages received and not yet read (the broker's own queue is not visible)."""
        return self.inbox.qsize()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
