"""Which SQL each client message runs, so that results can be compared knowing it.

A simple Query carries its SQL; an Execute only names a portal, which a Bind made from
a prepared statement, which a Parse named. ``ClientContexts`` follows those names for
one session (bounded: the oldest names are forgotten first) and gives each message a
context ``(sql, bind payload or None)``.
"""

from __future__ import annotations

_QUERY, _PARSE, _BIND, _EXECUTE = ord("Q"), ord("P"), ord("B"), ord("E")

# The context of Twinkly's own statements (transaction wrapping): never compared.
INTERNAL: tuple = ("<twinkly>", None, ())
_DESCRIBE, _CLOSE, _FUNCTION_CALL = ord("D"), ord("C"), ord("F")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class ClientContexts:
    """Prepared statements and portals of one session, by name."""

    def __init__(self, max_names: int = 10_000) -> None:
        self._max = max_names
        self.statements: dict[bytes, tuple[str, tuple[int, ...]]] = {}
        self.portals: dict[bytes, tuple[str, bytes, tuple[int, ...]] | None] = {}

    def _remember(self, names: dict, name: bytes, value: object) -> None:
        names.pop(name, None)
        names[name] = value
        if len(names) > self._max:
            del names[next(iter(names))]

    def context(self, type_byte: int, payload: bytes) -> tuple | None:
        """The context of one client message that owes a response."""
        if type_byte == _QUERY:
            return (_text(payload[:-1]), None, ())
        if type_byte == _EXECUTE:
            return self.portals.get(payload[: payload.find(0)])
        if type_byte == _BIND:
            end = payload.find(0)
            statement = self.statements.get(payload[end + 1 : payload.find(0, end + 1)])
            context = None if statement is None else (statement[0], payload, statement[1])
            self._remember(self.portals, payload[:end], context)
            return context
        if type_byte == _PARSE:
            end = payload.find(0)
            sql_end = payload.find(0, end + 1)
            sql = _text(payload[end + 1 : sql_end])
            count = int.from_bytes(payload[sql_end + 1 : sql_end + 3], "big")
            types = payload[sql_end + 3 : sql_end + 3 + 4 * count]
            oids = tuple(int.from_bytes(types[i : i + 4], "big") for i in range(0, len(types), 4))
            self._remember(self.statements, payload[:end], (sql, oids))
            return (sql, None, oids)
        if type_byte == _DESCRIBE:
            name = payload[1 : payload.find(0, 1)]
            if payload[:1] == b"S":
                statement = self.statements.get(name)
                return None if statement is None else (statement[0], None, statement[1])
            return self.portals.get(name)
        if type_byte == _CLOSE:
            names = self.statements if payload[:1] == b"S" else self.portals
            names.pop(payload[1 : payload.find(0, 1)], None)
            return None
        if type_byte == _FUNCTION_CALL:
            return (f"<function call {int.from_bytes(payload[:4], 'big')}>", None, ())
        return None
