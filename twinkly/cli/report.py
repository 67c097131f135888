"""``twinkly report FILE``: summarise a JSON-lines report file, grouped by statement fingerprint.

The file is read line by line and only aggregates are kept: per fingerprint the counts by kind,
the first and last times and one trimmed example event, so a report of millions of events is
summarised in constant memory per fingerprint. Lines that are not JSON event objects are
skipped and counted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from twinkly.report.events import BENIGN_KINDS, KINDS

# An insight explains a slow_query event; it is not a problem of its own.
NOT_PROBLEMS = BENIGN_KINDS | {"insight"}

NO_FINGERPRINT = "(none)"
MAX_LINE_BYTES = 64 * 1024 * 1024  # a longer line is counted as malformed, not read into memory
MAX_DIFFERENCES = 5
SIDES = ("truth", "target")
SIDE_FIELDS = ("label", "rows", "digest", "tag", "sqlstate", "message", "elapsed_ms")
EXAMPLE_FIELDS = ("id", "time", "kind", "session", "in_transaction", "caused_by", "reason")
SLOW_FIELDS = ("plan_summary", "insights")  # slow_query: both plans in a line, the causes
CLIP_JSON = 2000  # characters of JSON kept per value of an example (statement: CLIP_STATEMENT)
CLIP_STATEMENT = 10_000
TEXT_CELL = 48  # characters per cell in the side-by-side differences
TEXT_VALUE = 400  # characters of each differing column's value, shown whole up to this
TEXT_STATEMENT = 400


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", type=Path, help="report file (JSON lines)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--since", type=parse_time, metavar="ISO8601", help="only events at or after this time"
    )
    parser.add_argument(
        "--kind",
        dest="kinds",
        action="extend",
        nargs="+",
        choices=KINDS,
        metavar="KIND",
        help=f"only events of these kinds ({', '.join(KINDS)})",
    )
    parser.add_argument(
        "--top",
        type=int,
        default=20,
        metavar="N",
        help="show the N fingerprints with most problems (default 20; 0 shows all)",
    )


def main(
    argv: list[str] | None = None, stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> int:
    """``twinkly report`` on its own (``python -m twinkly report`` goes through here too)."""
    parser = argparse.ArgumentParser(prog="twinkly report", description=__doc__)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    return run(args, stdout, stderr)


def run(
    args: argparse.Namespace, stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    summary = Summary(since=args.since, kinds=args.kinds)
    try:
        summary.read(args.file)
    except FileNotFoundError:
        print(f"twinkly report: no such file: {args.file}", file=err)
        return 2
    except OSError as e:
        print(f"twinkly report: cannot read {args.file}: {e.strerror or e}", file=err)
        return 2
    result = summary.to_dict(top=args.top, file=str(args.file))
    if args.json:
        json.dump(result, out, indent=2)
        out.write("\n")
    else:
        out.write(render_text(result))
    out.flush()
    return 0


def parse_time(text: str) -> datetime.datetime:
    """ISO 8601 -> an aware datetime; a time without a zone is taken as UTC."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


# --- aggregation --------------------------------------------------------------------------


class Group:
    """What is kept per fingerprint: counts, first/last time, one example."""

    __slots__ = ("example", "example_benign", "fingerprint", "first", "insight", "kinds", "last")

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.kinds: Counter[str] = Counter()
        self.first: datetime.datetime | None = None
        self.last: datetime.datetime | None = None
        self.example: dict[str, Any] | None = None
        self.example_benign = True
        self.insight: str | None = None  # the latest insight event's answer

    def add(self, event: dict[str, Any], kind: str, moment: datetime.datetime | None) -> None:
        self.kinds[kind] += 1
        if moment is not None:
            if self.first is None or moment < self.first:
                self.first = moment
            if self.last is None or moment > self.last:
                self.last = moment
        # The example is the first event, replaced once by the first real problem if the
        # group started with noise: the reader wants to see what actually went wrong.
        if kind == "insight":
            answer = event.get("answer")
            text = answer.get("text") if isinstance(answer, dict) else None
            self.insight = _clip(f"({event.get('provider')}) {text}") if text else self.insight
        benign = kind in NOT_PROBLEMS
        if self.example is None or (self.example_benign and not benign):
            self.example = trim_example(event)
            self.example_benign = benign

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    @property
    def problems(self) -> int:
        return sum(n for kind, n in self.kinds.items() if kind not in NOT_PROBLEMS)


class Summary:
    def __init__(
        self, since: datetime.datetime | None = None, kinds: list[str] | None = None
    ) -> None:
        self.since = since
        self.kinds = frozenset(kinds) if kinds else None
        self.lines = 0
        self.malformed = 0
        self.filtered_out = 0
        self.totals: Counter[str] = Counter()
        self.groups: dict[str, Group] = {}

    def read(self, path: Path, max_line: int = MAX_LINE_BYTES) -> None:
        with open(path, "rb") as f:
            for line in iter_lines(f, max_line):
                self.add_line(line)

    def add_line(self, line: bytes | None) -> None:
        """One line of the file; ``None`` stands for a line too long to read."""
        if line is not None and not line.strip():
            return
        self.lines += 1
        try:
            event = json.loads(line) if line is not None else None
        except ValueError:  # also UnicodeDecodeError
            event = None
        kind = event.get("kind") if isinstance(event, dict) else None
        if not isinstance(kind, str):
            self.malformed += 1
            return
        assert isinstance(event, dict)
        moment = _event_time(event.get("time"))
        if moment is None and (event.get("time") is not None or self.since is not None):
            self.malformed += 1  # a bad time, or none where --since needs one
            return
        if (self.kinds is not None and kind not in self.kinds) or (
            self.since is not None and moment is not None and moment < self.since
        ):
            self.filtered_out += 1
            return
        fingerprint = event.get("fingerprint")
        key = fingerprint if isinstance(fingerprint, str) and fingerprint else NO_FINGERPRINT
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(key)
        group.add(event, kind, moment)
        self.totals[kind] += 1

    def ordered_groups(self) -> list[Group]:
        """Most problems first; groups with only noise/nondeterministic events last."""
        return sorted(self.groups.values(), key=lambda g: (-g.problems, -g.total, g.fingerprint))

    def to_dict(self, top: int = 0, file: str | None = None) -> dict[str, Any]:
        groups = self.ordered_groups()
        shown = groups[:top] if top > 0 else groups
        return {
            "file": file,
            "lines": self.lines,
            "malformed_lines": self.malformed,
            "filtered_out": self.filtered_out,
            "events": sum(self.totals.values()),
            "filters": {
                "since": _iso(self.since),
                "kinds": sorted(self.kinds, key=_kind_order) if self.kinds else None,
            },
            "totals": {k: self.totals[k] for k in sorted(self.totals, key=_kind_order)},
            "fingerprints": len(groups),
            "groups": [
                {
                    "fingerprint": g.fingerprint,
                    "events": g.total,
                    "problems": g.problems,
                    "kinds": {k: g.kinds[k] for k in sorted(g.kinds, key=_kind_order)},
                    "first": _iso(g.first),
                    "last": _iso(g.last),
                    "example": g.example,
                    "insight": g.insight,
                }
                for g in shown
            ],
        }


def iter_lines(f: IO[bytes], max_line: int) -> Iterator[bytes | None]:
    """The file's lines; ``None`` for a line longer than ``max_line`` (skipped unread)."""
    while True:
        line = f.readline(max_line + 1)
        if not line:
            return
        if len(line) > max_line and not line.endswith(b"\n"):
            while True:  # skip the rest of the over-long line
                rest = f.readline(max_line)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
        else:
            yield line


def trim_example(event: dict[str, Any]) -> dict[str, Any]:
    """The parts of an event the summary shows, each bounded in size."""
    example: dict[str, Any] = {k: _clip(event.get(k)) for k in EXAMPLE_FIELDS}
    statement = event.get("statement")
    if isinstance(statement, str) and len(statement) > CLIP_STATEMENT:
        statement = statement[:CLIP_STATEMENT] + "..."
    example["statement"] = statement
    example["parameters"] = _clip(event.get("parameters"))
    for key in SLOW_FIELDS:
        if key in event:
            example[key] = _clip(event[key])
    differences = event.get("differences")
    if isinstance(differences, list):
        example["differences"] = [_clip(d) for d in differences[:MAX_DIFFERENCES]]
        example["differences_total"] = len(differences)
    else:
        example["differences"] = None
        example["differences_total"] = 0
    for side in SIDES:
        value = event.get(side)
        example[side] = (
            {k: _clip(value[k]) for k in SIDE_FIELDS if k in value}
            if isinstance(value, dict)
            else None
        )
    return example


def _clip(value: Any, limit: int = CLIP_JSON) -> Any:
    """``value`` itself if small; otherwise the start of its JSON text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "..."
    text = json.dumps(value)
    return value if len(text) <= limit else text[:limit] + "..."


def _event_time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _iso(moment: datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    moment = moment.astimezone(datetime.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _kind_order(kind: str) -> tuple[int, int, str]:
    """Problems first (in KINDS order, unknown kinds after), then the benign kinds."""
    known = KINDS.index(kind) if kind in KINDS else len(KINDS)
    return (kind in BENIGN_KINDS, known, kind)


# --- text output --------------------------------------------------------------------------


def render_text(summary: dict[str, Any]) -> str:
    out: list[str] = [f"Twinkly report: {summary['file']}"]
    line = f"  {summary['events']} events from {summary['lines']} lines"
    if summary["filtered_out"]:
        line += f", {summary['filtered_out']} filtered out"
    out.append(line)
    filters = summary["filters"]
    if filters["since"] or filters["kinds"]:
        since = f"since {filters['since']}" if filters["since"] else ""
        kinds = f"kinds {', '.join(filters['kinds'])}" if filters["kinds"] else ""
        out.append("  filters: " + "; ".join(p for p in (since, kinds) if p))
    out.append("")
    out.append("Totals by kind:")
    width = max((len(k) for k in summary["totals"]), default=0)
    for kind, count in summary["totals"].items():
        out.append(f"  {kind:<{width}}  {count:>8}")
    if not summary["totals"]:
        out.append("  (no events)")
    groups = summary["groups"]
    if groups:
        out.append("")
        out.append(
            f"Fingerprints ({len(groups)} of {summary['fingerprints']}, most problems first):"
        )
    for number, group in enumerate(groups, 1):
        out.append("")
        out.extend(_render_group(number, group))
    out.append("")
    out.append(f"{summary['malformed_lines']} malformed lines skipped")
    return "\n".join(out) + "\n"


def _render_group(number: int, group: dict[str, Any]) -> list[str]:
    kinds = ", ".join(f"{kind} {count}" for kind, count in group["kinds"].items())
    count = group["events"]
    noun = "event" if count == 1 else "events"
    lines = [f"#{number} {group['fingerprint']}: {count} {noun} ({kinds})"]
    lines.append(f"    first {group['first'] or '?'}   last {group['last'] or '?'}")
    example = group["example"] or {}
    statement = example.get("statement")
    if statement:
        text = " ".join(str(statement).split())
        if len(text) > TEXT_STATEMENT:
            text = text[:TEXT_STATEMENT] + "..."
        lines.append(f"    statement: {text}")
    lines.append(f"    example {example.get('id')} ({example.get('kind')})")
    if example.get("reason"):
        lines.append(f"    reason: {example['reason']}")
    differences = example.get("differences") or []
    if differences:
        total = example.get("differences_total", len(differences))
        lines.append(f"    differences ({len(differences)} of {total}), truth | target:")
        lines.extend("      " + row for row in _side_by_side(differences))
    for side in SIDES:
        if example.get(side):
            lines.append(f"    {side:<6} {_describe_side(example[side])}")
    plans = example.get("plan_summary")
    if isinstance(plans, dict):
        for side in SIDES:
            lines.append(f"    {side} plan: {plans.get(side) or 'not taken'}")
    insights = example.get("insights")
    if isinstance(insights, list):
        lines.extend(
            f"    likely cause: {item.get('message')}"
            for item in insights[:3]
            if isinstance(item, dict)
        )
    if group.get("insight"):
        lines.append(f"    insight {group['insight']}")
    return lines


def _side_by_side(differences: list[Any]) -> list[str]:
    rows: list[tuple[str, str, str]] = []
    values: dict[int, list[str]] = {}  # row -> its differing columns' values, in full
    for item in differences:
        if isinstance(item, dict) and ("truth" in item or "target" in item):
            shown = {k: v for k, v in item.items() if k not in SIDES and k != "positions"}
            where = " ".join(f"{k}={_cell(v)}" for k, v in shown.items())
            values[len(rows)] = _differing_values(item)
            rows.append((where, _cell(item.get("truth")), _cell(item.get("target"))))
        elif isinstance(item, list | tuple) and len(item) == 2:
            rows.append(("", _cell(item[0]), _cell(item[1])))
        else:
            rows.append(("", _cell(item), ""))
    where_w = max(len(r[0]) for r in rows)
    truth_w = max(len(r[1]) for r in rows)
    out = []
    for number, (where, truth, target) in enumerate(rows):
        out.append((f"{where:<{where_w}}  " if where_w else "") + f"{truth:<{truth_w}} | {target}")
        out.extend("  " + line for line in values.get(number, ()))
    return out


def _differing_values(item: dict[str, Any]) -> list[str]:
    """``* name: truth | target`` for each differing column of a changed row, the values
    whole (up to TEXT_VALUE characters): rows cut at a cell's width can hide the one
    difference, e.g. in a timestamp's microseconds."""
    truth, target = item.get("truth"), item.get("target")
    if not isinstance(truth, list) or not isinstance(target, list):
        return []
    given = item.get("columns")
    names: list = given if isinstance(given, list) else []
    positions = item.get("positions")
    if not isinstance(positions, list) or len(positions) != len(names):
        # Older events: the fields whose text differs, named when they are the named ones.
        positions = [
            k for k in range(max(len(truth), len(target))) if _at(truth, k) != _at(target, k)
        ]
        if len(positions) != len(names):
            names = [f"#{k + 1}" for k in positions]
    return [
        f"* {name}: {_value(_at(truth, k))} | {_value(_at(target, k))}"
        for name, k in zip(names, positions, strict=False)
        if isinstance(k, int)
    ]


def _at(row: list, k: int) -> Any:
    return row[k] if 0 <= k < len(row) else None


def _value(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= TEXT_VALUE else text[: TEXT_VALUE - 3] + "..."


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= TEXT_CELL else text[: TEXT_CELL - 3] + "..."


def _describe_side(side: dict[str, Any]) -> str:
    parts = [f"({side['label']})"] if side.get("label") else []
    if side.get("rows") is not None:
        parts.append(f"rows={side['rows']}")
    if side.get("tag"):
        parts.append(f"tag={side['tag']!r}")
    if side.get("sqlstate") or side.get("message"):
        parts.append(f"error {side.get('sqlstate') or '?'}: {side.get('message') or ''}".rstrip())
    if side.get("elapsed_ms") is not None:
        parts.append(f"{side['elapsed_ms']} ms")
    return " ".join(parts) if parts else "-"
