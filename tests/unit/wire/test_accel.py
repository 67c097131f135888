"""The hot path's accelerated functions: the same cases on the C and the pure-Python
implementation (the C class is skipped when the extension was not built)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from struct import pack

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twinkly.wire import accel

REPO = Path(__file__).resolve().parents[3]
LITERALS = re.compile(r"'[^']*'|\b\d+\b")
LIMIT = 1 << 20


def message(type_char: str, payload: bytes) -> bytes:
    return type_char.encode() + pack("!I", len(payload) + 4) + payload


ROWS = [b"\x00\x01\x00\x00\x00\x01" + bytes([i]) for i in range(7)] + [b""]
STREAM = (
    message("T", b"\x00\x01a\x00")
    + b"".join(message("D", row) for row in ROWS)
    + message("C", b"SELECT 8\x00")
    + message("Z", b"I")
)


def reference_digest(rows: list[bytes]) -> int:
    """What the tracker always computed: the sum of hash() of each row's bytes."""
    return sum(hash(row) for row in rows) & ((1 << 64) - 1)


class AccelCases:
    impl: object

    def test_split_whole_and_partial_messages(self) -> None:
        messages, pos, need = self.impl.split(STREAM, LIMIT)
        self.assertEqual([t for t, _ in messages], [ord(c) for c in "T" + "D" * 8 + "CZ"])
        self.assertEqual(messages[-2], (ord("C"), b"SELECT 8\x00"))
        self.assertEqual((pos, need), (len(STREAM), 5))
        for cut in range(len(STREAM)):
            messages, pos, need = self.impl.split(STREAM[:cut], LIMIT)
            self.assertEqual(b"".join(message(chr(t), p) for t, p in messages), STREAM[:pos])
            rest = cut - pos
            if rest < 5:
                self.assertEqual(need, 5)
            else:
                self.assertGreater(need, rest)

    def test_split_reports_an_invalid_length(self) -> None:
        data = message("Q", b"x\x00") + b"Q\x00\x00\x00\x02zz"
        messages, pos, need = self.impl.split(data, LIMIT)
        self.assertEqual((len(messages), pos, need), (1, 7, -1))
        self.assertEqual(self.impl.split(message("Q", b"x" * 20), 10), ([], 0, -1))

    def test_scan_rows_counts_and_digests_a_run(self) -> None:
        start = len(message("T", b"\x00\x01a\x00"))
        pos, rows, digest, room = self.impl.scan_rows(STREAM, start, LIMIT, None, -1)
        self.assertEqual((rows, digest, room), (8, reference_digest(ROWS), -1))
        self.assertEqual(STREAM[pos : pos + 1], b"C")

    def test_scan_rows_stops_at_other_messages_and_incomplete_rows(self) -> None:
        self.assertEqual(self.impl.scan_rows(STREAM, 0, LIMIT, None, -1), (0, 0, 0, -1))
        start = len(message("T", b"\x00\x01a\x00"))
        cut = STREAM[: start + 3 * len(message("D", ROWS[0])) + 4]
        pos, rows, digest, _ = self.impl.scan_rows(cut, start, LIMIT, None, -1)
        self.assertEqual((rows, digest), (3, reference_digest(ROWS[:3])))
        self.assertEqual(pos, start + 3 * len(message("D", ROWS[0])))
        bad = message("D", b"ab") + b"D\x00\x00\x00\x01"
        self.assertEqual(self.impl.scan_rows(bad, 0, LIMIT, None, -1)[:2], (7, 1))

    def test_scan_rows_keeps_a_sample_until_room_runs_out(self) -> None:
        data = b"".join(message("d", row) for row in ROWS)
        sample: list[bytes] = []
        _, rows, _, room = self.impl.scan_rows(data, 0, LIMIT, sample, 3)
        self.assertEqual((rows, room, sample), (8, -1, ROWS[:3]))
        sample = []
        self.assertEqual(self.impl.scan_rows(data, 0, LIMIT, sample, 8)[3], 0)
        self.assertEqual(sample, ROWS)

    def test_digest_is_order_independent(self) -> None:
        forward = b"".join(message("D", row) for row in ROWS)
        backward = b"".join(message("D", row) for row in reversed(ROWS))
        self.assertEqual(
            self.impl.scan_rows(forward, 0, LIMIT, None, -1)[2],
            self.impl.scan_rows(backward, 0, LIMIT, None, -1)[2],
        )

    def test_bucket_of(self) -> None:
        scale = 8 / math.log(2)
        for seconds in (0.0, -1.0, 1e-7, 1e-6, 1.0000001e-6, 2.5e-6, 0.0123, 1.0, 3600.0):
            micros = seconds / 1e-6
            expected = int(math.log(micros) * scale) if micros > 1.0 else 0
            self.assertEqual(self.impl.bucket_of(seconds), expected, seconds)

    def test_blank_literals_is_the_regular_expression(self) -> None:
        pattern = re.compile(r"'[^']*'|\b\d+\b")
        for sql in (
            "select abalance from pgbench_accounts where aid = 34431;",
            "select * from t1 where a = 12 and b = 'x''y' and c = 3.5e10",
            "x12 12x 12_ _12 a.12 (7)",
            "'unclosed 12 and 3",
            "",
            "''",
            "12",
            "'",
            "é 12 'ü' 3 ٣٤ x٣",
            "select '日本' , 42",
        ):
            self.assertEqual(self.impl.blank_literals(sql), pattern.sub("0", sql), sql)

    # One test on two implementations (the mixin) is what differing_executors warns of.
    @settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.differing_executors]
    )
    @given(st.text(alphabet="019a_Z' .,()-é٣", max_size=40))
    def test_blank_literals_matches_the_expression_on_generated_text(self, sql: str) -> None:
        # ASCII texts take C's byte loop, the others its general one.
        self.assertEqual(self.impl.blank_literals(sql), LITERALS.sub("0", sql))
        self.assertEqual(self.impl.blank_literals(sql.encode("ascii", "ignore").decode()),
                         LITERALS.sub("0", sql.encode("ascii", "ignore").decode()))  # fmt: skip

    def test_statement_shape_keeps_texts_where_blanking_is_unsafe(self) -> None:
        pattern = re.compile(r"'[^']*'|\b\d+\b")
        for sql in (
            "select abalance from pgbench_accounts where aid = 34431;",
            'select "12" from t where a = 1',
            "select $1, 2",
            "select 'a\\' , 3",
            "select 1 -- 2",
            "select 1 /* 2 */",
            "select 1 - -2 / *3",
            "select '-' || '-', 4",
            "",
            "é 12 'ü'",
        ):
            unsafe = any(mark in sql for mark in ('"', "$", "\\", "--", "/*"))
            expected = sql if unsafe else pattern.sub("0", sql)
            self.assertEqual(self.impl.statement_shape(sql), expected, sql)

    def test_histogram_counts_sums_and_quantiles(self) -> None:
        histogram = self.impl.Histogram()
        self.assertIsNone(histogram.quantile(0.5))
        self.assertEqual((histogram.count, histogram.total, histogram.max), (0, 0.0, 0.0))
        self.assertEqual(histogram.buckets, {})
        timings = [0.0, 5e-7, 3e-6, 0.0002, 0.00021, 0.0031, 0.0002, 1.5, 0.0002]
        expected: dict[int, int] = {}
        for seconds in timings:
            histogram.record(seconds)
            index = accel.PYTHON.bucket_of(seconds)
            expected[index] = expected.get(index, 0) + 1
        self.assertEqual(histogram.buckets, expected)
        self.assertEqual(histogram.count, len(timings))
        self.assertEqual(histogram.total, sum(timings))
        self.assertEqual(histogram.max, 1.5)
        scale = 8 / math.log(2)
        for q in (0.0, 0.1, 0.5, 0.7, 0.95, 0.99):
            rank, seen = q * len(timings), 0
            for index in sorted(expected):
                seen += expected[index]
                if seen >= rank:
                    break
            middle = min(math.exp((index + 0.5) / scale) * 1e-6, 1.5)
            self.assertEqual(histogram.quantile(q), middle, q)
        self.assertEqual(histogram.quantile(1.0), 1.5)

    def test_histogram_grows_both_ways_and_refuses_impossible_buckets(self) -> None:
        histogram = self.impl.Histogram()
        for index in (50, 40, 60, 40, 0):
            histogram.add(index, 0.001)
        self.assertEqual(histogram.buckets, {0: 1, 40: 2, 50: 1, 60: 1})
        for index in (-1, accel.MAX_BUCKETS):
            self.assertRaises(ValueError, histogram.add, index, 0.001)
        self.assertEqual(histogram.count, 5)

    def test_record_pair_fills_four_histograms(self) -> None:
        four = [self.impl.Histogram() for _ in range(4)]
        self.impl.record_pair(*four, 0.0002, 0.0031)
        self.impl.record_pair(*four, 0.0002, 0.0002)
        truth = {accel.PYTHON.bucket_of(0.0002): 2}
        target = {accel.PYTHON.bucket_of(0.0031): 1, accel.PYTHON.bucket_of(0.0002): 1}
        self.assertEqual([h.buckets for h in four], [truth, target, truth, target])
        self.assertEqual(four[1].total, 0.0031 + 0.0002)
        self.assertEqual(four[3].max, 0.0031)


class PythonAccelTests(AccelCases, SynchronousTestCase):
    impl = accel.PYTHON


class CAccelTests(AccelCases, SynchronousTestCase):
    impl = accel.C
    if accel.C is None:
        skip = "the C extension twinkly.wire._accel was not built"


class SelectionTests(SynchronousTestCase):
    def implementation(self, prelude: str = "", **env: str) -> str:
        environment = {k: v for k, v in os.environ.items() if k != "TWINKLY_PURE_PYTHON"}
        environment.update(env, PYTHONPATH=str(REPO))
        code = (
            prelude + "from twinkly.wire import accel; print(accel.IMPLEMENTATION, accel.reason())"
        )
        return subprocess.run(
            [sys.executable, "-c", code], env=environment, capture_output=True, text=True,
            check=True, timeout=60,
        ).stdout.strip()  # fmt: skip

    def test_the_environment_variable_forces_pure_python(self) -> None:
        self.assertEqual(
            self.implementation(TWINKLY_PURE_PYTHON="1"),
            "python  (TWINKLY_PURE_PYTHON is set)",
        )

    def test_without_the_extension_pure_python_serves(self) -> None:
        """An install without a compiler has no twinkly/wire/_accel*.so: simulated by
        making its import fail."""
        block = (
            "import sys\n"
            "class NoAccel:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'twinkly.wire._accel':\n"
            "            raise ImportError('not built')\n"
            "sys.meta_path.insert(0, NoAccel())\n"
        )
        self.assertEqual(self.implementation(block), "python  (the C extension was not built)")

    def test_the_c_extension_is_chosen_when_built(self) -> None:
        if accel.C is None:
            raise self.skipTest("the C extension was not built")
        self.assertEqual(self.implementation(), "c")

    def test_the_module_functions_are_one_implementation(self) -> None:
        chosen = accel.C if accel.IMPLEMENTATION == "c" else accel.PYTHON
        self.assertIs(accel.split, chosen.split)
        self.assertIs(accel.scan_rows, chosen.scan_rows)
        self.assertIs(accel.statement_shape, chosen.statement_shape)
        self.assertIs(accel.Histogram, chosen.Histogram)
        self.assertIs(accel.record_pair, chosen.record_pair)
