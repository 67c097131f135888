"""Reporting: events for every difference between the two databases, where they are written,
and the ``twinkly report`` summary of a report file."""

from twinkly.report.events import (
    BENIGN_KINDS,
    KINDS,
    EventIdGenerator,
    encode_event,
    make_event,
    new_event_id,
)
from twinkly.report.sink import FanOutSink, IEventSink, JsonLinesSink, MemorySink

__all__ = [
    "BENIGN_KINDS",
    "KINDS",
    "EventIdGenerator",
    "FanOutSink",
    "IEventSink",
    "JsonLinesSink",
    "MemorySink",
    "encode_event",
    "make_event",
    "new_event_id",
]
