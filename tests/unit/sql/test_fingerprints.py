"""Statement fingerprints and the bounded cache in front of them."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twinkly.sql import fingerprints as fp


class ShapeTests(SynchronousTestCase):
    def test_literals_are_blanked(self) -> None:
        self.assertEqual(
            fp.shape("select * from t2 where a = 'it''s' and b = -1.5 limit 10"),
            "select * from t2 where a = 00 and b = -0.0 limit 0",
        )

    def test_digits_in_names_are_kept(self) -> None:
        self.assertEqual(fp.shape("select c1 from t_2, s3.t4"), "select c1 from t_2, s3.t4")

    def test_texts_where_blanking_could_merge_shapes_are_kept_whole(self) -> None:
        for sql in (
            'select "col 7" from t',  # a quoted identifier holding digits
            "select $1::int",  # parameters and dollar quotes
            "select 1 -- it's",  # comments (with a quote that would mislead)
            "select 1 /* 2 */",
            "select E'a\\'b', 1",  # backslash escapes
        ):
            self.assertEqual(fp.shape(sql), sql)

    def test_blanking_never_changes_the_fingerprint(self) -> None:
        from pglast import parser

        for sql in (
            "select * from t2 where a = 'x' and b = 1.5 limit 10",
            "select a::varchar(10), 1e5 from t order by 1",
            "insert into t values (1, 'a'), (2, 'b')",
        ):
            self.assertEqual(parser.fingerprint(sql), parser.fingerprint(fp.shape(sql)), sql)


class FingerprintTests(SynchronousTestCase):
    def setUp(self) -> None:
        fp._cache.clear()

    def test_literal_variants_share_a_fingerprint(self) -> None:
        first = fp.fingerprints("SELECT v FROM t WHERE id = 1")
        self.assertEqual(fp.fingerprints("SELECT v FROM t WHERE id = 22;"), first)
        from pglast import parser

        self.assertEqual(first, (parser.fingerprint("SELECT v FROM t WHERE id = 987"),))

    def test_texts_differing_in_literals_are_parsed_once(self) -> None:
        fp.fingerprints("select v from t where id = 1 and name = 'a'")
        self.patch(fp, "_parse", lambda sql: self.fail("parsed again"))
        self.assertEqual(len(fp.fingerprints("select v from t where id = 22 and name = 'bc'")), 1)

    def test_a_repeated_text_is_parsed_once(self) -> None:
        fp.fingerprints("select $1")
        self.patch(fp, "_parse", lambda sql: self.fail("parsed again"))
        self.assertEqual(len(fp.fingerprints("select $1")), 1)

    def test_a_semicolon_inside_a_string_is_one_statement(self) -> None:
        self.assertEqual(len(fp.fingerprints("select 'a;b'")), 1)

    def test_different_shapes_differ(self) -> None:
        self.assertNotEqual(
            fp.fingerprints("select a from t where id = 1"),
            fp.fingerprints("select b from t where id = 1"),
        )

    def test_each_statement_of_a_query(self) -> None:
        prints = fp.fingerprints("select 1; update t set a = 2")
        self.assertEqual(len(prints), 2)
        self.assertEqual(prints[0], fp.fingerprints("select 5")[0])

    def test_unparsable_and_oversized_texts_have_none(self) -> None:
        self.assertEqual(fp.fingerprints("selec 1"), ())
        self.assertEqual(fp.fingerprints("select 1\x00"), ())
        self.assertEqual(fp.fingerprints("select " + "1," * fp.MAX_TEXT + "1"), ())

    def test_long_texts_are_not_cached(self) -> None:
        long = "select " + "1, " * fp.CACHED_TEXT + "1"
        self.assertEqual(len(fp.fingerprints(long)), 1)
        self.assertNotIn(long, fp._cache)

    def test_the_cache_is_bounded(self) -> None:
        self.patch(fp, "CACHE_ENTRIES", 3)
        for name in "abcd":
            fp.fingerprints(f"select {name} from t")
        self.assertLessEqual(len(fp._cache), 3)
