"""How a statement and each backend's answer appear in an event."""

from __future__ import annotations

from twinkly.sql.analysis import StatementInfo
from twinkly.tracking.responses import StatementResult
from twinkly.wire.buffers import Reader
from twinkly.wire.framing import ProtocolViolation
from twinkly.wire.frontend import Bind


def summary(result: StatementResult, label: str) -> dict:
    """How one backend answered, for an event."""
    return {
        "label": label,
        "rows": result.rows,
        "digest": f"{result.digest:016x}",
        "tag": result.command_tag,
        "sqlstate": result.sqlstate,
        "message": result.error_message,
        "elapsed_ms": round(result.elapsed * 1000, 3),
    }


def statement_text(info: StatementInfo | None, result: StatementResult, redact: bool) -> str:
    if info is not None:
        return info.redacted if redact else info.sql
    return result.context[0] if result.context else "<unknown>"


def bound_parameters(result: StatementResult) -> tuple[list | None, list[int] | None]:
    """The Bind's parameters as text (binary ones as bytea-style hex) and its formats."""
    context = result.context
    if context is None or context[1] is None:
        return None, None
    try:
        bind = Bind.read(Reader(context[1]))
    except ProtocolViolation:
        return None, None
    formats = bind.parameter_formats
    out: list[str | None] = []
    for index, value in enumerate(bind.parameters[:100]):
        binary = (formats[index] if len(formats) > 1 else formats[0] if formats else 0) == 1
        if value is None:
            out.append(None)
        elif binary:
            out.append("\\x" + value.hex())
        else:
            out.append(value.decode("utf-8", "replace"))
    return out, list(formats)


def difference(difference: object) -> dict:
    return {
        "kind": difference.kind,  # type: ignore[attr-defined]
        "position": difference.position,  # type: ignore[attr-defined]
        "truth": difference.truth,  # type: ignore[attr-defined]
        "target": difference.target,  # type: ignore[attr-defined]
        "columns": list(difference.columns),  # type: ignore[attr-defined]
        "positions": list(getattr(difference, "positions", ())),
    }
