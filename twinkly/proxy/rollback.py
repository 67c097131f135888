"""The target's COMMIT becomes ROLLBACK when the truth's transaction has failed.

PostgreSQL answers COMMIT of a failed transaction with ROLLBACK. When only the truth's
transaction failed, the client's COMMIT would still commit on the target and the two
databases would drift apart; so the target gets ROLLBACK instead and both end the same.
"""

from __future__ import annotations

from collections.abc import Callable

from twinkly.wire.buffers import tagged
from twinkly.wire.frontend import Parse, Query, encode

_QUERY, _PARSE = ord("Q"), ord("P")


def commit_becomes_rollback(
    data: bytes,
    messages: list[tuple[int, bytes]],
    analyze: Callable[[str], tuple],
) -> bytes | None:
    """``data`` with each COMMIT (a simple Query, or a Parse) replaced by ROLLBACK, or
    None when there is none. ``data`` must hold exactly ``messages``, whole: a chunk
    that holds part of a message is never rewritten (COMMIT is sent alone and small)."""
    if sum(5 + len(p) for _, p in messages) != len(data):
        return None

    def is_commit(sql: bytes) -> bool:
        infos = analyze(sql.decode("utf-8", "replace"))
        return len(infos) == 1 and infos[0].transaction == "commit"

    changed = False
    out = []
    for type_byte, payload in messages:
        if type_byte == _QUERY and is_commit(payload[:-1]):
            out.append(encode(Query("ROLLBACK")))
            changed = True
        elif type_byte == _PARSE:
            name_end = payload.find(0)
            if is_commit(payload[name_end + 1 : payload.find(0, name_end + 1)]):
                name = payload[:name_end].decode("utf-8", "replace")
                out.append(encode(Parse(name, "ROLLBACK")))
                changed = True
            else:
                out.append(tagged(b"P", payload))
        else:
            out.append(tagged(bytes((type_byte,)), payload))
    return b"".join(out) if changed else None
