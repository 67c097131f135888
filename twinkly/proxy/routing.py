"""Routing patterns: simple queries that run on one backend only.

``proxy.postgres-only-patterns`` and ``proxy.yugabyte-only-patterns`` name statements
that only make sense on one of the two (``yb_servers()``, a PostgreSQL-only extension).
They are neither fanned out nor compared.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from twisted.logger import Logger

from twinkly.config.schema import Config
from twinkly.interfaces import ISessionOperations
from twinkly.tracking.responses import ResponseTracker

log = Logger()

_QUERY = ord("Q")

Router = Callable[[str], "str | None"]


def make_router(config: Config) -> Router | None:
    """sql -> the backend ("postgresql" or "yugabytedb") it must run on alone, or None."""
    routes = [(re.compile(p), "postgresql") for p in config.proxy.postgres_only_patterns] + [
        (re.compile(p), "yugabytedb") for p in config.proxy.yugabyte_only_patterns
    ]
    if not routes:
        return None

    def route(sql: str) -> str | None:
        for pattern, backend in routes:
            if pattern.search(sql):
                return backend
        return None

    return route


class QueryRouting:
    """One session's routed queries.

    Routing applies to a chunk that is exactly one Query. A query routed to the target
    is answered by the target, so it is routed only when neither backend owes anything
    (its answer cannot interleave with the truth's), and the client is paused until the
    answer is complete."""

    def __init__(
        self,
        router: Router,
        truth_name: str,
        session: ISessionOperations,
        truth_tracker: ResponseTracker,
        target_tracker: ResponseTracker,
        tick: Callable[[], float],
        comparing: bool,
    ) -> None:
        self._router = router
        self._truth_name = truth_name
        self._session = session
        self._truth_tracker = truth_tracker
        self._target_tracker = target_tracker
        self._tick = tick
        self._comparing = comparing
        self.target_answers = False  # the target's bytes go to the client now

    def take(self, data: bytes, messages: list[tuple[int, bytes]], session_id: object) -> bool:
        """Send a query that matches a pattern to its backend; False to run it on both."""
        if len(messages) != 1 or messages[0][0] != _QUERY or len(data) != 5 + len(messages[0][1]):
            return False
        sql = messages[0][1][:-1].decode("utf-8", "replace")
        backend = self._router(sql)
        if backend is None:
            return False
        session = self._session
        context = (sql, None, ()) if self._comparing else None
        if backend == self._truth_name:
            self._truth_tracker.expect("Q", self._tick(), session.next_sequence(), context)
            session.send_to_truth(data)
            return True
        if not session.target_connected or self._truth_tracker.owed or self._target_tracker.owed:
            log.info(
                "session {pid}: not routed (answers outstanding): {sql}",
                pid=session_id,
                sql=sql[:200],
            )
            return False
        self._target_tracker.expect("Q", self._tick(), session.next_sequence(), context)
        self.target_answers = True
        session.pause_client("routed")
        session.send_to_target(data)
        return True

    def target_progress(self) -> None:
        """After the target's bytes were tracked: a routed answer that is complete
        gives the client back."""
        if self.target_answers and not self._target_tracker.owed:
            self.target_answers = False
            self._session.resume_client("routed")
