"""Replacing a statement's literals by $n, so events can omit values (reporting.redact).

Kept apart from the analysis in sql.py: it works on the scanner's tokens, not the tree.
"""

from __future__ import annotations

from pglast import parser

_STRING_TOKENS = frozenset(("SCONST", "USCONST", "BCONST", "XCONST"))
_NUMBER_TOKENS = frozenset(("ICONST", "FCONST"))


def redact_literals(sql: str, numbers: set[int], max_param: int) -> str:
    """The statement with each literal replaced by $n, numbered after its own parameters.

    Strings are found by the scanner (every string token: also passwords, COMMENT text and
    function bodies of utility statements, whose values carry no location in the tree).
    Numbers are redacted where the tree has a constant, so that a unary minus folded into
    it goes too, while ``numeric(10, 2)`` and ``ORDER BY 1`` stay.
    """
    if not numbers and "'" not in sql and not _dollar_quote_possible(sql):
        return sql  # nothing to redact: skip the scanner, the costliest step (~1 us a token)
    tokens = parser.scan(sql)
    spans: list[tuple[int, int]] = []
    by_start = {t.start: i for i, t in enumerate(tokens)}
    for where in sorted(numbers):
        i = by_start.get(where)
        if i is None:
            continue
        j = i  # the parser folds -1, - -1 and -(1) into one constant located at the first -
        while j < len(tokens) and tokens[j].name in ("ASCII_45", "ASCII_40"):
            j += 1
        if j == len(tokens) or tokens[j].name not in _NUMBER_TOKENS:
            continue
        end = j + sum(t.name == "ASCII_40" for t in tokens[i:j])  # and the closing parentheses
        if all(t.name == "ASCII_41" for t in tokens[j + 1 : end + 1]) and end < len(tokens):
            spans.append((tokens[i].start, tokens[end].end))
    for i, token in enumerate(tokens):
        if token.name not in _STRING_TOKENS or (i and tokens[i - 1].name == "UESCAPE"):
            continue  # the escape character of U&'...' (merged below) or of U&"..."
        start, end = token.start, token.end
        if i and tokens[i - 1].name == "NCHAR" and tokens[i - 1].end + 1 == start:
            start = tokens[i - 1].start  # N'...'
        if i + 2 < len(tokens) and tokens[i + 1].name == "UESCAPE":
            end = tokens[i + 2].end  # U&'...' UESCAPE '!'
        spans.append((start, end))
    out, at, number = [], 0, max_param
    for start, end in sorted(spans):
        if start < at:
            continue
        number += 1
        out.append(f"{sql[at:start]}${number}")
        at = end + 1
    out.append(sql[at:])
    return "".join(out)


def _dollar_quote_possible(sql: str) -> bool:
    """Whether a ``$`` could open a dollar quote: one not followed by a digit, as in ``$1``."""
    at = sql.find("$")
    while at >= 0:
        if not sql[at + 1 : at + 2].isdigit():
            return True
        at = sql.find("$", at + 1)
    return False
