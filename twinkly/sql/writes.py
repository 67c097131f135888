"""What a write statement's parse tree says about the values each server computes itself.

``insert into t (id, ts) values (1, now())`` stores a different ``ts`` on each server;
``insert into t (id) values (1)`` leaves ``ts`` to its default, which only the catalog
can tell (see ``twinkly.compare.catalog``). This module reads the SQL only: which table is
written, which columns get a value computed by a volatile function (INSERT values and
INSERT ... SELECT, UPDATE SET, ON CONFLICT DO UPDATE, MERGE), which are given
explicitly, which are left to their defaults. COPY's data comes from the client, so it is
never volatile; the columns it leaves out still get their defaults.

Nothing here imports Twisted and nothing raises on user SQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast import parser

from twinkly.sql.analysis import VOLATILE_FUNCTIONS

Tree = dict[str, Any]
_NOW_WORDS = frozenset(("now", "today", "tomorrow", "yesterday"))
_DATETIME_TYPES = frozenset(("timestamp", "timestamptz", "date", "time", "timetz"))
MAX_CHARS = 256 * 1024  # longer texts are not read (the comparator does not parse them either)


@dataclass(frozen=True, slots=True)
class WriteFacts:
    """One write statement's target table, as the SQL shows it."""

    table: str  # lower-case, qualified as written ("s.t" or "t"), like StatementInfo.writes
    relation: tuple[str, ...]  # the name as written (quoted case kept), for the catalog
    command: str  # insert update merge copy
    # Columns given a value computed on each server: (column, how), e.g. ("ts", "now()").
    # An INSERT without a column list names them by position: "#1", "#2"...
    volatile: tuple[tuple[str, str], ...] = ()
    # INSERT/COPY/MERGE INSERT: the columns given values explicitly; None when the INSERT
    # names no columns (then the first ``width`` columns of the table are given).
    listed: tuple[str, ...] | None = None
    width: int = 0
    inserts: bool = False  # rows are inserted: the columns not given get their defaults
    defaulted: tuple[str, ...] = ()  # SET c = DEFAULT, VALUES (DEFAULT)
    updated: tuple[str, ...] = ()  # columns an UPDATE (or DO UPDATE, MERGE UPDATE) sets


def write_facts(sql: str) -> tuple[WriteFacts, ...]:
    """The writes of every statement of ``sql`` (one per INSERT, UPDATE, MERGE or COPY
    FROM, data-modifying WITH queries included); () for anything else or unparsable."""
    if len(sql) > MAX_CHARS or "\x00" in sql:
        return ()
    return _write_facts(sql)


@lru_cache(maxsize=2048)
def _write_facts(sql: str) -> tuple[WriteFacts, ...]:
    try:
        tree = json.loads(parser.parse_sql_json(sql))
    except Exception:  # parse errors: the comparator reports the statement as it is
        return ()
    found: list[WriteFacts] = []
    stack: list[Any] = [tree.get("stmts", [])]
    while stack:  # no recursion: deep expressions must not hit Python's limit
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
            continue
        if not isinstance(value, dict):
            continue
        for kind, reader in _READERS.items():
            node = value.get(kind)
            if isinstance(node, dict):
                facts = reader(node)
                if facts is not None:
                    found.append(facts)
        stack.extend(v for v in value.values() if isinstance(v, dict | list))
    return tuple(found)


# --- expressions ----------------------------------------------------------------------


def volatile_call(expr: Any) -> str | None:
    """How an expression computes a value of its own on each server ("now()", "an
    expression calling random()"), or None when it does not."""
    if not isinstance(expr, dict):
        return None
    names = _volatile_names(expr)
    if not names:
        return None
    shown = ", ".join(names)
    bare = _bare(expr)
    return shown if bare else f"an expression calling {shown}"


def _bare(expr: Tree) -> bool:
    """The expression is just the volatile call (possibly cast)."""
    if "TypeCast" in expr:
        arg = expr["TypeCast"].get("arg", {})
        return "A_Const" in arg or _bare(arg)
    if "FuncCall" in expr:
        return not expr["FuncCall"].get("args")
    return "SQLValueFunction" in expr


def _volatile_names(expr: Any) -> list[str]:
    names: dict[str, None] = {}
    stack = [expr]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
            continue
        if not isinstance(value, dict):
            continue
        call = value.get("FuncCall")
        if isinstance(call, dict):
            parts = [p.get("String", {}).get("sval", "").lower() for p in call.get("funcname", ())]
            if parts and parts[-1] in VOLATILE_FUNCTIONS and parts[0] in (parts[-1], "pg_catalog"):
                names[f"{parts[-1]}()"] = None
        svf = value.get("SQLValueFunction")
        if isinstance(svf, dict):
            name = svf.get("op", "").removeprefix("SVFOP_").removesuffix("_N").lower()
            if name in VOLATILE_FUNCTIONS:
                names[name] = None
        cast = value.get("TypeCast")
        if isinstance(cast, dict):
            word = cast.get("arg", {}).get("A_Const", {}).get("sval", {}).get("sval", "")
            type_name = cast.get("typeName", {}).get("names", ({},))[-1].get("String", {})
            typ = type_name.get("sval")
            if word.strip().lower() in _NOW_WORDS and typ in _DATETIME_TYPES:
                names[f"'{word.strip().lower()}'::{typ}"] = None
        stack.extend(v for v in value.values() if isinstance(v, dict | list))
    return list(names)


# --- statements -----------------------------------------------------------------------


def _relation(range_var: Tree) -> tuple[str, tuple[str, ...]]:
    parts = tuple(
        range_var[k] for k in ("catalogname", "schemaname", "relname") if range_var.get(k)
    )
    return ".".join(parts).lower(), parts


def _assignments(targets: list, facts: dict[str, Any]) -> None:
    """UPDATE SET, DO UPDATE SET, MERGE UPDATE."""
    for target in targets:
        res = target.get("ResTarget", {})
        name = res.get("name")
        if not name:
            continue
        val = res.get("val", {})
        if "MultiAssignRef" in val:  # SET (a, b) = (now(), 1): each source by its column
            ref = val["MultiAssignRef"]
            source = ref.get("source", {})
            row = source.get("RowExpr", {}).get("args")
            expr = row[ref.get("colno", 1) - 1] if row else source
        else:
            expr = val
        facts["updated"].append(name)
        if "SetToDefault" in expr:
            facts["defaulted"].append(name)
            continue
        how = volatile_call(expr)
        if how is not None:
            facts["volatile"].append((name, how))


def _inserted(cols: list | None, select: Tree | None, facts: dict[str, Any]) -> None:
    """An INSERT's (or MERGE INSERT's) rows: listed columns and the values given them."""
    names = [c.get("ResTarget", {}).get("name", "") for c in cols or ()]
    facts["inserts"] = True
    facts["listed"] = tuple(names) if cols else None
    rows: list[list] = []
    if select is not None:
        if "valuesLists" in select:
            rows = [v.get("List", {}).get("items", []) for v in select["valuesLists"]]
        elif select.get("op", "SETOP_NONE") == "SETOP_NONE" and "targetList" in select:
            rows = [[t.get("ResTarget", {}).get("val") for t in select["targetList"]]]
        elif volatile_call(select):  # a UNION of volatile rows: which column, unknown
            facts["unknown"] = True
    facts["width"] = max((len(r) for r in rows), default=len(names))
    for row in rows:
        for position, expr in enumerate(row):
            column = names[position] if position < len(names) else f"#{position + 1}"
            if isinstance(expr, dict) and "SetToDefault" in expr:
                facts["defaulted"].append(column)
                continue
            how = volatile_call(expr)
            if how is not None:
                facts["volatile"].append((column, how))


def _new_facts() -> dict[str, Any]:
    return {"volatile": [], "defaulted": [], "updated": [], "listed": None, "width": 0}


def _make(node: Tree, command: str, facts: dict[str, Any]) -> WriteFacts | None:
    relation = node.get("relation")
    if not isinstance(relation, dict):
        return None
    table, parts = _relation(relation)
    return WriteFacts(
        table=table,
        relation=parts,
        command=command,
        volatile=tuple(dict.fromkeys(facts["volatile"])),
        listed=facts["listed"],
        width=facts["width"],
        inserts=bool(facts.get("inserts")),
        defaulted=tuple(dict.fromkeys(facts["defaulted"])),
        updated=tuple(dict.fromkeys(facts["updated"])),
    )


def _insert(node: Tree) -> WriteFacts | None:
    facts = _new_facts()
    _inserted(node.get("cols"), node.get("selectStmt", {}).get("SelectStmt"), facts)
    conflict = node.get("onConflictClause", {})
    if conflict.get("action") == "ONCONFLICT_UPDATE":
        _assignments(conflict.get("targetList", ()), facts)
    return _make(node, "insert", facts)


def _update(node: Tree) -> WriteFacts | None:
    facts = _new_facts()
    _assignments(node.get("targetList", ()), facts)
    return _make(node, "update", facts)


def _merge(node: Tree) -> WriteFacts | None:
    facts = _new_facts()
    for clause in node.get("mergeWhenClauses", ()):
        when = clause.get("MergeWhenClause", {})
        if when.get("commandType") == "CMD_UPDATE":
            _assignments(when.get("targetList", ()), facts)
        elif when.get("commandType") == "CMD_INSERT":
            values = when.get("values")
            select = {"valuesLists": [{"List": {"items": values}}]} if values else None
            _inserted(when.get("targetList"), select, facts)
    return _make(node, "merge", facts)


def _copy(node: Tree) -> WriteFacts | None:
    if not node.get("is_from") or "relation" not in node:
        return None
    facts = _new_facts()
    attlist = node.get("attlist")
    facts["inserts"] = True
    if attlist:
        facts["listed"] = tuple(a.get("String", {}).get("sval", "") for a in attlist)
    else:
        facts["listed"] = None
        facts["width"] = -1  # every column: nothing left to a default
    return _make(node, "copy", facts)


_READERS = {
    "InsertStmt": _insert,
    "UpdateStmt": _update,
    "MergeStmt": _merge,
    "CopyStmt": _copy,
}
