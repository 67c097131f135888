"""Why is a statement slower on the target? Read both EXPLAIN (FORMAT JSON) plans and name the
likely cause in plain words: a missing index, a stale estimate, another join method, a spill to
disk, more reads. Pure functions over the parsed JSON, so they run anywhere and never raise on a
plan they do not understand: they say nothing about it instead.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any, TypedDict

Node = dict[str, Any]

#: Row estimates this many times off (either way) are reported...
ESTIMATE_FACTOR = 10
#: ...when the larger of estimate and actual is at least this many rows.
ESTIMATE_MIN_ROWS = 100
ESTIMATES_PER_BACKEND = 2
#: The summary shows the estimate next to the actual rows when they differ by this factor.
SUMMARY_ESTIMATE_FACTOR = 2
IO_FACTOR = 10
IO_MIN_BLOCKS = 1000
#: Nodes that only pass rows on; the summary leaves them out.
PASS_THROUGH = frozenset({"Hash", "Materialize", "Memoize"})
JOIN_METHODS = ("Hash Join", "Nested Loop", "Merge Join")  # "YB Batched Nested Loop" included


class Insight(TypedDict):
    kind: str
    message: str
    relation: str | None


def parse_plan(text: str) -> list | None:
    """The JSON text of an EXPLAIN (FORMAT JSON) cell -> the parsed value, None if not valid."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return None
    if isinstance(value, dict) and isinstance(value.get("Plan"), dict):
        value = [value]
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return value
    return None


def plan_summary(plan: list | dict | None, limit: int = 300) -> str:
    """One line naming the main nodes top-down, e.g. "Sort (rows 1200) <- Seq Scan on orders
    (rows 1200 of est. 10, 48.1 ms)", at most `limit` characters (cut with '…')."""
    root = _root(plan)
    if root is None or limit <= 0:
        return ""
    text = " <- ".join(_describe(node) for node in _walk(root) if _type(node) not in PASS_THROUGH)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compare_plans(
    truth: list | dict | None,
    target: list | dict | None,
    truth_label: str = "truth",
    target_label: str = "target",
) -> list[Insight]:
    """Insights, most likely cause first. Each: {"kind", "message", "relation"}."""
    truth_root, target_root = _root(truth), _root(target)
    if truth_root is None or target_root is None:
        return []
    insights = [
        *_missing_indexes(truth_root, target_root, truth_label, target_label),
        *_row_estimates(target_root, target_label),
        *_join_methods(truth_root, target_root, truth_label, target_label),
        *_spills(target_root, target_label),
        *_more_io(truth_root, target_root, truth_label, target_label),
        *_row_estimates(truth_root, truth_label),
    ]
    if not insights and _shape(truth_root) != _shape(target_root):
        message = (
            f"the plans differ: {truth_label}: {plan_summary(truth_root, 140)}; "
            f"{target_label}: {plan_summary(target_root, 140)}"
        )
        insights.append(Insight(kind="different_plan", message=message, relation=None))
    return insights


def _root(plan: object) -> Node | None:
    """The top node of the list EXPLAIN returns, of its first element, or of a bare node."""
    if isinstance(plan, list):
        plan = plan[0] if plan else None
    if isinstance(plan, dict) and "Plan" in plan:
        plan = plan["Plan"]
    return plan if isinstance(plan, dict) and isinstance(plan.get("Node Type"), str) else None


def _walk(root: Node) -> Iterator[Node]:
    """Every node top-down (pre-order); without recursion, so no plan is too deep."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        children = node.get("Plans")
        if isinstance(children, list):
            stack.extend(c for c in reversed(children) if isinstance(c, dict))


def _type(node: Node) -> str:
    return _text(node, "Node Type") or "?"


def _text(node: Node, key: str) -> str | None:
    value = node.get(key)
    return value if isinstance(value, str) and value else None


def _num(node: Node, key: str) -> float | None:
    value = node.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _relations(node: Node) -> list[str]:
    """The relations read under `node` (itself included), in plan order, without repeats."""
    names = (_text(n, "Relation Name") for n in _walk(node))
    return list(dict.fromkeys(name for name in names if name))


def _rows(node: Node) -> tuple[float | None, float | None]:
    """(estimated, actual) rows over all loops; actual is None without ANALYZE data."""
    loops = _num(node, "Actual Loops")
    planned, actual = _num(node, "Plan Rows"), _num(node, "Actual Rows")
    if loops is None or actual is None:
        return planned, None
    return (None if planned is None else planned * loops), actual * loops


def _describe(node: Node) -> str:
    """One node the way EXPLAIN's text format names it, with rows and (for reads) the time."""
    name, index, relation = _type(node), _text(node, "Index Name"), _text(node, "Relation Name")
    if index and relation:
        name += f" using {index}"
    if relation or index:
        name += f" on {relation or index}"
    planned, actual = _rows(node)
    details = []
    if actual is not None:
        rows = f"rows {_int(actual)}"
        if planned is not None and _ratio(planned, actual) >= SUMMARY_ESTIMATE_FACTOR:
            rows += f" of est. {_int(planned)}"
        details.append(rows)
    elif planned is not None:
        details.append(f"est. rows {_int(planned)}")
    time, loops = _num(node, "Actual Total Time"), _num(node, "Actual Loops") or 1
    if relation and time is not None:
        details.append(f"{time * loops:.1f} ms")
    return f"{name} ({', '.join(details)})" if details else name


def _shape(root: Node) -> list[tuple[str, str | None]]:
    return [(_type(n), _text(n, "Relation Name")) for n in _walk(root)]


def _int(value: float) -> str:
    return str(round(value))


def _ratio(a: float, b: float) -> float:
    """How many times the larger is of the smaller, counting less than one row as one."""
    return max(a, b) / max(min(a, b), 1.0)


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


_LITERAL = re.compile(r"(?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'", re.S)
_CAST = re.compile(
    r"::\s*(?:\"(?:[^\"]|\"\")*\"|character varying|double precision|bit varying"
    r"|(?:timestamp|time) with(?:out)? time zone|[\w.$]+)(?:\(\d+(?:,\s*\d+)?\))?(?:\[\])*"
)
_TOKEN = re.compile(r"\"(?:[^\"]|\"\")*\"|[A-Za-z_][\w$]*|\d+(?:\.\d+)?|[<>=!~*@&|^#%+/-]+|\S")
_NAME = re.compile(r"\"(?:[^\"]|\"\")*\"|[A-Za-z_][\w$]*")
_COMPARISONS = frozenset(
    {"=", "<>", "!=", "<", ">", "<=", ">=", "~~", "!~~", "~~*", "!~~*", "@>", "<@", "&&", "@@"}
)
_NOT_COLUMNS = frozenset({"and", "or", "not", "true", "false", "null", "any", "all", "row"})


def _condition_columns(condition: str | None) -> list[str]:
    """Columns compared in an Index Cond / Recheck Cond / Filter, e.g. "((o.customer_id = c.id)
    AND (status = 'x'::text))" -> ["customer_id", "status"]: the plain column on the left of each
    comparison (or IS), without its table, in order, once. Expressions (lower(email)) are
    skipped: we cannot name an index for them reliably."""
    if not condition:
        return []
    cleaned = _CAST.sub("", _LITERAL.sub("''", condition))
    tokens = [t.group() for t in _TOKEN.finditer(cleaned)]
    columns: list[str] = []
    for i, token in enumerate(tokens):
        if token in _COMPARISONS or token.upper() == "IS":
            column = _left_column(tokens, i)
            if column and column not in columns:
                columns.append(column)
    return columns


def _left_column(tokens: list[str], op: int) -> str | None:
    """The column just before tokens[op]: `b`, `a.b`, `(a.b)` as in `((a.b)::text = ...)`,
    `"B"`; None for anything else (a constant, f(b), (a + b), (a).b)."""
    end = op - 1
    parens = 0
    while end >= 0 and tokens[end] == ")":
        end, parens = end - 1, parens + 1
    if end < 0 or not _NAME.fullmatch(tokens[end]):
        return None
    start = end
    while start >= 2 and tokens[start - 1] == "." and _NAME.fullmatch(tokens[start - 2]):
        start -= 2
    if start < parens or tokens[start - parens : start] != ["("] * parens:
        return None  # the parentheses hold more than the column
    before = tokens[start - parens - 1] if start - parens >= 1 else ""
    if before in (".", ")") or (parens and _NAME.fullmatch(before)):
        return None  # a field of an expression, or a function call f(b)
    name = tokens[end]
    if name.startswith('"'):
        return name[1:-1].replace('""', '"')
    return None if name.lower() in _NOT_COLUMNS else name


def _missing_indexes(
    truth: Node, target: Node, truth_label: str, target_label: str
) -> Iterator[Insight]:
    """The target scans a whole table that the truth reads through an index."""
    # Each read of the truth by (relation, alias) and by relation alone -> its index read or
    # None. The alias tells two reads of one table apart; the relation alone serves when the
    # target named it otherwise.
    reads: dict[tuple[str, str | None], Node | None] = {}
    for node in _walk(truth):
        relation, kind = _text(node, "Relation Name"), _type(node)
        if relation:
            index = node if "Index" in kind or "Bitmap" in kind else None
            for key in ((relation, _text(node, "Alias")), (relation, None)):
                reads[key] = reads.get(key) or index
    reported: set[str] = set()
    for node in _walk(target):
        relation = _text(node, "Relation Name")
        if not relation or "Seq Scan" not in _type(node) or relation in reported:
            continue
        key = (relation, _text(node, "Alias"))
        used = reads[key] if key in reads else reads.get((relation, None))
        if used is None:
            continue
        reported.add(relation)
        names, columns = _index_used(used)
        message = f"sequential scan of {relation} on {target_label} where {truth_label} uses index"
        message += f" {_listed(names)}" if names else ""
        if columns:
            cols = ", ".join(columns)
            message += f" on ({cols}): no index on {relation}({cols}) on {target_label}?"
        else:
            message += f": is that index missing on {target_label}?"
        yield Insight(kind="missing_index", message=message, relation=relation)


def _index_used(node: Node) -> tuple[list[str], list[str]]:
    """Index names and condition columns of an index read (a bitmap scan's come from below)."""
    names: list[str] = []
    columns: list[str] = []
    for n in _walk(node):
        name = _text(n, "Index Name")
        if name and name not in names:
            names.append(name)
        for key in ("Index Cond", "Recheck Cond"):
            columns += [c for c in _condition_columns(_text(n, key)) if c not in columns]
    return names, columns


def _row_estimates(root: Node, label: str) -> list[Insight]:
    """Estimates far from the actual rows: the planner chose on wrong numbers."""
    found: list[tuple[float, Node, float, float]] = []
    for node in _walk(root):
        planned, actual = _rows(node)
        loops = _num(node, "Actual Loops") or 0
        if planned is None or actual is None or loops <= 0:
            continue
        if planned / loops <= 1 and actual / loops <= 1:
            continue  # estimates are at least one row per loop: 1 vs 0.1 is no error
        ratio = _ratio(planned, actual)
        if ratio >= ESTIMATE_FACTOR and max(planned, actual) >= ESTIMATE_MIN_ROWS:
            found.append((ratio, node, planned, actual))
    found.sort(key=lambda item: -item[0])
    insights: list[Insight] = []
    seen: set[tuple[str, ...]] = set()
    for ratio, node, planned, actual in found:
        relations = _relations(node)
        if tuple(relations) in seen:
            continue  # the same error passed up the plan (a Sort above its scan)
        seen.add(tuple(relations))
        subject = f"the join of {_listed(relations)}" if len(relations) > 1 else None
        relation = relations[0] if relations else None
        message = (
            f"row estimate off by {ratio:.0f}x on {label} for {subject or relation or _type(node)}"
            f" (est. {_int(planned)}, actual {_int(actual)})"
        )
        if relations:
            message += f": stale statistics? run ANALYZE {', '.join(relations)} on {label}"
        insights.append(Insight(kind="row_estimate", message=message, relation=relation))
        if len(insights) == ESTIMATES_PER_BACKEND:
            break
    return insights


def _joins(root: Node) -> dict[frozenset[str], tuple[str, list[str]]]:
    """Join method and relations (in plan order) of each join, by the set of its relations."""
    joins: dict[frozenset[str], tuple[str, list[str]]] = {}
    for node in _walk(root):
        relations = _relations(node) if any(m in _type(node) for m in JOIN_METHODS) else []
        if relations:
            joins.setdefault(frozenset(relations), (_type(node), relations))
    return joins


def _join_methods(
    truth: Node, target: Node, truth_label: str, target_label: str
) -> Iterator[Insight]:
    """The same relations joined another way: a different estimate or a missing index."""
    truth_joins = _joins(truth)
    for key, (method, relations) in _joins(target).items():
        truth_method = truth_joins.get(key, (method,))[0]
        if truth_method != method:
            message = (
                f"{target_label} joins {_listed(relations)} with {method} "
                f"where {truth_label} uses {truth_method}"
            )
            yield Insight(kind="join_method", message=message, relation=relations[0])


def _spills(root: Node, label: str) -> Iterator[Insight]:
    """Sorts and hashes that did not fit in work_mem and went to temporary files."""
    for node in _walk(root):
        kind = _type(node)
        relations = _relations(node) if "Sort" in kind or kind == "Hash" else []
        relation = relations[0] if len(relations) == 1 else None
        method = (_text(node, "Sort Method") or "").lower()
        if "Sort" in kind and (node.get("Sort Space Type") == "Disk" or "external" in method):
            keys = node.get("Sort Key")
            keys = keys if isinstance(keys, list) and keys else []
            what = f"sort by {', '.join(map(str, keys))}" if keys else "sort"
            space = _num(node, "Sort Space Used")
            size = f" ({_int(space)} kB)" if space is not None else ""
            message = f"{what} spills to disk on {label}{size}: raise work_mem"
            yield Insight(kind="sort_spill", message=message, relation=relation)
        batches = _num(node, "Hash Batches")
        if kind == "Hash" and batches is not None and batches > 1:
            of = f" of {_listed(relations)}" if relations else ""
            message = (
                f"hash{of} spills to disk in {_int(batches)} batches on {label}: "
                "raise work_mem (or hash_mem_multiplier)"
            )
            yield Insight(kind="sort_spill", message=message, relation=relation)


def _reads(root: Node) -> tuple[float, float, str | None]:
    """Blocks read from disk and from temporary files, and the relation read most. EXPLAIN's
    buffer counts include the children's, so a plan's total is its largest node's, not a sum."""
    shared, temp, top, top_reads = 0.0, 0.0, None, 0.0
    for node in _walk(root):
        node_shared = _num(node, "Shared Read Blocks") or 0
        shared, temp = max(shared, node_shared), max(temp, _num(node, "Temp Read Blocks") or 0)
        relation = _text(node, "Relation Name")
        if relation and node_shared > top_reads:
            top, top_reads = relation, node_shared
    return shared, temp, top


def _more_io(truth: Node, target: Node, truth_label: str, target_label: str) -> Iterator[Insight]:
    """Much more read: from disk (cold cache, bloat, worse path) or temporary files (work_mem)."""
    truth_reads = sum(_reads(truth)[:2])
    shared, temp, relation = _reads(target)
    if shared + temp >= IO_MIN_BLOCKS and shared + temp >= IO_FACTOR * truth_reads:
        times = f"{(shared + temp) / truth_reads:.0f}x " if truth_reads else ""
        message = (
            f"{target_label} reads {times}more blocks than {truth_label} "
            f"({_int(shared + temp)} vs {_int(truth_reads)})"
        )
        if temp > shared:
            message += ", mostly temporary files: raise work_mem"
            relation = None
        else:
            message += f", most from {relation}" if relation else ""
            message += ": a cold cache, a bloated table or a worse access path?"
        yield Insight(kind="more_io", message=message, relation=relation)
