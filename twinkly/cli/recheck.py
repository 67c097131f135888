"""``twinkly recheck BUNDLE ...``: run reported statements again on both databases, and compare.

Each bundle (written by :class:`twinkly.report.bundles.BundleWriter`) is run on a fresh
connection to each database: its session settings are applied with ``set_config``, then the
statement runs with its parameters between ``BEGIN`` and a ``ROLLBACK`` that always follows,
so re-checking a write changes no data. Transaction control and COPY are refused. Effects that
no rollback undoes (sequence values, work done by functions outside the database) are not
prevented. Rows are fetched in text format and compared as the proxy compares them; both
sides get the portable digest :data:`twinkly.report.bundles.PORTABLE_DIGEST`.

Exit status: 0 when every bundle now gets equal answers, 1 when any still differs or could
not run, 2 on usage errors (a missing or invalid bundle file, a bad DSN, a server down).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypedDict

from twinkly.compare.rows import Ordering, compare_columns, compare_rows
from twinkly.report.bundles import FORMAT, PORTABLE_DIGEST, data_row, portable_digest
from twinkly.sql.analysis import analyze
from twinkly.wire.backend import Column

STILL_DIFFERS, NOW_EQUAL, COULD_NOT_RUN = "still_differs", "now_equal", "could_not_run"
MAX_DIFFERENCES = 20
SHOWN_DIFFERENCES = 5
#: Reported by servers but not settable by a session (or managed by the driver).
UNSETTABLE = frozenset(
    "client_encoding server_version server_version_num server_encoding integer_datetimes"  # noqa: SIM905
    " is_superuser in_hot_standby session_authorization".split()
)
QUERY_CANCELED = "57014"
#: No parameter $n (simple statements), or too few parameters in Bind (protocol violation).
MISSING_PARAMETERS = frozenset(("42P02", "08P01"))


class UsageError(Exception):
    """Bad input: the command stops with exit status 2."""


class CannotRun(Exception):
    """This bundle cannot be re-checked (the reason is the message)."""


@dataclass
class Answer:
    """How one database answered."""

    label: str
    columns: tuple[Column, ...] | None = None  # None: no rows (a command, or an error)
    rows: list[bytes] = field(default_factory=list)  # DataRow payloads of text values
    tag: str | None = None
    failed: bool = False
    sqlstate: str | None = None
    message: str | None = None

    def summary(self) -> dict[str, Any]:
        digest = portable_digest(self.rows) if self.columns is not None else None
        return {
            "label": self.label,
            "rows": len(self.rows),
            "digest": digest,
            "tag": self.tag,
            "sqlstate": self.sqlstate,
            "message": self.message,
        }


@dataclass
class Outcome:
    bundle: str
    status: str
    reason: str | None
    source: dict[str, Any]  # the bundle
    truth: Answer | None = None
    target: Answer | None = None
    differences: list = field(default_factory=list)
    differing_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "status": self.status,
            "reason": self.reason,
            "fingerprint": self.source.get("fingerprint"),
            "statement": self.source.get("statement"),
            "parameters": self.source.get("parameters"),
            "truth": self.truth.summary() if self.truth else None,
            "target": self.target.summary() if self.target else None,
            "differences": self.differences,
            "differing_rows": self.differing_rows,
            "digest_algorithm": PORTABLE_DIGEST,
        }


# --- loading and preparing ----------------------------------------------------------------


def load_bundle(path: Path) -> dict[str, Any]:
    try:
        bundle = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"{path} is not JSON: {e}") from None
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise UsageError(f"{path} is not a Twinkly repro bundle")
    if not isinstance(bundle.get("version"), int) or bundle["version"] > 1:
        raise UsageError(f"{path}: unsupported bundle version {bundle.get('version')!r}")
    return bundle


@dataclass(frozen=True)
class Prepared:
    sql: bytes
    values: list[bytes | None] | None
    types: list[int] | None
    formats: list[int] | None
    settings: list[tuple[str, str]]
    ordering: Ordering


def prepare(bundle: dict[str, Any]) -> Prepared:
    """What to send, from a bundle; CannotRun when it must not or cannot be run."""
    sql = bundle.get("statement")
    if bundle.get("redacted"):
        raise CannotRun("the bundle's statement is redacted")
    if not isinstance(sql, str) or not sql.strip():
        raise CannotRun("the bundle has no statement")
    infos = analyze(sql)
    if len(infos) != 1:
        raise CannotRun(f"{len(infos)} statements in one: recheck runs one at a time")
    info = infos[0]
    if info.kind == "transaction":
        raise CannotRun("transaction control would end the re-check's transaction")
    if info.kind == "copy":
        raise CannotRun("COPY is not re-checked")
    ordering = Ordering(
        ordered=info.ordered,
        order_columns=info.order_columns,
        limited=info.limited or info.distinct_on,
    )
    params = bundle.get("parameters")
    values = types = formats = None
    if params is not None:
        if not isinstance(params, list):
            raise CannotRun("the bundle's parameters are not a list")
        formats = _per_parameter(bundle.get("parameter_formats"), len(params), "formats")
        types = _per_parameter(bundle.get("parameter_types"), len(params), "types")
        values = [_parameter(p, f) for p, f in zip(params, formats, strict=True)]
    settings = bundle.get("settings") or {}
    if not isinstance(settings, dict):
        raise CannotRun("the bundle's settings are not an object")
    pairs = [(str(k), str(v)) for k, v in settings.items() if str(k).lower() not in UNSETTABLE]
    return Prepared(sql.encode("utf-8"), values, types, formats, pairs, ordering)


def _per_parameter(given: object, count: int, what: str) -> list[int]:
    """Bind-style lists: none (all 0), one for all, or one each; types padded with 0."""
    if given is None or given == []:
        return [0] * count
    if not isinstance(given, list) or not all(isinstance(x, int) for x in given):
        raise CannotRun(f"the bundle's parameter {what} are not a list of integers")
    if what == "formats" and len(given) == 1:
        return given * count
    if what == "formats" and len(given) != count:
        raise CannotRun(f"{len(given)} parameter formats for {count} parameters")
    return (given + [0] * count)[:count]


def _parameter(value: object, fmt: int) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CannotRun(f"a parameter is not text: {value!r}")
    if fmt == 1:  # binary, kept as \x hex
        try:
            return bytes.fromhex(value.removeprefix("\\x"))
        except ValueError:
            raise CannotRun("a binary parameter is not \\x hex") from None
    return value.encode("utf-8")


# --- running ------------------------------------------------------------------------------


class _ConnectTimeout(TypedDict, total=False):
    connect_timeout: int


def connect(dsn: str, label: str) -> Any:
    """An autocommit psycopg connection (recheck sends BEGIN and ROLLBACK itself), in UTF-8
    whatever the DSN or the environment say: parameters are sent and rows compared as such."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        extra: _ConnectTimeout = (
            {} if "connect_timeout" in conninfo_to_dict(dsn) else {"connect_timeout": 10}
        )
        return psycopg.connect(dsn, autocommit=True, client_encoding="UTF8", **extra)
    except psycopg.Error as e:
        raise CannotRun(f"cannot connect to {label}: {str(e).strip()}") from None


def run_side(dsn: str, prepared: Prepared, label: str, timeout: float) -> Answer:
    """Run the statement on one database, inside a transaction that is rolled back."""
    import psycopg

    try:
        return _run_side(dsn, prepared, label, timeout)
    except psycopg.Error as e:  # e.g. the connection was lost
        raise CannotRun(f"{label}: {type(e).__name__}: {str(e).strip()}") from None


def _run_side(dsn: str, prepared: Prepared, label: str, timeout: float) -> Answer:
    from psycopg import pq

    with connect(dsn, label) as conn:
        pgconn = conn.pgconn
        milliseconds = max(1, round(timeout * 1000)) if timeout > 0 else 0  # 0: no limit
        settings = [*prepared.settings, ("statement_timeout", str(milliseconds))]
        for name, value in settings:
            res = pgconn.exec_params(
                b"select pg_catalog.set_config($1, $2, false)", [name.encode(), value.encode()]
            )
            if res.status != pq.ExecStatus.TUPLES_OK:
                raise CannotRun(f"cannot set {name} to {value!r} on {label}: {_message(res)}")
        if pgconn.exec_(b"BEGIN").status != pq.ExecStatus.COMMAND_OK:
            raise CannotRun(f"BEGIN failed on {label}: {pgconn.get_error_message()}")
        try:
            p = prepared
            res = pgconn.exec_params(p.sql, p.values or [], p.types, p.formats, result_format=0)
            still_open = pgconn.transaction_status != pq.TransactionStatus.IDLE
        finally:
            pgconn.exec_(b"ROLLBACK")
        if not still_open:
            raise CannotRun(f"the statement ended the transaction on {label}: not rolled back")
        return _answer(res, label, timeout)


def _answer(res: Any, label: str, timeout: float) -> Answer:
    from psycopg import pq

    status = res.status
    tag = res.command_status.decode("utf-8", "replace") if res.command_status else None
    if status == pq.ExecStatus.TUPLES_OK:
        fields = range(res.nfields)
        name = [res.fname(j).decode("utf-8", "replace") for j in fields]
        columns = tuple(Column(name[j], type_oid=res.ftype(j), format=0) for j in fields)
        rows = [data_row([res.get_value(i, j) for j in fields]) for i in range(res.ntuples)]
        return Answer(label, columns, rows, tag)
    if status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY):
        return Answer(label, tag=tag)
    if status == pq.ExecStatus.FATAL_ERROR:
        sqlstate = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode() or None
        if sqlstate == QUERY_CANCELED:
            raise CannotRun(f"canceled on {label} (statement timeout {timeout:g} s)")
        return Answer(label, failed=True, sqlstate=sqlstate, message=_message(res))
    raise CannotRun(f"unexpected result on {label}: {pq.ExecStatus(status).name}")


def _message(res: Any) -> str:
    from psycopg import pq

    primary = res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)
    return (primary or res.error_message or b"").decode("utf-8", "replace").strip()


def compare(truth: Answer, target: Answer, ordering: Ordering) -> tuple[str, str | None, list, int]:
    """(status, reason, differences, differing rows) for two answers."""
    if truth.failed or target.failed:
        if truth.failed and target.failed:
            if truth.sqlstate == target.sqlstate:
                return NOW_EQUAL, f"both failed with {truth.sqlstate}", [], 0
            return STILL_DIFFERS, "both failed, with different SQLSTATEs", [], 0
        failed = truth if truth.failed else target
        return STILL_DIFFERS, f"only {failed.label} failed: {failed.sqlstate}", [], 0
    if (truth.columns is None) != (target.columns is None):
        having = truth if truth.columns is not None else target
        return STILL_DIFFERS, f"only {having.label} returned rows", [], 0
    if truth.columns is None or target.columns is None:
        if truth.tag != target.tag:
            return STILL_DIFFERS, "the command tags differ", [], 0
        return NOW_EQUAL, None, [], 0
    problems = compare_columns(truth.columns, target.columns)
    if problems:
        return STILL_DIFFERS, "the columns differ", problems, 0
    verdict = compare_rows(
        truth.columns,
        truth.rows,
        target.columns,
        target.rows,
        ordering,
        max_differences=MAX_DIFFERENCES,
    )
    if verdict.equal:
        return NOW_EQUAL, None, [], 0
    reason = f"{verdict.differing_rows} rows differ"
    if verdict.nondeterministic:
        reason += f" ({verdict.nondeterministic})"
    differences = [dataclasses.asdict(d) for d in verdict.differences]
    return STILL_DIFFERS, reason, differences, verdict.differing_rows


def recheck_bundle(
    bundle: dict[str, Any],
    truth_dsn: str,
    target_dsn: str,
    *,
    path: str = "",
    timeout: float = 60.0,
) -> Outcome:
    """Re-run one bundle on both databases and compare the answers."""
    labels = [((bundle.get(side) or {}).get("label") or side) for side in ("truth", "target")]
    try:
        prepared = prepare(bundle)
        truth = run_side(truth_dsn, prepared, str(labels[0]), timeout)
        target = run_side(target_dsn, prepared, str(labels[1]), timeout)
    except CannotRun as e:
        return Outcome(path, COULD_NOT_RUN, str(e), bundle)
    status, reason, differences, differing = compare(truth, target, prepared.ordering)
    if (
        bundle.get("parameters") is None
        and truth.sqlstate == target.sqlstate
        and (truth.sqlstate in MISSING_PARAMETERS)
    ):
        status, reason = COULD_NOT_RUN, "the statement needs parameters the bundle does not have"
    return Outcome(path, status, reason, bundle, truth, target, differences, differing)


# --- the command --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundles", metavar="BUNDLE", type=Path, nargs="+", help="bundle files")
    parser.add_argument("--truth", required=True, metavar="DSN", help="source of truth")
    parser.add_argument("--target", required=True, metavar="DSN", help="the target database")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="statement timeout on each database (default 60; 0: none)",
    )


def run(
    args: argparse.Namespace, stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        bundles = [(str(path), load_bundle(path)) for path in args.bundles]
        for which, dsn in (("truth", args.truth), ("target", args.target)):
            try:
                connect(dsn, f"--{which}").close()  # a bad DSN or a server down: stop now
            except CannotRun as e:
                raise UsageError(str(e)) from None
    except UsageError as e:
        print(f"twinkly recheck: {e}", file=err)
        return 2
    outcomes = [
        recheck_bundle(b, args.truth, args.target, path=p, timeout=args.timeout) for p, b in bundles
    ]
    if args.json:
        json.dump([o.to_dict() for o in outcomes], out, indent=2, default=repr)
        out.write("\n")
    else:
        out.write(render_text(outcomes))
    out.flush()
    return 0 if all(o.status == NOW_EQUAL for o in outcomes) else 1


def render_text(outcomes: list[Outcome]) -> str:
    lines: list[str] = []
    for o in outcomes:
        status = o.status.replace("_", " ")
        lines.append(f"{o.bundle}: {status}" + (f": {o.reason}" if o.reason else ""))
        statement = " ".join(str(o.source.get("statement")).split())
        lines.append(f"  statement: {statement[:400]}")
        if o.source.get("parameters") is not None:
            lines.append(f"  parameters: {json.dumps(o.source['parameters'])[:400]}")
        for answer in (o.truth, o.target):
            if answer is not None and o.status != NOW_EQUAL:
                lines.append(f"  {answer.label}: {_describe(answer)}")
        shown = o.differences[:SHOWN_DIFFERENCES]
        if shown:
            lines.append(
                f"  differences ({len(shown)} of {o.differing_rows or len(o.differences)}):"
            )
        for d in shown:
            lines.append("    " + (d if isinstance(d, str) else _difference(d, o)))
    counts = {
        s: sum(o.status == s for o in outcomes) for s in (STILL_DIFFERS, NOW_EQUAL, COULD_NOT_RUN)
    }
    lines.append(
        f"{len(outcomes)} bundles: {counts[STILL_DIFFERS]} still differ, "
        f"{counts[NOW_EQUAL]} now equal, {counts[COULD_NOT_RUN]} could not run"
    )
    return "\n".join(lines) + "\n"


def _describe(answer: Answer) -> str:
    if answer.failed:
        return f"error {answer.sqlstate}: {answer.message}"
    if answer.columns is None:
        return f"tag {answer.tag!r}"
    s = answer.summary()
    return f"{s['rows']} rows, tag {answer.tag!r}, digest {s['digest']}"


def _difference(d: dict[str, Any], o: Outcome) -> str:
    where = d["kind"] + (f" at {d['position']}" if d.get("position") is not None else "")
    if d.get("columns"):
        where += f" [{', '.join(d['columns'])}]"
    labels = [a.label if a else side for a, side in ((o.truth, "truth"), (o.target, "target"))]
    sides = [
        f"{label} {json.dumps(d.get(side))[:200]}"
        for label, side in zip(labels, ("truth", "target"), strict=True)
        if d.get(side) is not None
    ]
    return f"{where}: " + " | ".join(sides)
