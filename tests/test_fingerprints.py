"""Statement fingerprints and the bounded cache in front of them."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twinkly.perf import fingerprints as fp


class FingerprintTests(SynchronousTestCase):
    def setUp(self) -> None:
        fp._cache.clear()

    def test_literal_variants_share_a_fingerprint(self) -> None:
        first = fp.fingerprints("SELECT v FROM t WHERE id = 1")
        self.assertEqual(fp.fingerprints("SELECT v FROM t WHERE id = 22;"), first)
        from pglast import parser

        self.assertEqual(first, (parser.fingerprint("SELECT v FROM t WHERE id = 987"),))

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
