"""Twinkly's own cancel keys, and which worker process owns one.

A CancelRequest arrives on a new connection, which with several worker processes may
land on any of them. The process id of the BackendKeyData a client gets carries the
index of the worker that owns the session in its high bits, so the worker that receives
a cancel knows where to forward it (as pgbouncer's peers do).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Container

WORKER_BITS = 6  # up to 64 workers
_RANDOM_BITS = 31 - WORKER_BITS  # a process id is a positive int32


class CancelKeys:
    """Allocates (process id, secret) pairs for one worker."""

    def __init__(self, worker: int = 0) -> None:
        if not 0 <= worker < 1 << WORKER_BITS:
            raise ValueError(f"worker index {worker} out of range")
        self.worker = worker

    def allocate(self, taken: Container[int]) -> tuple[int, bytes]:
        """A process id no live session of this worker has, and a fresh secret."""
        while True:
            process_id = (self.worker << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS)
            if process_id and process_id not in taken:
                return process_id, os.urandom(4)

    @staticmethod
    def owner(process_id: int) -> int:
        """The index of the worker that handed out ``process_id``."""
        return (process_id >> _RANDOM_BITS) & ((1 << WORKER_BITS) - 1)
