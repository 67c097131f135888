"""Twinkly's own cancel keys, and which worker process owns one.

The process id a client is told is the truth session's own: it is the one the truth
shows everywhere else (pg_backend_pid(), the pid of a NotificationResponse,
pg_stat_activity, the argument of pg_terminate_backend), so drivers that compare them
must see the same number. The secret is Twinkly's: a cancel must come through Twinkly,
which delivers it to both backends.

A CancelRequest arrives on a new connection, which with several worker processes may
land on any of them; the secret's first bits carry the index of the worker that owns
the session, so the worker that receives a cancel knows where to forward it (as
pgbouncer's peers do). The rest of the secret is random.
"""

from __future__ import annotations

import secrets
from collections.abc import Container

WORKER_BITS = 6  # up to 64 workers
_SECRET_BITS = 32
_RANDOM_BITS = _SECRET_BITS - WORKER_BITS


class CancelKeys:
    """Allocates (process id, secret) pairs for one worker."""

    def __init__(self, worker: int = 0) -> None:
        if not 0 <= worker < 1 << WORKER_BITS:
            raise ValueError(f"worker index {worker} out of range")
        self.worker = worker

    def allocate(self, truth_process_id: int | None, taken: Container[int]) -> tuple[int, bytes]:
        """The truth's process id (a random one if the truth gave none, or it is taken),
        and a fresh secret that names this worker."""
        process_id = truth_process_id or 0
        while process_id <= 0 or process_id in taken:
            process_id = secrets.randbelow(2**31 - 1) + 1
        value = (self.worker << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS)
        return process_id, value.to_bytes(4, "big")

    @staticmethod
    def owner(secret: bytes) -> int:
        """The index of the worker that handed out ``secret``."""
        if len(secret) != 4:
            return 0
        return int.from_bytes(secret, "big") >> _RANDOM_BITS
