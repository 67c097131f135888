"""A connection's start-up traffic, kept until a protocol trace asks for it.

A session's trace can begin only once the session has an id, after login; the bytes of
the start-up (both ways, on each of the three legs) are kept meanwhile so the trace
shows the whole conversation. Bounded: of a start-up larger than LIMIT, the trace shows
the beginning.
"""

from __future__ import annotations

LIMIT = 64 * 1024


class StartupRecording:
    def __init__(self) -> None:
        self.chunks: list[tuple[str, bytes]] = []  # (">" sent by the client side, data)
        self.size = 0
        self.truncated = False
        self.recording = True

    def add(self, direction: str, data: bytes) -> None:
        if not self.recording:
            return
        if self.size + len(data) > LIMIT:
            self.truncated = True
            self.recording = False
            return
        self.chunks.append((direction, data))
        self.size += len(data)

    def take(self) -> list[tuple[str, bytes]]:
        """What was recorded; recording stops (the session's own traffic follows)."""
        chunks, self.chunks = self.chunks, []
        self.recording = False
        return chunks
