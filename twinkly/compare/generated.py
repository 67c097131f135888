"""Where the values of a column came from, and which columns one write generated.

A write statement's facts (``twinkly.sql.writes``) read against its table's catalog facts
(``twinkly.compare.catalog``): a volatile value given explicitly, a volatile default left
to the server, a sequence-generated key, a stored generated column over one of those.
The write history (``twinkly.compare.volatile``) keeps the result as ``Source``s.
"""

from __future__ import annotations

from dataclasses import dataclass

from twinkly.compare.catalog import ColumnFacts, TableFacts
from twinkly.sql.writes import WriteFacts

VALUE_KIND, DEFAULT, KEY, GENERATED, TRIGGER, CONFIGURED = (
    "value",
    "default",
    "key",
    "generated",
    "trigger",
    "configured",
)


@dataclass(frozen=True, slots=True)
class Source:
    """Where the values of one column came from."""

    table: str
    column: str
    how: str  # "default now()", "set to now() by UPDATE", "set by trigger stamp (stamp())"
    kind: str  # value default key generated trigger configured
    event: str | None = None  # the volatile_write event that recorded it

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"

    def reason(self, cited: bool = True) -> str:
        seen = f" (event {self.event})" if self.event and cited else ""
        if self.kind == CONFIGURED:
            return f"{self.name}: listed in comparison.volatile-column-list"
        if self.kind == KEY:
            return (
                f"{self.name}: a sequence-generated key ({self.how}), numbered on each"
                f" server separately{seen}; rows matched on their other columns"
            )
        if self.kind in (VALUE_KIND, TRIGGER):
            return f"{self.name}: {self.how}, on each server separately{seen}"
        return f"{self.name}: {self.how}, written on each server separately{seen}"


def generated_by(
    facts: WriteFacts, table: TableFacts, known: dict[int, Source] | None = None
) -> dict[int, Source]:
    """The columns (by attnum) one write gave values computed on each server."""
    found: dict[int, Source] = {}
    command = facts.command.upper()
    for name, how in facts.volatile:
        column = table.column(name)
        if column is not None:
            kind = KEY if "nextval" in how else VALUE_KIND
            shown = how if kind == KEY else f"set to {how} by {command}"
            found[column.number] = Source(table.name, column.name, shown, kind)
    defaulted = set(facts.defaulted)
    if facts.inserts:
        if facts.listed is not None:
            given = set(facts.listed)
        elif facts.width < 0:
            given = {c.name for c in table.columns}
        else:
            given = {c.name for c in table.columns[: facts.width]}
        left = [c for c in table.columns if c.name not in given]
    else:
        left = []
    for name in defaulted:
        column = table.column(name)
        if column is not None:
            left.append(column)
    for column in left:
        if column.volatile and column.number not in found:
            found[column.number] = _default_source(table, column)
    updated = {table.column(n).number for n in facts.updated if table.column(n)}  # type: ignore[union-attr]
    for column in table.columns:
        if not column.generated or column.number in found:
            continue
        inputs = [n for n in column.depends_on if n in found]
        recomputed = facts.inserts or bool(updated & set(column.depends_on))
        if not inputs and recomputed and known:
            inputs = [n for n in column.depends_on if n in known]
        if inputs and recomputed:
            source_column = table.by_number(inputs[0])
            over = f"{table.name}.{source_column.name}" if source_column else "a generated column"
            found[column.number] = Source(
                table.name, column.name, f"{column.how} over {over}", GENERATED
            )
    return found


def _default_source(table: TableFacts, column: ColumnFacts) -> Source:
    return Source(table.name, column.name, column.how, KEY if column.sequence else DEFAULT)
