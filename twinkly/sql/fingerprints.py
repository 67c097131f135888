"""Fingerprints of statements, cheap enough to take for every execution.

A fingerprint (pglast's, from libpg_query) names a statement with its literals and
parameters ignored, so ``WHERE aid = 1`` and ``WHERE aid = 2`` share one. Parsing is
the expensive part: about 5 microseconds in a tight loop, but about 25 in the proxy,
where the parser's code and tables are cold by the next call. So the cache is keyed by
the text with its number and string literals blanked (twinkly/wire/accel.py: well under
a microsecond in C, a regular expression of about 4 in pure Python): the simple
protocol's texts, which differ only in their literals, share one entry. Blanking never
changes the fingerprint, which ignores every constant; texts where a digit or a quote
might not be a literal (quoted identifiers, dollar quotes and parameters, backslash
escapes, comments) are keyed by their exact text instead.
"""

from __future__ import annotations

from pglast import parser

from twinkly.wire.accel import statement_shape

MAX_TEXT = 256 * 1024  # longer texts are not fingerprinted: parsing them would stall
CACHE_ENTRIES = 8192
CACHED_TEXT = 4096  # longer texts are parsed each time: the cache holds at most 32 MiB

_cache: dict[str, tuple[str, ...]] = {}


# The cache key: literals blanked, or the text itself where that is not safe (in C
# when built: twinkly/wire/accel.py).
shape = statement_shape


def fingerprints(sql: str) -> tuple[str, ...]:
    """Each statement's fingerprint, in order; () if the text does not parse or is
    longer than MAX_TEXT."""
    if len(sql) > CACHED_TEXT:  # kept out of the cache: memory stays bounded
        return _parse(sql) if len(sql) <= MAX_TEXT else ()
    found = _cache.get(sql)  # a repeated text (the extended protocol's): one lookup
    if found is None:
        key = shape(sql)
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
        if ";" not in sql.rstrip(" \t\r\n;"):
            return (parser.fingerprint(sql),)  # one statement: no need to split
        return tuple(parser.fingerprint(part) for part in parser.split(sql, with_parser=False))
    except Exception:  # pglast raises its own ParseError
        return ()
