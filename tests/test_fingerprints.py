"""Statement fingerprints and the literal-blind cache in front of them."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twinkly.perf import fingerprints as fp


class CacheKeyTests(SynchronousTestCase):
    def test_literals_are_blanked(self) -> None:
        self.assertEqual(
            fp.cache_key("select * from t2 where a = 'it''s' and b = -1.5e3 limit 10"),
            "select * from t2 where a = ? and b = -? limit ?",
        )

    def test_digits_in_names_are_kept(self) -> None:
        self.assertEqual(fp.cache_key("select c1 from t_2, s3.t4"), "select c1 from t_2, s3.t4")

    def test_texts_where_blanking_could_merge_shapes_are_kept_whole(self) -> None:
        for sql in (
            'select "col 7" from t',  # a quoted identifier holding digits
            "select $1::int",  # parameters and dollar quotes
            "select 1 -- 2",  # comments
            "select E'a\\'b'",  # escape strings
            "select B'101'",
        ):
            self.assertEqual(fp.cache_key(sql), sql)


class FingerprintTests(SynchronousTestCase):
    def setUp(self) -> None:
        fp._cache.clear()

    def test_literal_variants_share_one_parse(self) -> None:
        first = fp.fingerprints("SELECT v FROM t WHERE id = 1")
        self.assertEqual(len(fp._cache), 1)
        self.assertEqual(fp.fingerprints("SELECT v FROM t WHERE id = 22"), first)
        self.assertEqual(len(fp._cache), 1)
        # And it is pglast's own fingerprint of the text.
        from pglast import parser

        self.assertEqual(first, (parser.fingerprint("SELECT v FROM t WHERE id = 987"),))

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

    def test_the_cache_is_bounded(self) -> None:
        self.patch(fp, "CACHE_ENTRIES", 3)
        for name in "abcd":
            fp.fingerprints(f"select {name} from t")
        self.assertLessEqual(len(fp._cache), 3)
