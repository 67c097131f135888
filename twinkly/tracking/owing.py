"""What the client's messages make both backends owe, pushed onto their trackers.

For every message that owes a response the session numbers it, finds its context (the
SQL it runs, see contexts.py) and tells both trackers; it also notes a COPY FROM STDIN
that may start (the target's bytes are then held, see twinkly/proxy/copy_in.py) and a
Terminate. It runs for every batch of client messages, so it has a C twin (``owe`` in
``_owing.c``, in the tracker's extension) that runs with the C tracker; the same tests
run both. ``PYTHON`` and ``C`` (None when not built) hold each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twinkly.tracking import responses
from twinkly.tracking.results import CLIENT_EXPECTATIONS, DESCRIBE_PORTAL

__all__ = ["PYTHON", "C", "may_copy_from", "owe"]

_DESCRIBE, _QUERY, _PARSE, _EXECUTE, _SYNC = (ord(c) for c in "DQPES")
_TERMINATE = ord("X")


def may_copy_from(payload: bytes) -> bool:
    """Whether a Query or Parse may start COPY FROM STDIN (a cheap, generous test)."""
    lowered = payload.lower()
    return b"copy" in lowered and b"stdin" in lowered


def python_owe(
    messages: list[tuple[int, bytes]],
    now: float,
    seq: int,
    truth: Any,
    target: Any | None,
    contexts: Any | None,
) -> tuple[int, int, bool]:
    """Push what ``messages`` owe onto ``truth`` and ``target`` (None: nothing is owed
    there), numbered from ``seq`` + 1. Returns the last number, the number of a message
    after which the target's bytes are held for COPY FROM STDIN (0: none), and whether
    the client sent Terminate."""
    truth_expect = truth.expect
    target_expect: Callable[..., None] | None = target.expect if target is not None else None
    hold_seq = 0
    terminate = copy_from = False
    for type_byte, payload in messages:
        kind = CLIENT_EXPECTATIONS.get(type_byte)
        if kind is not None:
            if type_byte == _DESCRIBE and payload[:1] == b"P":
                kind = DESCRIBE_PORTAL
            seq += 1
            context = (
                contexts.context(type_byte, payload)
                if contexts is not None and type_byte != _SYNC  # a Sync has no context
                else None
            )
            truth_expect(kind, now, seq, context)
            if target_expect is not None:
                target_expect(kind, now, seq, context)
            if type_byte == _QUERY or type_byte == _PARSE:
                copy_from = may_copy_from(payload)
                if copy_from and type_byte == _QUERY:
                    hold_seq = seq
            elif type_byte == _EXECUTE and copy_from:
                hold_seq = seq
        elif type_byte == _TERMINATE:
            terminate = True
    return seq, hold_seq, terminate


PYTHON = python_owe
C: Callable[..., tuple[int, int, bool]] | None = None
if responses.C is not None:
    from twinkly.tracking.contexts import ClientContexts
    from twinkly.tracking.results import _tracker

    _tracker.setup_owing(ClientContexts)
    C = _tracker.owe

owe = C if C is not None and responses.IMPLEMENTATION == "c" else PYTHON
