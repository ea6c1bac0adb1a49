"""JSON lines from standard input or a file, optionally followed as it grows (``tail -f``).

URI: ``-`` (standard input), ``events.jsonl`` or ``events.jsonl?follow=true``. For a file, the
offset after the last acknowledged line is kept in ``<file>.foretell-offset``, so a restarted
consumer goes on where the last one stopped.
"""

from __future__ import annotations

import os
import select
import sys
import time
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs

from foretell.errors import NotFoundError
from foretell.sources.stream import Message, StreamSource


class LinesSource(StreamSource):
    """One message per non-empty line; its id is the line's byte offset in the file."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        path, _, query = uri.partition("?")
        self.follow = parse_qs(query).get("follow", ["false"])[-1] == "true"
        self.path = None if path == "-" else Path(path)
        self.handle: IO[bytes]
        if self.path is None:
            self.handle, self.offset = sys.stdin.buffer, 0
            self.checkpoint = None
        else:
            if not self.path.is_file():
                raise NotFoundError(f"stream source '{path}' does not exist")
            self.checkpoint = self.path.with_name(f"{self.path.name}.foretell-offset")
            self.offset = int(self.checkpoint.read_text()) if self.checkpoint.exists() else 0
            self.handle = self.path.open("rb")
            self.handle.seek(self.offset)
        self.ended = False

    def read(self, count: int, timeout: float) -> list[Message]:
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            if self.path is None and not select.select([self.handle], [], [], 0.05)[0]:
                continue
            start = self.offset
            line = self.handle.readline()
            if not line or not line.endswith(b"\n"):
                if line and not self.follow:  # a last line without a newline
                    self.offset += len(line)
                    messages.append(Message(str(start), line.strip(), time.time(), self.offset))
                elif line:
                    self.handle.seek(start)  # half a line: wait for the rest
                self.ended = not self.follow
                if self.ended:
                    break
                time.sleep(0.05)
                continue
            self.offset += len(line)
            if line.strip():
                messages.append(Message(str(start), line.strip(), time.time(), self.offset))
        return messages

    def ack(self, messages: list[Message]) -> None:
        if self.checkpoint is not None and messages:
            partial = self.checkpoint.with_name(self.checkpoint.name + ".partial")
            partial.write_text(str(max(m.handle for m in messages)))
            os.replace(partial, self.checkpoint)

    def close(self) -> None:
        if self.path is not None:
            self.handle.close()
