"""JSON lines from standard input or a file, optionally followed as it grows (``tail -f``).

URI: ``-`` (standard input), ``events.jsonl`` or ``events.jsonl?follow=true``. For a file, the
offset after the last acknowledged line is kept in ``<file>.foretell-offset``, so a restarted
consumer goes on where the last one stopped (one offset per file: two jobs reading the same
file need two copies of it). Lines are only appended: a file that is truncated or replaced
is not noticed. Without ``follow`` the job ends at the end of the input.
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
    """One message per non-empty line; its id is the line's byte offset in the file (or in
    standard input since the start)."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        path, _, query = uri.partition("?")
        self.follow = parse_qs(query).get("follow", ["false"])[-1] == "true"
        self.path = None if path == "-" else Path(path)
        self.handle: IO[bytes]
        self.pending = b""  # standard input read but not yet split into lines
        self.eof = False
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
        while len(messages) < count:
            start = self.offset
            line = self._stdin_line(deadline) if self.path is None else self.handle.readline()
            if not line or not line.endswith(b"\n"):
                # The end: of standard input once closed, of a file unless it is followed.
                final = self.eof if self.path is None else not self.follow
                if line and final:  # a last line without a newline
                    self.offset += len(line)
                    messages.append(Message(str(start), line.strip(), time.time(), self.offset))
                elif line and self.path is not None:
                    self.handle.seek(start)  # half a line: wait for the rest
                self.ended = final
                remaining = deadline - time.monotonic()
                if self.ended or messages or remaining <= 0:
                    break
                if self.path is not None:
                    time.sleep(min(0.05, remaining))  # follow: wait for the file to grow
                continue
            self.offset += len(line)
            if line.strip():
                messages.append(Message(str(start), line.strip(), time.time(), self.offset))
        return messages

    def _stdin_line(self, deadline: float) -> bytes:
        """The next whole line of standard input; at its end or when none arrives before
        ``deadline``, what is left (possibly b""). Reads the descriptor directly: a buffered
        reader can hold lines that ``select`` does not see."""
        while b"\n" not in self.pending and not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.handle], [], [], remaining)[0]:
                break
            chunk = os.read(self.handle.fileno(), 1 << 16)
            self.eof = not chunk
            self.pending += chunk
        line, newline, rest = self.pending.partition(b"\n")
        if newline:
            self.pending = rest
            return line + newline
        if self.eof:
            self.pending = b""
            return line
        return b""

    def ack(self, messages: list[Message]) -> None:
        if self.checkpoint is not None and messages:
            partial = self.checkpoint.with_name(self.checkpoint.name + ".partial")
            partial.write_text(str(max(m.handle for m in messages)))
            os.replace(partial, self.checkpoint)

    def close(self) -> None:
        if self.path is not None:
            self.handle.close()
