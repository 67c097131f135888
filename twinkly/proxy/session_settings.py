"""Giving both sessions the settings that shape how values are printed.

Float text, date and interval styles and the time zone decide the bytes of a result; if
the two servers were configured differently, every row would "differ". The truth's
values are the reference (the client must see exactly what the truth says), and the
target gets them too, unless the client chose its own in the start-up packet, which
both backends then received.
"""

from __future__ import annotations

from twisted.internet import defer

from twinkly.proxy.backend import BackendProtocol
from twinkly.sql.quoting import quote_literal

REPORTED = ("TimeZone", "DateStyle", "IntervalStyle")  # sent as ParameterStatus


@defer.inlineCallbacks
def align_settings(
    truth: BackendProtocol, target: BackendProtocol, client_parameters: dict[str, str]
):  # type: ignore[no-untyped-def]
    """Set the target's output settings to the truth's; fires with the SET statements."""
    chosen = {name.lower() for name in client_parameters}
    statements = []
    if "extra_float_digits" not in chosen:
        rows = yield truth.run_query("SHOW extra_float_digits")
        statements.append(f"SET extra_float_digits = {int(rows[0][0])}")
    for name in REPORTED:
        value = truth.server_parameters.get(name)
        if name.lower() in chosen or value is None:
            continue
        if target.server_parameters.get(name) != value:
            statements.append(f"SET {name} = {quote_literal(value)}")
    if statements:
        yield target.run_query("; ".join(statements))
    return statements
