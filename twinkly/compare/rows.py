"""Comparing two complete, bounded lists of rows, with the ordering the SQL promises.

Without ORDER BY the rows are a multiset: PostgreSQL and YugabyteDB may return them in
any order. With ORDER BY they are a sequence of tie-groups (rows equal on the sort keys),
each group a multiset. LIMIT without a total order is reported as non-deterministic, not
as a mismatch. Identical bytes match first (the common case costs a hash per row); only
the rows left over are decoded and normalised, and everything is O(n log n) at worst.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import pairwise

from twinkly.compare.values import (
    DEFAULT_RULES,
    TYPE_NAMES,
    NormalizationRules,
    Unparsed,
    decode_columns,
    decode_row,
    float_columns,
    key_of,
    row_normalizer,
)
from twinkly.wire.backend import Column

LIMIT_WITHOUT_ORDER = "LIMIT without ORDER BY: the rows chosen may differ"
LIMIT_BOUNDARY_TIES = "rows tied on the ORDER BY keys at the LIMIT boundary"
MISSING, EXTRA, VALUE, ORDER = "missing_on_target", "extra_on_target", "value", "order"
SHOWN_CHARS = 200  # per value in a report: rows can be large, reports stay small


@dataclass(frozen=True)
class Ordering:
    ordered: bool = False  # the SQL had a top-level ORDER BY
    order_columns: tuple[int, ...] | None = None  # output columns of the sort keys; None: unknown
    limited: bool = False  # LIMIT / FETCH / OFFSET present


UNORDERED = Ordering()


@dataclass(frozen=True)
class RowDifference:
    kind: str  # "missing_on_target" | "extra_on_target" | "value" | "order"
    position: int | None  # ordered results: truth index (missing, value), else target index
    truth: tuple | None  # the row as text (str or None per field; bytes as \x hex)
    target: tuple | None
    columns: tuple[str, ...] = ()  # names of the differing columns, for kind "value"
    positions: tuple[int, ...] = ()  # ... and their 0-based positions in the rows


@dataclass(frozen=True)
class Comparison:
    equal: bool
    nondeterministic: str | None = None  # why the SQL does not fix the answer (equal is False)
    differences: tuple[RowDifference, ...] = ()  # at most max_differences
    differing_rows: int = 0  # all of them, listed or not


EQUAL = Comparison(True)
Columns = Sequence[Column] | bytes | None  # decoded, a raw RowDescription payload, or none


def _columns(columns: Columns) -> tuple[Column, ...]:
    if columns is None:
        return ()
    if isinstance(columns, bytes | bytearray | memoryview):
        return decode_columns(bytes(columns))
    return tuple(columns)


class _Side:
    """One backend's rows, decoded and normalised lazily: only the rows that need it."""

    def __init__(
        self,
        columns: tuple[Column, ...],
        rows: list[bytes],
        rules: NormalizationRules,
        ignored: frozenset[int] = frozenset(),
    ):
        self.columns = columns
        self.rows = rows
        self.rules = rules
        self.ignored = ignored
        self.floats = tuple(k for k in float_columns(columns, rules) if k not in ignored)
        self._normalize = row_normalizer(columns, rules)
        # One scalar float per row: the two grids of _match always catch a near pair.
        self.single_float = len(self.floats) <= 1 and all(
            columns[k].type_oid in (700, 701) for k in self.floats
        )
        self._sort_normalize: tuple[tuple[int, ...], Callable[[Sequence], tuple]] | None = None
        self._values: dict[int, tuple] = {}
        self._norm: dict[int, tuple] = {}
        self._malformed: set[int] = set()

    def values(self, i: int) -> tuple:
        values = self._values.get(i)
        if values is None:
            try:
                values = decode_row(self.rows[i])
            except ValueError:
                self._malformed.add(i)
                values = (bytes(self.rows[i]),)
            self._values[i] = values
        return values

    def norm(self, i: int) -> tuple:
        norm = self._norm.get(i)
        if norm is None:
            values = self.values(i)
            norm = (Unparsed(values[0]),) if i in self._malformed else self._normalize(values)
            if self.ignored and i not in self._malformed:
                norm = _ignoring(norm, self.ignored)
            self._norm[i] = norm
        return norm

    def key(self, i: int, shifted: bool = False) -> tuple:
        return key_of(self.norm(i), self.floats, self.rules, shifted)

    def loose_key(self, i: int) -> tuple:
        """The key without the float columns: rows that may match within the tolerance."""
        floats = self.floats
        return tuple(x for k, x in enumerate(self.norm(i)) if k not in floats)

    def sort_key(self, i: int, columns: tuple[int, ...]) -> tuple:
        """The normalised sort-key fields (``==`` applies the float tolerance)."""
        norm = self._norm.get(i)
        if norm is not None:  # normalised already (the row matched late, or not at all)
            width = len(norm)
            return tuple(norm[c] if c < width else None for c in columns)
        values = self.values(i)
        if i in self._malformed:
            return (Unparsed(values[0]),)
        if self._sort_normalize is None or self._sort_normalize[0] != columns:
            described = [self.columns[c] if c < len(self.columns) else Column("") for c in columns]
            self._sort_normalize = (columns, row_normalizer(described, self.rules))
        width = len(values)
        return self._sort_normalize[1]([values[c] if c < width else None for c in columns])

    def render(self, i: int) -> tuple:
        formats = [c.format for c in self.columns]
        return tuple(
            _show(v, formats[k] if k < len(formats) else 1) for k, v in enumerate(self.values(i))
        )

    def name(self, k: int) -> str:
        return self.columns[k].name if k < len(self.columns) else f"#{k + 1}"


class _Generated:
    """An ignored column's value: equal to any other non-NULL one (NULL stays NULL)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Generated)

    def __hash__(self) -> int:
        return 0x6E6E

    def __repr__(self) -> str:
        return "<generated>"


GENERATED = _Generated()


def _ignoring(norm: tuple, ignored: frozenset[int]) -> tuple:
    return tuple(
        (None if x is None else GENERATED) if k in ignored else x for k, x in enumerate(norm)
    )


def _show(value: bytes | None, fmt: int) -> str | None:
    if value is None:
        return None
    if fmt != 1:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if len(text) <= SHOWN_CHARS:
                return text
            return f"{text[:SHOWN_CHARS]}… ({len(value)} bytes)"
    shown = value[: SHOWN_CHARS // 2].hex()
    return f"\\x{shown}" if len(value) <= SHOWN_CHARS // 2 else f"\\x{shown}… ({len(value)} bytes)"


# --- matching rows as multisets -------------------------------------------------------

Key = Callable[[int], object]


def _pair(
    left_a: list[int],
    left_b: list[int],
    key_a: Key,
    key_b: Key,
    confirm: Callable[[int, int], bool] | None,
    match_b: list[int],
    budget: list[int],
) -> tuple[list[int], list[int]]:
    """Match rows of b to rows of a with the same key (earliest first); ``confirm``, when
    given, must agree too, within a shared budget of tries. Returns what is left."""
    pool: dict[object, list[int]] = {}
    for i in reversed(left_a):  # so that pop() takes the earliest
        pool.setdefault(key_a(i), []).append(i)
    rest_b = []
    for j in left_b:
        candidates = pool.get(key_b(j))
        found = -1
        if candidates:
            if confirm is None:
                found = candidates.pop()
            else:
                for k in range(len(candidates) - 1, max(-1, len(candidates) - 33), -1):
                    if budget[0] <= 0:
                        break
                    budget[0] -= 1
                    if confirm(candidates[k], j):
                        found = candidates.pop(k)
                        break
        if found < 0:
            rest_b.append(j)
        else:
            match_b[j] = found
    return sorted(i for rest in pool.values() for i in rest), rest_b


def _match(a: _Side, b: _Side) -> tuple[list[int], list[int], list[int]]:
    """For each row of b its partner in a (or -1), and the unmatched rows of a and b.

    Passes: identical bytes; equal values at the same position; equal normalised keys
    (floats rounded); when float columns exist, floats rounded on a grid offset by half
    a cell, then (several floats a row) floats ignored with ``==`` (the tolerance)
    deciding, within a budget of tries linear in the leftovers.
    """
    match_b = [-1] * len(b.rows)
    left_a = list(range(len(a.rows)))
    left_a, left_b = _pair(left_a, list(range(len(b.rows))), a.rows.__getitem__,
                           b.rows.__getitem__, None, match_b, [0])  # fmt: skip
    if not left_a or not left_b:
        return match_b, left_a, left_b
    # Same position, equal values: the usual case when the two plans agree.
    unmatched_a = set(left_a)
    for j in left_b:
        if j in unmatched_a and a.norm(j) == b.norm(j):
            match_b[j] = j
            unmatched_a.discard(j)
    left_a = [i for i in left_a if i in unmatched_a]
    left_b = [j for j in left_b if match_b[j] < 0]
    if not left_a or not left_b:
        return match_b, left_a, left_b
    tolerant = bool(a.floats or b.floats)
    passes: list[tuple[Key, Key]] = [(a.key, b.key)]
    if tolerant:
        passes.append((partial(a.key, shifted=True), partial(b.key, shifted=True)))
        if not (a.single_float and b.single_float):
            passes.append((a.loose_key, b.loose_key))
    confirm = (lambda i, j: a.norm(i) == b.norm(j)) if tolerant else None
    budget = [4 * (len(left_a) + len(left_b)) + 1024]
    for key_a, key_b in passes:
        left_a, left_b = _pair(left_a, left_b, key_a, key_b, confirm, match_b, budget)
        if not left_a or not left_b:
            break
    return match_b, left_a, left_b


def _pair_leftovers(
    a: _Side, b: _Side, left_a: list[int], left_b: list[int], ordered: bool
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Unmatched rows that are probably one row changed: at the same position (ordered
    results) or with the same first field. Returns (pairs, missing, extra)."""
    pairs: list[tuple[int, int]] = []
    if ordered:
        at = set(left_b)
        pairs = [(i, i) for i in left_a if i in at]
        paired = {i for i, _ in pairs}
        left_a = [i for i in left_a if i not in paired]
        left_b = [j for j in left_b if j not in paired]
    if left_a and left_b and (len(a.columns) > 1 or len(b.columns) > 1):
        pool: dict[object, list[int]] = {}
        for i in reversed(left_a):
            pool.setdefault(a.key(i)[:1], []).append(i)
        extra = []
        for j in left_b:
            candidates = pool.get(b.key(j)[:1])
            if candidates:
                pairs.append((candidates.pop(), j))
            else:
                extra.append(j)
        return pairs, sorted(i for rest in pool.values() for i in rest), extra
    return pairs, left_a, left_b


# --- ordered results --------------------------------------------------------------------


def _tie_groups(a: _Side, columns: tuple[int, ...] | None, exact: bool) -> list[int]:
    """The tie-group number of each truth row: consecutive rows equal on the sort keys
    (on the whole row when the keys are unknown) share one. ``exact``: runs of identical
    bytes instead, a finer partition that needs no decoding."""
    rows = a.rows
    groups = [0] * len(rows)
    group = 0
    previous: tuple | None = None
    for i in range(len(rows)):
        if exact or columns is None:
            same = i > 0 and (rows[i] == rows[i - 1] or (not exact and a.norm(i) == a.norm(i - 1)))
        else:
            current = a.sort_key(i, columns)
            same = i > 0 and current == previous
            previous = current
        group += i > 0 and not same
        groups[i] = group
    return groups


def _longest_non_decreasing(seq: list[int]) -> set[int]:
    """Indices of one longest non-decreasing subsequence (O(n log n))."""
    tails: list[int] = []
    tail_index: list[int] = []
    parent = [-1] * len(seq)
    for k, x in enumerate(seq):
        p = bisect_right(tails, x)
        if p == len(tails):
            tails.append(x)
            tail_index.append(k)
        else:
            tails[p] = x
            tail_index[p] = k
        parent[k] = tail_index[p - 1] if p else -1
    keep = set()
    k = tail_index[-1] if tail_index else -1
    while k >= 0:
        keep.add(k)
        k = parent[k]
    return keep


def _out_of_place(a: _Side, match_b: list[int], columns: tuple[int, ...] | None) -> list[int]:
    """Target positions of matched rows that break the truth's order of tie-groups: the
    fewest rows whose moving would restore it."""
    positions = [j for j, i in enumerate(match_b) if i >= 0]
    # In order by runs of identical rows means in order by any coarser tie-groups too.
    for exact in (True, False):
        groups = _tie_groups(a, columns, exact)
        seq = [groups[match_b[j]] for j in positions]
        if all(x <= y for x, y in pairwise(seq)):
            return []
    keep = _longest_non_decreasing(seq)
    return [j for k, j in enumerate(positions) if k not in keep]


def _only_boundary_ties(
    a: _Side, b: _Side, left_a: list[int], left_b: list[int], columns: tuple[int, ...]
) -> bool:
    """Every unmatched row ties, on the sort keys, with the last row of its side, and
    both last rows tie: the difference is which tied rows the LIMIT cut off."""
    last = a.sort_key(len(a.rows) - 1, columns)
    if last != b.sort_key(len(b.rows) - 1, columns):
        return False
    return all(a.sort_key(i, columns) == last for i in left_a) and all(
        b.sort_key(j, columns) == last for j in left_b
    )


def _issue_position(issue: tuple[str, int | None, int | None]) -> int:
    """Where an issue sits in an ordered result: a value difference or a missing row at
    its truth row, an extra or moved row at its target row (each has that one)."""
    kind, i, j = issue
    position = i if kind in (VALUE, MISSING) else j
    assert position is not None
    return position


# --- the API ----------------------------------------------------------------------------


def compare_rows(
    columns_truth: Columns,
    rows_truth: list[bytes],
    columns_target: Columns,
    rows_target: list[bytes],
    ordering: Ordering = UNORDERED,
    rules: NormalizationRules = DEFAULT_RULES,
    max_differences: int = 20,
    ignored: frozenset[int] = frozenset(),
) -> Comparison:
    """Compare two results given as raw DataRow payloads (the caller bounds their size).

    ``ignored``: output columns whose values each server generated for itself; any two
    non-NULL values of theirs are equal, so rows are matched on the other columns."""
    if rows_truth == rows_target:
        return EQUAL
    if (
        not ordering.ordered
        and len(rows_truth) == len(rows_target)
        and Counter(rows_truth) == Counter(rows_target)
    ):
        return EQUAL
    a = _Side(_columns(columns_truth), rows_truth, rules, ignored)
    b = _Side(_columns(columns_target), rows_target, rules, ignored)
    match_b, left_a, left_b = _match(a, b)
    sort_columns = ordering.order_columns
    if sort_columns is not None and not all(0 <= c < len(a.columns) for c in sort_columns):
        sort_columns = None  # a sort key the description does not have: use the whole row
    moved = _out_of_place(a, match_b, sort_columns) if ordering.ordered else []
    pairs, missing, extra = _pair_leftovers(a, b, left_a, left_b, ordering.ordered)

    issues: list[tuple[str, int | None, int | None]] = [(VALUE, i, j) for i, j in pairs]
    issues += [(MISSING, i, None) for i in missing]
    issues += [(EXTRA, None, j) for j in extra]
    issues += [(ORDER, match_b[j], j) for j in moved]
    if not issues:
        return EQUAL  # the bytes differed, the values do not
    if ordering.ordered:
        issues.sort(key=_issue_position)

    reason = None
    if ordering.limited and len(rows_truth) == len(rows_target):
        if not ordering.ordered:
            reason = LIMIT_WITHOUT_ORDER
        elif (
            sort_columns is not None
            and not moved
            and _only_boundary_ties(a, b, left_a, left_b, sort_columns)
        ):
            reason = LIMIT_BOUNDARY_TIES

    differences = []
    for kind, i, j in issues[: max(0, max_differences)]:
        position = None
        if ordering.ordered:
            position = i if kind in (VALUE, MISSING) else j
        columns: tuple[str, ...] = ()
        positions: tuple[int, ...] = ()
        if kind == VALUE:
            assert i is not None and j is not None  # a value difference pairs two rows
            na, nb = a.norm(i), b.norm(j)
            width = max(len(na), len(nb))
            positions = tuple(
                k for k in range(width) if k >= len(na) or k >= len(nb) or na[k] != nb[k]
            )
            columns = tuple(a.name(k) for k in positions)
        differences.append(
            RowDifference(
                kind,
                position,
                None if i is None else a.render(i),
                None if j is None else b.render(j),
                columns,
                positions,
            )
        )
    return Comparison(False, reason, tuple(differences), len(issues))


def _type_name(oid: int) -> str:
    return f"{TYPE_NAMES[oid]} ({oid})" if oid in TYPE_NAMES else f"oid {oid}"


def compare_columns(columns_truth: Columns, columns_target: Columns) -> list[str]:
    """How the two row descriptions differ, in words: count, names, types, formats."""
    a, b = _columns(columns_truth), _columns(columns_target)
    found = []
    if len(a) != len(b):
        found.append(f"column count: {len(a)} on truth, {len(b)} on target")
    for k, (ca, cb) in enumerate(zip(a, b, strict=False)):
        label = f"column {k + 1} ({ca.name})"
        if ca.name != cb.name:
            found.append(f"column {k + 1}: named {ca.name!r} on truth, {cb.name!r} on target")
        if ca.type_oid != cb.type_oid:
            found.append(
                f"{label}: type {_type_name(ca.type_oid)} on truth,"
                f" {_type_name(cb.type_oid)} on target"
            )
        if ca.format != cb.format:
            formats = {0: "text", 1: "binary"}
            found.append(
                f"{label}: {formats.get(ca.format, ca.format)} format on truth,"
                f" {formats.get(cb.format, cb.format)} on target"
            )
    for side, longer, shorter in (("truth", a, b), ("target", b, a)):
        if len(longer) > len(shorter):
            names = ", ".join(repr(c.name) for c in longer[len(shorter) :])
            found.append(f"columns only on {side}: {names}")
    return found
