"""The StreamSource interface: messages read in micro-batches and acknowledged once stored."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import orjson

from foretell.errors import InputFormatError


@dataclass(frozen=True)
class Message:
    """One event: ``id`` is its idempotency key, ``event_time`` (epoch seconds) when known."""

    id: str
    body: Any
    event_time: float | None = None
    handle: Any = None  # what the source needs to acknowledge it


def decode_record(body: Any) -> dict[str, Any]:
    """A message's body as a record: a JSON object, bytes of one, or a mapping of fields
    whose values are JSON text (``"25.0"`` -> 25.0) or plain text."""
    if isinstance(body, bytes | str):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InputFormatError(f"the message is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InputFormatError(f"the message must be a JSON object; got {type(body).__name__}")
    return body


class StreamSource(ABC):
    """An unbounded source. ``read`` waits at most ``timeout`` seconds for up to ``count``
    messages; ``ack`` tells the source they are stored, so they are never delivered again."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @abstractmethod
    def read(self, count: int, timeout: float) -> list[Message]:
        """The next messages, possibly fewer than ``count``, possibly none."""

    @abstractmethod
    def ack(self, messages: list[Message]) -> None:
        """Marks ``messages`` as processed."""

    def lag(self) -> int | None:
        """Messages waiting to be read, when the source knows."""
        return None

    def close(self) -> None:
        return None
