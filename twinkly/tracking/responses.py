"""Turning one backend's response stream into statement results and sync points.

Each backend gets a ``ResponseTracker``: a FIFO of the responses it owes, pushed as the
client's messages are forwarded, and consumed as the backend's messages arrive. It never
waits on a timer: the protocol itself says where each response ends. Rows are not
decoded: each DataRow adds its raw bytes' hash to an order-independent digest and bumps
a count, so a result of any size costs constant memory.

Two implementations of one state machine: the reference in ``python_tracker.py`` and
the C one in ``_tracker.c`` (built with the other C accelerator, see setup.py). The C
one runs when twinkly.wire.accel runs C (``TWINKLY_PURE_PYTHON=1`` selects Python for
both); ``PYTHON`` and ``C`` (None when not built) hold each, for tests and benchmarks.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

from twinkly.tracking import python_tracker, results
from twinkly.tracking.results import (
    BIND,
    CLIENT_EXPECTATIONS,
    CLOSE,
    COPY_END,
    DESCRIBE_PORTAL,
    DESCRIBE_STATEMENT,
    EXECUTE,
    FUNCTION_CALL,
    PARSE,
    QUERY,
    SUB_BITS,
    SYNC,
    SYNC_SUB,
    expectation_for,
)
from twinkly.wire import accel

__all__ = [
    "BIND",
    "CLIENT_EXPECTATIONS",
    "CLOSE",
    "COPY_END",
    "DESCRIBE_PORTAL",
    "DESCRIBE_STATEMENT",
    "EXECUTE",
    "FUNCTION_CALL",
    "IMPLEMENTATION",
    "PARSE",
    "PYTHON",
    "QUERY",
    "SUB_BITS",
    "SYNC",
    "SYNC_SUB",
    "C",
    "Item",
    "ResponseTracker",
    "StatementResult",
    "SyncPoint",
    "expectation_for",
]

PYTHON = SimpleNamespace(
    name="python",
    ResponseTracker=python_tracker.ResponseTracker,
    StatementResult=results.StatementResult,
    SyncPoint=results.SyncPoint,
)
C: SimpleNamespace | None = None
if results._tracker is not None:
    C = SimpleNamespace(
        name="c",
        ResponseTracker=results._tracker.ResponseTracker,
        StatementResult=results.CStatementResult,
        SyncPoint=results.CSyncPoint,
    )

_chosen = C if C is not None and accel.IMPLEMENTATION == "c" else PYTHON
IMPLEMENTATION = _chosen.name

if TYPE_CHECKING:
    from twinkly.tracking.python_tracker import ResponseTracker
    from twinkly.tracking.results import StatementResult, SyncPoint
else:
    ResponseTracker = _chosen.ResponseTracker
    StatementResult = _chosen.StatementResult
    SyncPoint = _chosen.SyncPoint

Item = StatementResult | SyncPoint
