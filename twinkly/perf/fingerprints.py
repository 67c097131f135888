"""Fingerprints of statements, cheap enough to take for every execution.

A fingerprint (pglast's, from libpg_query) names a statement with its literals and
parameters ignored, so ``WHERE aid = 1`` and ``WHERE aid = 2`` share one. A repeated
text (the extended protocol's, prepared statements') costs one dict lookup; a new text
costs one call into libpg_query, about 7 microseconds. Blanking literals with a regular
expression to share cache entries between texts was measured slower than that parse.
"""

from __future__ import annotations

from pglast import parser

MAX_TEXT = 256 * 1024  # longer texts are not fingerprinted: parsing them would stall
CACHE_ENTRIES = 8192
CACHED_TEXT = 4096  # longer texts are parsed each time: the cache holds at most 32 MiB

_cache: dict[str, tuple[str, ...]] = {}


def fingerprints(sql: str) -> tuple[str, ...]:
    """Each statement's fingerprint, in order; () if the text does not parse or is
    longer than MAX_TEXT."""
    if len(sql) > CACHED_TEXT:  # kept out of the cache: memory stays bounded
        return _parse(sql) if len(sql) <= MAX_TEXT else ()
    found = _cache.get(sql)  # a repeated text (the extended protocol's): one lookup
    if found is None:
        found = _parse(sql)
        if len(_cache) >= CACHE_ENTRIES:
            _cache.clear()  # crude but bounded; the hot texts are back at once
        _cache[sql] = found
    return found


def _parse(sql: str) -> tuple[str, ...]:
    if "\x00" in sql:
        return ()  # libpg_query would silently stop reading at the NUL
    try:
        if ";" not in sql.rstrip(" \t\r\n;"):
            return (parser.fingerprint(sql),)  # one statement: no need to split
        return tuple(parser.fingerprint(part) for part in parser.split(sql, with_parser=False))
    except Exception:  # pglast raises its own ParseError
        return ()
