"""twinkly.compare.values: one field, by type OID and format -> a canonical value.

The text inputs are what PostgreSQL 15 and 18 print (captured with psql); binary inputs
are packed as the servers send them (big-endian; timestamps in microseconds and dates in
days since 2000-01-01).
"""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from twinkly.compare.values import (
    DEFAULT_RULES,
    FloatValue,
    NormalizationRules,
    Unparsed,
    decode_columns,
    decode_row,
    normalize,
    normalize_row,
    row_key,
    values_equal,
)
from twinkly.wire.backend import Column, DataRow, RowDescription

BOOL, BYTEA, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 19, 20, 21, 23, 25, 26
JSON, FLOAT4, FLOAT8, BPCHAR, VARCHAR, DATE, TIME = 114, 700, 701, 1042, 1043, 1082, 1083
TIMESTAMP, TIMESTAMPTZ, INTERVAL, NUMERIC, UUID, JSONB = 1114, 1184, 1186, 1700, 2950, 3802
INT4_ARRAY, INT8_ARRAY, FLOAT8_ARRAY, TEXT_ARRAY, NUMERIC_ARRAY = 1007, 1016, 1022, 1009, 1231
TEXT_FORMAT, BINARY = 0, 1
EXACT_FLOATS = NormalizationRules(float_tolerance=0)


def same(a: bytes | None, b: bytes | None, oid: int, fmt: int = TEXT_FORMAT,
         rules: NormalizationRules = DEFAULT_RULES) -> bool:  # fmt: skip
    """Equal, checked both ways round."""
    forward = values_equal(a, b, oid, fmt, rules)
    backward = values_equal(b, a, oid, fmt, rules)
    assert forward == backward, (a, b, oid)
    return forward


class DecodeTests(SynchronousTestCase):
    def test_row_round_trip(self) -> None:
        values = (b"1", None, b"", b"\x00\xff", "é".encode())
        self.assertEqual(decode_row(DataRow(values).payload()), values)
        self.assertEqual(decode_row(DataRow(()).payload()), ())

    def test_row_malformed(self) -> None:
        payload = DataRow((b"abc", b"de")).payload()
        for bad in (payload[:-1], payload + b"x", payload[:3], b""):
            self.assertRaises(ValueError, decode_row, bad)

    def test_columns_round_trip(self) -> None:
        columns = (
            Column("id", 16384, 1, INT4, 4, -1, BINARY),
            Column("naïve", 0, 0, NUMERIC, -1, 655366, TEXT_FORMAT),
        )
        self.assertEqual(decode_columns(RowDescription(columns).payload()), columns)


class FloatTests(SynchronousTestCase):
    def test_float_text_of_two_versions(self) -> None:
        # PostgreSQL 11 with extra_float_digits=3 printed 17 digits; 12+ prints the shortest.
        self.assertTrue(same(b"0.1", b"0.10000000000000001", FLOAT8))
        self.assertTrue(same(b"0.3", b"0.30000000000000004", FLOAT8))  # 15 digits vs 17
        self.assertFalse(same(b"0.1", b"0.10000000000000001", FLOAT8, rules=EXACT_FLOATS))
        self.assertFalse(same(b"0.1", b"0.1000001", FLOAT8))

    def test_tolerance_is_relative(self) -> None:
        self.assertTrue(same(b"1e20", b"1.0000000001e20", FLOAT8))
        self.assertFalse(same(b"1e-20", b"1.1e-20", FLOAT8))
        self.assertFalse(same(b"0", b"1e-300", FLOAT8))
        loose = NormalizationRules(float_tolerance=0.01)
        self.assertTrue(same(b"100", b"100.5", FLOAT8, rules=loose))
        self.assertFalse(same(b"100", b"102", FLOAT8, rules=loose))

    def test_float4_rounds_to_float4(self) -> None:
        self.assertTrue(same(b"3.14159274", b"3.1415927", FLOAT4))
        self.assertFalse(same(b"3.14159", b"3.1415927", FLOAT4))

    def test_nan_and_infinity(self) -> None:
        for oid in (FLOAT4, FLOAT8):
            self.assertTrue(same(b"NaN", b"NaN", oid))
            self.assertTrue(same(b"Infinity", b"Infinity", oid))
            self.assertFalse(same(b"Infinity", b"-Infinity", oid))
            self.assertFalse(same(b"NaN", b"0", oid))
        self.assertFalse(same(b"Infinity", b"1.7976931348623157e308", FLOAT8))
        self.assertTrue(same(b"-0", b"0", FLOAT8))

    def test_binary_floats(self) -> None:
        a, b = struct.pack(">d", 0.1), struct.pack(">d", 0.1 + 2.8e-17)  # one ulp apart
        self.assertNotEqual(a, b)
        self.assertTrue(same(a, b, FLOAT8, BINARY))
        self.assertFalse(same(a, b, FLOAT8, BINARY, EXACT_FLOATS))
        self.assertFalse(same(a, struct.pack(">d", 0.2), FLOAT8, BINARY))
        nan = struct.pack(">d", float("nan"))
        self.assertTrue(same(nan, nan, FLOAT8, BINARY))
        self.assertTrue(same(struct.pack(">f", 1.5), struct.pack(">f", 1.5), FLOAT4, BINARY))
        self.assertFalse(same(struct.pack(">f", 1.5), struct.pack(">f", 1.25), FLOAT4, BINARY))
        self.assertEqual(normalize(a, FLOAT8, BINARY, DEFAULT_RULES), normalize(b"0.1", FLOAT8, 0))

    def test_float_value_hash_is_a_bucket(self) -> None:
        a, b = FloatValue(0.1, 1e-9), FloatValue(0.10000000000000002, 1e-9)
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        self.assertNotEqual(a, 0.1)  # only floats of a float column compare


class NumericTests(SynchronousTestCase):
    def test_scale(self) -> None:
        self.assertTrue(same(b"1.5", b"1.50", NUMERIC))
        self.assertTrue(same(b"0", b"0.000", NUMERIC))
        self.assertFalse(
            same(b"1.5", b"1.50", NUMERIC, rules=NormalizationRules(numeric_scale=False))
        )
        self.assertFalse(same(b"1.5", b"1.51", NUMERIC))

    def test_big_values_are_exact(self) -> None:
        big = b"123456789012345678901234567890.123456789"
        self.assertTrue(same(big, big + b"000", NUMERIC))
        self.assertFalse(same(big, big[:-1] + b"8", NUMERIC))

    def test_nan_and_infinity(self) -> None:
        self.assertTrue(same(b"NaN", b"NaN", NUMERIC))
        self.assertFalse(same(b"NaN", b"0", NUMERIC))
        self.assertTrue(same(b"Infinity", b"Infinity", NUMERIC))
        self.assertFalse(same(b"Infinity", b"-Infinity", NUMERIC))
        self.assertEqual(hash(normalize(b"NaN", NUMERIC, 0)), hash(normalize(b"NaN", NUMERIC, 0)))


class TimeTests(SynchronousTestCase):
    def test_timestamptz_in_two_zones(self) -> None:
        self.assertTrue(same(b"2024-01-01 12:00:00+00", b"2024-01-01 13:00:00+01", TIMESTAMPTZ))
        self.assertTrue(same(b"2024-01-01 12:00:00+00", b"2024-01-01 17:30:00+05:30", TIMESTAMPTZ))
        self.assertFalse(same(b"2024-01-01 12:00:00+00", b"2024-01-01 13:00:00+00", TIMESTAMPTZ))
        self.assertFalse(
            same(b"2024-01-01 12:00:00+00", b"2024-01-01 12:00:00.000001+00", TIMESTAMPTZ)
        )
        exact = NormalizationRules(timestamptz_as_instant=False)
        self.assertFalse(
            same(b"2024-01-01 12:00:00+00", b"2024-01-01 13:00:00+01", TIMESTAMPTZ, rules=exact)
        )

    def test_timestamptz_in_other_datestyles(self) -> None:
        iso = b"2024-01-01 12:00:00.25+00"
        self.assertTrue(same(iso, b"Mon 01 Jan 15:00:00.25 2024 +03", TIMESTAMPTZ))  # Postgres, DMY
        self.assertTrue(same(iso, b"Mon Jan 01 12:00:00.25 2024 UTC", TIMESTAMPTZ))  # Postgres, MDY
        self.assertTrue(same(iso, b"01.01.2024 15:00:00.25 +03", TIMESTAMPTZ))  # German
        self.assertTrue(same(iso, b"01.01.2024 07:00:00.25 -05", TIMESTAMPTZ))
        self.assertFalse(same(iso, b"01.01.2024 07:00:00.25 +05", TIMESTAMPTZ))
        self.assertFalse(same(iso, b"Mon Jan 01 13:00:00.25 2024 UTC", TIMESTAMPTZ))
        # An ambiguous zone abbreviation is compared as text: equal only to itself.
        est = b"Mon Jan 01 07:00:00.25 2024 EST"
        self.assertIsInstance(normalize(est, TIMESTAMPTZ, 0), Unparsed)
        self.assertTrue(same(est, est, TIMESTAMPTZ))

    def test_timestamptz_before_christ_and_infinite(self) -> None:
        self.assertTrue(
            same(b"0044-03-15 17:53:28+05:53:28 BC", b"0044-03-15 12:00:00+00 BC", TIMESTAMPTZ)
        )
        self.assertFalse(same(b"0044-03-15 12:00:00+00 BC", b"0044-03-15 12:00:00+00", TIMESTAMPTZ))
        self.assertFalse(same(b"infinity", b"-infinity", TIMESTAMPTZ))

    def test_text_and_binary_timestamps_agree(self) -> None:
        micros = 757_425_600_000_000  # 2024-01-01 12:00 UTC since 2000-01-01
        binary = struct.pack(">q", micros)
        self.assertEqual(normalize(binary, TIMESTAMPTZ, BINARY), micros)
        self.assertEqual(normalize(b"2024-01-01 13:00:00+01", TIMESTAMPTZ, 0), micros)
        self.assertEqual(normalize(b"2024-01-01 12:00:00", TIMESTAMP, 0), micros)
        self.assertEqual(normalize(b"infinity", TIMESTAMP, 0), (1 << 63) - 1)
        self.assertTrue(same(binary, binary, TIMESTAMP, BINARY))
        self.assertFalse(same(binary, struct.pack(">q", micros + 1), TIMESTAMPTZ, BINARY))

    def test_timestamp_without_zone_takes_no_offset(self) -> None:
        self.assertIsInstance(normalize(b"2024-01-01 12:00:00+01", TIMESTAMP, 0), Unparsed)
        self.assertIsInstance(normalize(b"2024-01-01 12:00:00", TIMESTAMPTZ, 0), Unparsed)

    def test_dates(self) -> None:
        self.assertEqual(normalize(b"2000-01-01", DATE, 0), 0)
        self.assertEqual(normalize(b"2024-03-01", DATE, 0), 8826)
        self.assertEqual(normalize(struct.pack(">i", 8826), DATE, BINARY), 8826)
        self.assertEqual(normalize(b"1999-12-31", DATE, 0), -1)
        self.assertEqual(
            normalize(b"0001-12-31 BC", DATE, 0), normalize(b"0001-01-01", DATE, 0) - 1
        )
        self.assertFalse(same(b"2024-03-01", b"2024-03-02", DATE))
        self.assertFalse(same(b"infinity", b"-infinity", DATE))

    def test_time(self) -> None:
        self.assertEqual(normalize(b"12:34:56.789", TIME, 0), 45_296_789_000)
        self.assertTrue(same(b"12:34:56.5", b"12:34:56.500000", TIME))
        self.assertFalse(same(b"12:34:56.5", b"12:34:56.05", TIME))

    def test_interval_styles(self) -> None:
        pairs = [  # IntervalStyle postgres, iso_8601
            (b"1 year 2 mons -3 days +04:05:06.5", b"P1Y2M-3DT4H5M6.5S"),
            (b"-00:00:01.5", b"PT-1.5S"),
            (b"-1 days +02:00:00", b"P-1DT2H"),
            (b"00:00:00", b"PT0S"),
            (b"-1 years -2 mons", b"P-1Y-2M"),
            (b"100:00:00", b"PT100H"),
        ]
        for postgres, iso in pairs:
            self.assertTrue(same(postgres, iso, INTERVAL), (postgres, iso))
        self.assertFalse(same(b"1 day", b"24:00:00", INTERVAL))  # different fields
        self.assertFalse(same(b"-00:00:01.5", b"00:00:01.5", INTERVAL))
        binary = struct.pack(">qii", 14_706_500_000, -3, 14)
        self.assertEqual(normalize(binary, INTERVAL, BINARY), normalize(pairs[0][0], INTERVAL, 0))


class JsonTests(SynchronousTestCase):
    def test_key_order_and_spacing(self) -> None:
        self.assertTrue(same(b'{"b":1,"a":[1.0,true]}', b'{"a": [1.0, true], "b": 1}', JSONB))
        self.assertTrue(same(b' {"a" : 1}', b'{"a":1}', JSON))
        self.assertFalse(same(b'{"a":[1,2]}', b'{"a":[2,1]}', JSONB))
        self.assertFalse(same(b'{"a":1}', b'{"a":2}', JSONB))
        self.assertFalse(same(b'{"a":1}', b'{"a":1,"b":null}', JSONB))
        exact = NormalizationRules(jsonb_key_order=False)
        self.assertFalse(same(b'{"b":1,"a":2}', b'{"a": 2, "b": 1}', JSONB, rules=exact))

    def test_types_stay_apart(self) -> None:
        self.assertFalse(same(b"[1]", b"[true]", JSONB))
        self.assertFalse(same(b"[0]", b"[false]", JSONB))
        self.assertFalse(same(b'["1"]', b"[1]", JSONB))
        self.assertFalse(same(b"null", b'"null"', JSONB))
        self.assertFalse(same(b"[]", b"{}", JSONB))
        self.assertTrue(same(b"[1.0]", b"[1.00]", JSONB))

    def test_duplicate_keys_of_json(self) -> None:
        self.assertTrue(same(b'{"a":1,"b":0,"a":2}', b'{"b":0,"a":1,"a":2}', JSON))
        self.assertFalse(same(b'{"a":1,"a":2}', b'{"a":2,"a":1}', JSON))

    def test_binary_jsonb(self) -> None:
        self.assertTrue(same(b'\x01{"b":1,"a":2}', b'\x01{"a": 2, "b": 1}', JSONB, BINARY))
        self.assertIsInstance(normalize(b'\x02{"a":1}', JSONB, BINARY), Unparsed)


class ArrayTests(SynchronousTestCase):
    def test_int_arrays(self) -> None:
        self.assertTrue(same(b"{1,2,3}", b"{1,2,3}", INT4_ARRAY))
        self.assertFalse(same(b"{1,2,3}", b"{1,2,4}", INT4_ARRAY))
        self.assertFalse(same(b"{1,2,3}", b"{1,2}", INT8_ARRAY))
        self.assertFalse(same(b"{1,2}", b"[0:1]={1,2}", INT4_ARRAY))
        self.assertEqual(normalize(b"{{1,2},{3,NULL}}", INT4_ARRAY, 0), ("", ((1, 2), (3, None))))

    def test_text_array_quoting(self) -> None:
        literal = b'{"a b","NULL",NULL,"x\\"y","c\\\\d",plain}'
        self.assertEqual(
            normalize(literal, TEXT_ARRAY, 0), ("", ("a b", "NULL", None, 'x"y', "c\\d", "plain"))
        )
        self.assertFalse(same(b'{"NULL"}', b"{NULL}", TEXT_ARRAY))
        self.assertFalse(same(b'{""}', b"{NULL}", TEXT_ARRAY))
        self.assertTrue(
            same(b'{{"{a}",b},{"c,d",NULL}}', b'{{"{a}","b"},{"c,d",NULL}}', TEXT_ARRAY)
        )
        self.assertFalse(same(b'{"a,b"}', b"{a,b}", TEXT_ARRAY))

    def test_float_and_numeric_arrays(self) -> None:
        self.assertTrue(
            same(b"{0.1,NaN,Infinity}", b"{0.10000000000000001,NaN,Infinity}", FLOAT8_ARRAY)
        )
        self.assertFalse(
            same(b"{0.1,NaN}", b"{0.10000000000000001,NaN}", FLOAT8_ARRAY, rules=EXACT_FLOATS)
        )
        self.assertFalse(same(b"{0.1,2}", b"{0.1,3}", FLOAT8_ARRAY))
        self.assertTrue(same(b"{1.5,NaN}", b"{1.50,NaN}", NUMERIC_ARRAY))
        self.assertFalse(same(b"{1.5}", b"{1.6}", NUMERIC_ARRAY))

    def test_malformed_arrays_compare_exactly(self) -> None:
        for bad in (b"{1,2", b"{1,2}}", b"1,2", b'{"a}', b"{1,x}"):
            self.assertIsInstance(normalize(bad, INT4_ARRAY, 0), Unparsed, bad)
            self.assertTrue(same(bad, bad, INT4_ARRAY))
        self.assertFalse(same(b"{1,x}", b"{1,y}", INT4_ARRAY))


class ScalarTests(SynchronousTestCase):
    def test_binary_integers(self) -> None:
        for oid, code in ((INT2, ">h"), (INT4, ">i"), (INT8, ">q"), (OID, ">I")):
            self.assertEqual(normalize(struct.pack(code, 42), oid, BINARY), 42)
            self.assertFalse(same(struct.pack(code, 42), struct.pack(code, 43), oid, BINARY))
        self.assertEqual(normalize(struct.pack(">q", -(1 << 63)), INT8, BINARY), -(1 << 63))
        self.assertIsInstance(normalize(b"\x00\x01", INT4, BINARY), Unparsed)  # wrong size

    def test_text_integers_and_bool(self) -> None:
        self.assertEqual(normalize(b"-9223372036854775808", INT8, 0), -(1 << 63))
        self.assertFalse(same(b"1", b"2", INT4))
        self.assertTrue(same(b"t", b"t", BOOL))
        self.assertFalse(same(b"t", b"f", BOOL))
        self.assertTrue(same(b"\x01", b"\x01", BOOL, BINARY))
        self.assertFalse(same(b"\x01", b"\x00", BOOL, BINARY))

    def test_null_is_not_empty(self) -> None:
        for oid in (TEXT, VARCHAR, BPCHAR, NAME, BYTEA, JSONB, INT4, FLOAT8, NUMERIC, TEXT_ARRAY):
            self.assertFalse(same(None, b"", oid), oid)
            self.assertTrue(same(None, None, oid), oid)

    def test_text_types_are_exact(self) -> None:
        self.assertTrue(same(b"abc", b"abc", TEXT))
        self.assertFalse(same(b"abc", b"abc ", VARCHAR))
        self.assertFalse(same(b"abc", b"ABC", NAME))
        self.assertFalse(same(b"a  ", b"a", BPCHAR))

    def test_bytea(self) -> None:
        hex_output, escape_output = b"\\x00415c", b"\\000A\\\\"  # bytea_output hex, escape
        self.assertTrue(same(hex_output, escape_output, BYTEA))
        self.assertEqual(normalize(hex_output, BYTEA, 0), b"\x00A\\")
        self.assertEqual(normalize(b"\x00A\\", BYTEA, BINARY), b"\x00A\\")
        self.assertFalse(same(b"\\x00", b"\\x01", BYTEA))
        self.assertFalse(same(b"\\x00", b"\\x0000", BYTEA))
        self.assertIsInstance(normalize(b"\\x4", BYTEA, 0), Unparsed)
        self.assertIsInstance(normalize(b"a\\b", BYTEA, 0), Unparsed)

    def test_uuid(self) -> None:
        text = b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        binary = bytes.fromhex(text.decode().replace("-", ""))
        self.assertEqual(normalize(text, UUID, 0), normalize(binary, UUID, BINARY))
        self.assertTrue(same(text, text.upper(), UUID))
        self.assertFalse(same(text, text[:-1] + b"2", UUID))

    def test_unknown_binary_types_are_exact(self) -> None:
        self.assertEqual(normalize(b"\x00\x01", NUMERIC, BINARY), b"\x00\x01")
        self.assertFalse(same(b"\x00\x01", b"\x00\x02", 600, BINARY))

    def test_unparsable_falls_back_to_exact(self) -> None:
        cases = [(NUMERIC, b"1.5x"), (INT4, b"abc"), (FLOAT8, b"0.1.2"), (DATE, b"soon"),
                 (JSONB, b"{nope"), (UUID, b"1234"), (INTERVAL, b"@ 1 year ago")]  # fmt: skip
        for oid, bad in cases:
            value = normalize(bad, oid, 0)
            self.assertIsInstance(value, Unparsed, oid)
            self.assertTrue(same(bad, bad, oid), oid)
            self.assertFalse(same(bad, bad + b"!", oid), oid)
        self.assertFalse(same(b"1.5x", b"1.5", NUMERIC))

    def test_never_raises(self) -> None:
        oids = [16, 17, 19, 20, 21, 23, 25, 26, 114, 700, 701, 1042, 1043, 1082, 1083, 1114,
                1184, 1186, 1700, 2950, 3802, 1007, 1016, 1022, 1009, 1231, 1185, 3807]  # fmt: skip
        garbage = [b"", b"\xff\xfe", b"{", b"}", b"[", b'"', b"\\", b"NaN", b"-", b"\x00" * 3,
                   b"[" * 5000, b"{" * 5000 + b"}" * 5000, b"1e999999", b"99999-99-99"]  # fmt: skip
        for oid in oids:
            for fmt in (TEXT_FORMAT, BINARY):
                for value in garbage:
                    hash(normalize(value, oid, fmt))  # hashable, and no exception


class RowKeyTests(SynchronousTestCase):
    COLUMNS = (Column("n", type_oid=NUMERIC), Column("f", type_oid=FLOAT8), Column("t"))

    def test_equal_rows_share_a_key(self) -> None:
        a = row_key((b"1.5", b"0.1", b"x"), self.COLUMNS, DEFAULT_RULES)
        b = row_key((b"1.50", b"0.10000000000000001", b"x"), self.COLUMNS, DEFAULT_RULES)
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        self.assertNotEqual(a, row_key((b"1.5", b"0.1", b"y"), self.COLUMNS, DEFAULT_RULES))
        self.assertNotEqual(a, row_key((b"1.5", b"0.2", b"x"), self.COLUMNS, DEFAULT_RULES))

    def test_null_and_empty_keys_differ(self) -> None:
        self.assertNotEqual(
            row_key((b"1", b"1", None), self.COLUMNS, DEFAULT_RULES),
            row_key((b"1", b"1", b""), self.COLUMNS, DEFAULT_RULES),
        )

    def test_normalize_row_applies_the_tolerance(self) -> None:
        a = normalize_row((b"1", b"0.1", b"x"), self.COLUMNS)
        self.assertEqual(a, normalize_row((b"1.0", b"0.10000000000000001", b"x"), self.COLUMNS))
        self.assertNotEqual(a, normalize_row((b"1.0", b"0.1", b"x", b"extra"), self.COLUMNS))
