"""twinkly.compare.rows: two lists of raw DataRow payloads, compared as the SQL orders them."""

from __future__ import annotations

import random
import time

from twisted.trial.unittest import SynchronousTestCase

from twinkly.compare.rows import (
    LIMIT_BOUNDARY_TIES,
    LIMIT_WITHOUT_ORDER,
    UNORDERED,
    Comparison,
    Ordering,
    compare_columns,
    compare_rows,
)
from twinkly.compare.values import NormalizationRules
from twinkly.wire.backend import Column, DataRow, RowDescription

INT4, TEXT, FLOAT8, NUMERIC, BYTEA, INT8 = 23, 25, 701, 1700, 17, 20
COLUMNS = (Column("id", type_oid=INT4), Column("score", type_oid=FLOAT8), Column("name"))
DESCRIPTION = RowDescription(COLUMNS).payload()
BY_SCORE = Ordering(ordered=True, order_columns=(1,), limited=False)
BY_SCORE_LIMITED = Ordering(ordered=True, order_columns=(1,), limited=True)
BY_UNKNOWN = Ordering(ordered=True, order_columns=None, limited=False)
LIMITED = Ordering(ordered=False, order_columns=None, limited=True)


def row(*values: str | bytes | None) -> bytes:
    return DataRow(tuple(v.encode() if isinstance(v, str) else v for v in values)).payload()


def compare(truth: list[bytes], target: list[bytes], ordering: Ordering = UNORDERED,
            **kwargs: object) -> Comparison:  # fmt: skip
    return compare_rows(DESCRIPTION, truth, DESCRIPTION, target, ordering, **kwargs)


ROWS = [row("1", "0.5", "a"), row("2", "1.5", "b"), row("3", "1.5", "c"), row("4", "9", "d")]


class MultisetTests(SynchronousTestCase):
    def test_same_rows_in_another_order(self) -> None:
        result = compare(ROWS, ROWS[::-1])
        self.assertEqual(result, Comparison(True, None, (), 0))

    def test_a_changed_row_is_found(self) -> None:
        target = [*ROWS[:3], row("4", "9", "D")][::-1]
        result = compare(ROWS, target)
        self.assertFalse(result.equal)
        self.assertIsNone(result.nondeterministic)
        self.assertEqual(result.differing_rows, 1)
        (difference,) = result.differences
        self.assertEqual(difference.kind, "value")
        self.assertIsNone(difference.position)
        self.assertEqual(difference.truth, ("4", "9", "d"))
        self.assertEqual(difference.target, ("4", "9", "D"))
        self.assertEqual(difference.columns, ("name",))

    def test_duplicates_are_counted(self) -> None:
        a, b = ROWS[0], ROWS[1]
        result = compare([a, a, b], [a, b, b])
        self.assertFalse(result.equal)
        self.assertEqual(
            [(d.kind, d.truth or d.target) for d in result.differences],
            [("missing_on_target", ("1", "0.5", "a")), ("extra_on_target", ("2", "1.5", "b"))],
        )
        twice = compare([a, a], [a])
        self.assertFalse(twice.equal)
        self.assertEqual([d.kind for d in twice.differences], ["missing_on_target"])
        self.assertEqual(twice.differences[0].truth, ("1", "0.5", "a"))
        self.assertEqual([d.kind for d in compare([a], [a, a]).differences], ["extra_on_target"])

    def test_equal_values_in_other_text(self) -> None:
        # float text of PostgreSQL 11 vs 12+, and numeric scale, in a different row order
        columns = (Column("n", type_oid=NUMERIC), Column("f", type_oid=FLOAT8))
        truth = [row("1.5", "0.1"), row("2", "0.3"), row("3.25", "NaN")]
        target = [
            row("3.250", "NaN"),
            row("1.50", "0.10000000000000001"),
            row("2.0", "0.30000000000000004"),
        ]
        self.assertTrue(compare_rows(columns, truth, columns, target, UNORDERED).equal)
        exact = NormalizationRules(float_tolerance=0, numeric_scale=False)
        result = compare_rows(columns, truth, columns, target, UNORDERED, exact)
        self.assertFalse(result.equal)
        self.assertEqual(result.differing_rows, 6)  # 3 missing, 3 extra

    def test_a_float_straddling_the_rounding_grid_still_matches(self) -> None:
        # 2e-10 apart (within 1e-9) but on both sides of a boundary of the rounded keys
        columns = (Column("f", type_oid=FLOAT8),)
        truth = [row("5"), row("1.0000000499")]
        self.assertTrue(
            compare_rows(columns, truth, columns, [row("1.0000000501"), row("5")]).equal
        )
        result = compare_rows(columns, truth, columns, [row("1.0000001501"), row("5")])
        self.assertEqual(result.differing_rows, 2)  # 1e-7 off: a real difference

    def test_floats_straddling_both_rounding_grids_still_match(self) -> None:
        # One column straddles a boundary of the nearest grid, the other one of the
        # shifted grid: no rounded key brings the rows together, the tolerance does.
        columns = (Column("f", type_oid=FLOAT8), Column("g", type_oid=FLOAT8))
        low, high, below, above = "1.0000000499", "1.0000000501", "1.9999999994", "1.9999999996"
        truth = [row(low, "7"), row("2", below), row(low, below)]
        target = [row(high, above), row(high, "7"), row("2", above)]
        self.assertTrue(compare_rows(columns, truth, columns, target, UNORDERED).equal)
        target[0] = row("1.0000001501", above)  # 1e-7 off: a real difference
        result = compare_rows(columns, truth, columns, target, UNORDERED)
        self.assertEqual(result.differing_rows, 2)  # one missing, one extra

    def test_null_is_not_an_empty_string(self) -> None:
        result = compare([row("1", "1", None)], [row("1", "1", "")])
        self.assertFalse(result.equal)
        self.assertEqual(result.differences[0].truth, ("1", "1", None))
        self.assertEqual(result.differences[0].target, ("1", "1", ""))
        self.assertEqual(result.differences[0].columns, ("name",))

    def test_bytes_are_shown_as_hex(self) -> None:
        columns = (Column("b", type_oid=BYTEA, format=1), Column("t"))
        truth, target = [row(b"\x00\xff", b"\xff")], [row(b"\x00\xff", "x")]
        result = compare_rows(columns, truth, columns, target)
        self.assertEqual(result.differences[0].truth, ("\\x00ff", "\\xff"))  # not UTF-8
        self.assertEqual(result.differences[0].target, ("\\x00ff", "x"))
        self.assertEqual(result.differences[0].columns, ("t",))

    def test_long_values_are_cut_in_reports(self) -> None:
        result = compare([row("1", "1", "x" * 100_000)], [row("1", "1", "y")])
        shown = result.differences[0].truth[2]
        self.assertLess(len(shown), 300)
        self.assertIn("100000 bytes", shown)

    def test_malformed_rows_do_not_raise(self) -> None:
        good = row("1", "1", "a")
        result = compare([good, good[:-1]], [good, good[:-1]])
        self.assertTrue(result.equal)
        result = compare([good[:-1]], [good[:-2]])
        self.assertFalse(result.equal)

    def test_results_of_different_width(self) -> None:
        narrow = (Column("id", type_oid=INT4),)
        result = compare_rows(COLUMNS, ROWS, narrow, [row("1"), row("2"), row("3"), row("4")])
        self.assertFalse(result.equal)
        self.assertEqual(result.differing_rows, 4)


class OrderedTests(SynchronousTestCase):
    def test_ties_in_another_order_are_equal(self) -> None:
        target = [ROWS[0], ROWS[2], ROWS[1], ROWS[3]]  # 2 and 3 tie on score 1.5
        self.assertTrue(compare(ROWS, target, BY_SCORE).equal)
        # ... but not when the sort key is the whole row
        result = compare(ROWS, target, BY_UNKNOWN)
        self.assertFalse(result.equal)
        self.assertEqual([d.kind for d in result.differences], ["order"])

    def test_ties_with_equal_values_in_other_text(self) -> None:
        target = [row("1", "0.50", "a"), ROWS[2], row("2", "1.50", "b"), ROWS[3]]
        self.assertTrue(compare(ROWS, target, BY_SCORE).equal)

    def test_a_row_out_of_place_across_groups(self) -> None:
        target = [ROWS[0], ROWS[3], ROWS[1], ROWS[2]]
        result = compare(ROWS, target, BY_SCORE)
        self.assertFalse(result.equal)
        self.assertIsNone(result.nondeterministic)
        self.assertEqual(result.differing_rows, 1)
        (difference,) = result.differences
        self.assertEqual(difference.kind, "order")
        self.assertEqual(difference.position, 1)
        self.assertEqual(difference.target, ("4", "9", "d"))
        self.assertEqual(difference.truth, ("4", "9", "d"))

    def test_reversed_result(self) -> None:
        result = compare(ROWS, ROWS[::-1], BY_SCORE)
        self.assertEqual({d.kind for d in result.differences}, {"order"})
        self.assertEqual(result.differing_rows, 2)  # the ties stay together: 2 rows moved

    def test_plain_sequence_when_keys_are_unknown(self) -> None:
        self.assertTrue(compare(ROWS, list(ROWS), BY_UNKNOWN).equal)
        target = [ROWS[0], ROWS[1], row("3", "1.5", "X"), ROWS[3]]
        result = compare(ROWS, target, BY_UNKNOWN)
        self.assertEqual([(d.kind, d.position) for d in result.differences], [("value", 2)])
        result = compare(ROWS, ROWS[1:], BY_UNKNOWN)
        self.assertEqual(
            [(d.kind, d.position) for d in result.differences], [("missing_on_target", 0)]
        )

    def test_differences_are_listed_by_position(self) -> None:
        target = [ROWS[0], row("2", "1.5", "B"), ROWS[2], ROWS[3], row("5", "10", "e")]
        result = compare(ROWS, target, BY_SCORE)
        kinds = [(d.kind, d.position) for d in result.differences]
        self.assertEqual(kinds, [("value", 1), ("extra_on_target", 4)])

    def test_limit_boundary_ties_are_nondeterministic(self) -> None:
        # ORDER BY score LIMIT 3: rows 2 and 3 tie at the boundary, the servers kept one each
        truth = [ROWS[0], ROWS[1], ROWS[2]]
        target = [ROWS[0], ROWS[2], row("7", "1.5", "g")]
        result = compare(truth, target, BY_SCORE_LIMITED)
        self.assertFalse(result.equal)
        self.assertEqual(result.nondeterministic, LIMIT_BOUNDARY_TIES)
        self.assertEqual(result.differing_rows, 2)
        self.assertEqual(
            sorted(d.kind for d in result.differences), ["extra_on_target", "missing_on_target"]
        )
        # without LIMIT the same difference is real
        self.assertIsNone(compare(truth, target, BY_SCORE).nondeterministic)

    def test_differences_before_the_last_group_are_real(self) -> None:
        truth = [ROWS[0], ROWS[1], ROWS[2]]
        target = [row("8", "0.5", "h"), ROWS[1], ROWS[2]]  # first group differs
        result = compare(truth, target, BY_SCORE_LIMITED)
        self.assertFalse(result.equal)
        self.assertIsNone(result.nondeterministic)
        # a last group on another key is no tie either
        target = [ROWS[0], ROWS[1], row("9", "1.6", "i")]
        self.assertIsNone(compare(truth, target, BY_SCORE_LIMITED).nondeterministic)
        # nor is a result of another size
        self.assertIsNone(compare(truth, truth[:2], BY_SCORE_LIMITED).nondeterministic)

    def test_limit_without_order_by_is_nondeterministic(self) -> None:
        result = compare(ROWS[:2], [ROWS[2], ROWS[0]], LIMITED)
        self.assertFalse(result.equal)
        self.assertEqual(result.nondeterministic, LIMIT_WITHOUT_ORDER)
        self.assertEqual(
            [(d.kind, d.truth or d.target) for d in result.differences],
            [("missing_on_target", ("2", "1.5", "b")), ("extra_on_target", ("3", "1.5", "c"))],
        )
        self.assertIsNone(compare(ROWS[:2], [ROWS[2]], LIMITED).nondeterministic)  # counts differ
        self.assertIsNone(compare(ROWS[:2], [ROWS[2], ROWS[0]]).nondeterministic)  # no LIMIT
        self.assertTrue(compare(ROWS[:2], ROWS[1::-1], LIMITED).equal)

    def test_sort_column_beyond_the_description(self) -> None:
        ordering = Ordering(ordered=True, order_columns=(7,), limited=False)
        self.assertTrue(compare(ROWS, list(ROWS), ordering).equal)
        self.assertFalse(compare(ROWS, [ROWS[1], ROWS[0], *ROWS[2:]], ordering).equal)


class BoundTests(SynchronousTestCase):
    def test_max_differences(self) -> None:
        truth = [row(str(i), "1", "a") for i in range(50)]
        target = [row(str(i), "1", "b") for i in range(50)]
        result = compare(truth, target, max_differences=5)
        self.assertEqual(len(result.differences), 5)
        self.assertEqual(result.differing_rows, 50)
        self.assertEqual(compare(truth, target, max_differences=0).differences, ())
        self.assertEqual(compare(truth, target, max_differences=0).differing_rows, 50)

    def test_all_different_floats_stay_linear(self) -> None:
        columns = (Column("f", type_oid=FLOAT8),)
        truth = [row(repr(i + 0.5)) for i in range(10_000)]
        target = [row(repr(i + 0.25)) for i in range(10_000)]
        started = time.perf_counter()
        result = compare_rows(columns, truth, columns, target, UNORDERED)
        elapsed = time.perf_counter() - started
        self.assertEqual(result.differing_rows, 20_000)
        self.assertLess(elapsed, 10.0)  # quadratic matching would take minutes


class ColumnTests(SynchronousTestCase):
    def test_equal_descriptions(self) -> None:
        self.assertEqual(compare_columns(COLUMNS, DESCRIPTION), [])
        self.assertEqual(compare_columns(None, ()), [])

    def test_names_types_formats_and_count(self) -> None:
        target = (
            Column("id", type_oid=INT8),
            Column("points", type_oid=FLOAT8),
            Column("name", format=1),
            Column("extra"),
        )
        found = compare_columns(DESCRIPTION, RowDescription(target).payload())
        self.assertEqual(
            found,
            [
                "column count: 3 on truth, 4 on target",
                "column 1 (id): type int4 (23) on truth, int8 (20) on target",
                "column 2: named 'score' on truth, 'points' on target",
                "column 3 (name): text format on truth, binary on target",
                "columns only on target: 'extra'",
            ],
        )
        self.assertEqual(
            compare_columns(COLUMNS, COLUMNS[:2]),
            ["column count: 3 on truth, 2 on target", "columns only on truth: 'name'"],
        )


class TimingTests(SynchronousTestCase):
    """10,000 rows of 5 columns: the figures are printed for the record."""

    COLUMNS = (
        Column("id", type_oid=INT8),
        Column("name"),
        Column("price", type_oid=NUMERIC),
        Column("ratio", type_oid=FLOAT8),
        Column("at", type_oid=1184),
    )

    def rows(self, scale: str = "", zone: str = "+00") -> list[bytes]:
        return [
            row(str(i), f"name {i}", f"{i}.5{scale}", repr(i / 7), f"2024-01-01 12:00:00{zone}")
            for i in range(10_000)
        ]

    def timed(
        self, label: str, truth: list[bytes], target: list[bytes], ordering: Ordering
    ) -> None:
        started, cpu = time.perf_counter(), time.process_time()
        result = compare_rows(self.COLUMNS, truth, self.COLUMNS, target, ordering)
        elapsed = (time.perf_counter() - started) * 1000
        cpu = (time.process_time() - cpu) * 1000
        print(
            f"\ncompare_rows, 10,000 rows x 5 columns, {label}: {elapsed:.1f} ms ({cpu:.1f} ms CPU)"
        )
        self.assertTrue(result.equal, result.differences[:3])
        self.assertLess(elapsed, 20_000)

    def test_equal_rows(self) -> None:
        truth = self.rows()
        shuffled = list(truth)
        random.Random(7).shuffle(shuffled)
        self.timed("identical bytes, ordered", truth, list(truth), BY_UNKNOWN)
        self.timed("identical bytes, shuffled, unordered", truth, shuffled, UNORDERED)

    def test_equal_values_in_other_text(self) -> None:
        truth = self.rows()
        target = self.rows(scale="0", zone="+01")  # every row differs in bytes
        target = [r.replace(b"12:00:00+01", b"13:00:00+01") for r in target]
        shuffled = list(target)
        random.Random(7).shuffle(shuffled)
        self.timed("every row normalised, unordered", truth, shuffled, UNORDERED)
        ordering = Ordering(ordered=True, order_columns=(0,), limited=False)
        self.timed("every row normalised, ordered", truth, target, ordering)
