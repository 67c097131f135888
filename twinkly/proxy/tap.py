"""A protocol tap: what a trace sees of a session's three legs, both ways.

A tap maps ``(leg, direction)`` to a function given every chunk of that leg, where leg
is "client", "truth" or "target" and direction ">" (towards it) or "<" (from it).
``Session.attach_tap`` wires one in; sessions without a tap pay nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Tap = dict[tuple[str, str], Callable[[bytes], None]]


def tee(leg: Callable[[bytes], None], then: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``then``, with each chunk shown to ``leg`` first."""

    def traced(data: bytes) -> Any:
        leg(data)
        return then(data)

    return traced
