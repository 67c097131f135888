"""Fingerprints of statements, cheap enough to take for every execution.

A fingerprint (pglast's, from libpg_query) names a statement with its literals and
parameters ignored, so ``WHERE aid = 1`` and ``WHERE aid = 2`` share one. Parsing costs
about 10 microseconds; the cache below makes a repeated shape cost one regular
expression: literals are blanked out of the text to form the cache key. Since the
fingerprint ignores every constant, blanking them never changes it; texts where a
digit or quote might not be a literal (quoted identifiers, dollar quotes and
parameters, comments, prefixed strings) are keyed by their exact text instead.
"""

from __future__ import annotations

import re

from pglast import parser

MAX_TEXT = 256 * 1024  # longer texts are not fingerprinted: parsing them would stall
CACHE_ENTRIES = 8192

_LITERAL = re.compile(r"'(?:[^']|'')*'|(?<![\w$.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_NOT_PLAIN = re.compile(r"[\"$\\]|--|/\*|(?<!\w)[eEbBxXnN]'|[uU]&'")

_cache: dict[str, tuple[str, ...]] = {}


def cache_key(sql: str) -> str:
    """The text with its literals blanked, or the text itself when that is not safe."""
    if _NOT_PLAIN.search(sql):
        return sql
    return _LITERAL.sub("?", sql)


def fingerprints(sql: str) -> tuple[str, ...]:
    """Each statement's fingerprint, in order; () if the text does not parse or is
    longer than MAX_TEXT."""
    if len(sql) > MAX_TEXT:
        return ()
    key = cache_key(sql)
    found = _cache.get(key)
    if found is None:
        found = _parse(sql)
        if len(_cache) >= CACHE_ENTRIES:
            _cache.clear()  # crude but bounded; the hot shapes are back at once
        _cache[key] = found
    return found


def _parse(sql: str) -> tuple[str, ...]:
    if "\x00" in sql:
        return ()  # libpg_query would silently stop reading at the NUL
    try:
        return tuple(parser.fingerprint(part) for part in parser.split(sql, with_parser=False))
    except Exception:  # pglast raises its own ParseError, and ValueError on NUL
        return ()
