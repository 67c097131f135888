"""Logs as JSON lines, on request: ``twistd --logger twinkly.ops.logs.json_observer``.

twisted.logger events already carry named fields (``session``, ``sqlstate``,
``backend``...); this writes each event as one JSON object per line on stdout, for log
shippers, instead of twistd's formatted text.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer() -> ILogObserver:
    """One JSON object per line on stdout (no record separator: plain JSON Lines)."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
