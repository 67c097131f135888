"""What a comparison needs to know about a statement, read from the SQL by PostgreSQL's parser.

Whether rows come in a defined order (ORDER BY, and by which output columns), whether LIMIT
picks a subset, which functions make answers differ between two servers, which tables are
read and written, whether the statement is provably read-only, and a fingerprint and a
redacted text to group and report it by. Nothing here imports Twisted and nothing raises on
user SQL: text the parser rejects is described as ``"unparsed"``.

The tree comes from ``pglast.parser.parse_sql_json`` (libpg_query's JSON), not from
``pglast.parse_sql``: building pglast's Python nodes costs ~10x more (~500 us for a 200
character query against ~50 us) and drops ``A_Const.location``, which redaction needs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pglast import parser

from twinkly.sql.redact import redact_literals

Tree = dict[str, Any]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Non-deterministic: two servers (or two runs) give different answers.
VOLATILE_FUNCTIONS = _words(
    "now current_timestamp current_time current_date localtime localtimestamp clock_timestamp"
    " statement_timestamp transaction_timestamp timeofday random random_normal setseed"
    " gen_random_uuid uuid_generate_v1 uuid_generate_v1mc uuid_generate_v4 uuidv4 uuidv7"
    " nextval currval lastval setval txid_current txid_current_if_assigned pg_current_xact_id"
    " pg_current_xact_id_if_assigned"
)
# Values that name the server or the connection to it rather than the data.
SERVER_IDENTITY_FUNCTIONS = _words(
    "version pg_backend_pid inet_server_port inet_server_addr inet_client_port inet_client_addr"
    " pg_postmaster_start_time pg_conf_load_time current_setting current_database"
    " current_catalog txid_current txid_current_if_assigned pg_current_xact_id"
    " pg_current_xact_id_if_assigned txid_current_snapshot pg_current_snapshot"
    " pg_current_wal_lsn pg_current_wal_insert_lsn pg_is_in_recovery pg_my_temp_schema"
)
# Settings whose value names the server, not the data: SHOW x and current_setting('x').
SERVER_IDENTITY_SETTINGS = _words(
    "server_version server_version_num data_directory config_file hba_file ident_file port"
    " listen_addresses cluster_name unix_socket_directories external_pid_file"
    " shared_preload_libraries data_directory_mode log_directory krb_server_keyfile"
    " ssl_cert_file ssl_key_file ssl_ca_file ssl_crl_file"
)
SYSTEM_COLUMNS = frozenset(("xmin", "xmax", "ctid", "cmin", "cmax", "tableoid"))
# Built-ins (unqualified or pg_catalog.) known to have no side effects. Short on purpose: a
# call of anything else, user functions included, makes a SELECT not provably read-only.
READ_ONLY_FUNCTIONS = _words(
    "count sum avg min max array_agg string_agg bool_and bool_or every json_agg jsonb_agg"
    " json_object_agg jsonb_object_agg stddev variance row_number rank dense_rank lag lead"
    " first_value last_value ntile percent_rank cume_dist lower upper length char_length"
    " octet_length substr substring btrim ltrim rtrim concat concat_ws replace position strpos"
    " split_part left right lpad rpad initcap reverse repeat starts_with format md5 encode"
    " decode regexp_replace regexp_match regexp_matches to_char to_number to_date to_timestamp"
    " date_trunc date_part extract timezone make_date make_interval abs round ceil ceiling"
    " floor trunc mod power sqrt sign json_build_object jsonb_build_object json_build_array"
    " jsonb_build_array to_json to_jsonb row_to_json jsonb_array_length jsonb_array_elements"
    " json_array_elements jsonb_each jsonb_extract_path_text jsonb_typeof unnest array_length"
    " cardinality array_position array_to_string string_to_array generate_series"
) | (SERVER_IDENTITY_FUNCTIONS - VOLATILE_FUNCTIONS)
_NOW_WORDS = frozenset(("now", "today", "tomorrow", "yesterday"))  # 'now'::timestamptz
_DATETIME_TYPES = frozenset(("timestamp", "timestamptz", "date", "time", "timetz"))

# DO runs procedural code like CALL does, with effects the SQL cannot show.
_KINDS = dict(
    pair.split(":")
    for pair in _words(
        "SelectStmt:select InsertStmt:insert UpdateStmt:update DeleteStmt:delete MergeStmt:merge"
        " CopyStmt:copy TransactionStmt:transaction VariableSetStmt:set DiscardStmt:set"
        " CallStmt:call DoStmt:call"
    )
)
# Utility statements that are not DDL; every other statement type is "ddl".
_OTHER = _words(
    "VariableShowStmt ExplainStmt PrepareStmt ExecuteStmt DeallocateStmt DeclareCursorStmt"
    " FetchStmt ClosePortalStmt ListenStmt UnlistenStmt NotifyStmt LockStmt VacuumStmt"
    " CheckPointStmt LoadStmt ConstraintsSetStmt ClusterStmt ReindexStmt AlterSystemStmt"
    " PLAssignStmt ReturnStmt"
)
_DML = frozenset(("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"))
_NOTED = _DML | _words(
    "RangeVar FuncCall A_Const ColumnRef SQLValueFunction ParamRef TypeCast SortBy"
    " CommonTableExpr LockingClause"
)
# Lists of relations that are the objects of a command, not tables it reads.
_OBJECT_LISTS = frozenset(("GrantStmt", "LockStmt", "TruncateStmt"))
_RELATION_OBJECTS = _words(
    "OBJECT_TABLE OBJECT_VIEW OBJECT_MATVIEW OBJECT_FOREIGN_TABLE OBJECT_SEQUENCE OBJECT_INDEX"
)
_JSON_DEPTH = 20000
# Source positions, which pglast too ignores when it compares nodes.
_POSITIONS = _words(
    "location arg_location name_location list_start list_end rexpr_list_start rexpr_list_end"
)
_SPACE = " \t\n\r\f\v"  # what PostgreSQL's scanner skips as whitespace


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """One statement, as far as comparing its answers on two servers is concerned."""

    sql: str  # the text of this one statement
    fingerprint: str  # pglast.fingerprint: literals and parameter values ignored
    redacted: str  # literals replaced by $n, numbered after the statement's own parameters
    kind: str  # select insert update delete merge copy ddl transaction set call other unparsed
    ordered: bool = False  # the top-level query has ORDER BY
    # 0-based output columns of the ORDER BY keys; () without ORDER BY; None when a key is
    # not an output column (or cannot be told to be one, as after a *)
    order_columns: tuple[int, ...] | None = None
    limited: bool = False  # LIMIT, OFFSET or FETCH FIRST at the top level (not LIMIT ALL)
    distinct_on: bool = False  # which row of each group is kept depends on the order
    set_operation: str | None = None  # union / intersect / except at the top level
    volatile: tuple[str, ...] = ()  # sorted, unique, lower-case
    server_identity: tuple[str, ...] = ()  # functions and system columns naming the server
    reads: frozenset[str] = frozenset()  # "schema.table" as written, lower-case, minus CTEs
    writes: frozenset[str] = frozenset()  # DML targets (CTEs too), COPY FROM, DDL relations
    read_only: bool = False  # provably: SELECT/VALUES/TABLE/SHOW, see _read_only
    # The relations read, exactly as named (quoted names keep their case): for catalog
    # look-ups, where ``reads`` (lower-cased, for matching) would name the wrong object.
    relations: tuple[tuple[str, ...], ...] = ()
    transaction: str | None = None  # begin commit rollback savepoint release rollback_to ...
    sets: tuple[str, ...] = ()  # GUCs a SET/RESET/set_config changes; "all" for RESET/DISCARD


def analyze(sql: str) -> tuple[StatementInfo, ...]:
    """One StatementInfo per statement of a (possibly multi-statement) SQL string, in order.

    Unparsable text gives a single StatementInfo with kind "unparsed" (fingerprint = a stable
    hash of the whitespace-normalised text, redacted = "<unparsed>", everything else
    empty/False). Never raises on user SQL: the proxy must keep relaying whatever it is sent.
    """
    try:
        if "\x00" in sql:  # libpg_query would silently stop reading at the NUL
            raise ValueError("NUL in SQL text")
        tree, notes = _loads(parser.parse_sql_json(sql))
        raw = sql if sql.isascii() else sql.encode("utf-8")  # JSON locations count bytes
        infos = []
        for entry, note in zip(tree["stmts"], notes, strict=True):
            start = entry.get("stmt_location", 0)
            length = entry.get("stmt_len", 0) or len(raw) - start
            infos.append(_describe(entry["stmt"], note, raw[start : start + length], start))
        return tuple(infos)
    except Exception:  # parse errors, and anything this module did not foresee
        return (_unparsed(sql),)


def _loads(text: str) -> tuple[Tree, list[_Notes]]:
    """Decode the parser's JSON, noting each statement's nodes on the way.

    A deeply nested expression (``a || b || ...`` hundreds deep) needs more than Python's
    default 1000 levels; 20000 still fits an 8 MB C stack.
    """
    try:
        decoder = _Decoder()
        return json.loads(text, object_hook=decoder), decoder.done
    except RecursionError:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, _JSON_DEPTH))
        try:
            decoder = _Decoder()
            return json.loads(text, object_hook=decoder), decoder.done
        finally:
            sys.setrecursionlimit(limit)


def _unparsed(sql: str) -> StatementInfo:
    text = " ".join(sql.split())
    digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).hexdigest()
    return StatementInfo(sql=sql, fingerprint=digest, redacted="<unparsed>", kind="unparsed")


class _Notes:
    """What the nodes of one statement say, nested queries included."""

    def __init__(self) -> None:
        self.range_vars: list[Tree] = []
        self.writes: set[str] = set()
        self.volatile: set[str] = set()  # besides calls: SQL value functions, 'now'::date
        self.identity: set[str] = set()  # besides calls: system columns
        self.calls: list[tuple[str | None, str]] = []  # (schema, name), lower-case
        self.sets: list[str] = []  # set_config('name', ...) with a literal name
        self.numbers: list[int] = []  # byte locations of numeric constants to redact
        self.keep: set[int] = set()  # ... except ORDER BY 1, GROUP BY 1, numeric(10, 2)
        self.max_param = 0
        self.has_cte = False
        self.modifies = False  # INSERT/UPDATE/DELETE/MERGE anywhere, e.g. in a CTE
        self.locks = False  # FOR UPDATE / SHARE / ...

    def note(self, kind: str, node: Tree) -> None:  # noqa: C901 - one branch per node kind
        """Note what one node (of a type in _NOTED) says."""
        if kind == "RangeVar":
            self.range_vars.append(node)
        elif kind == "FuncCall":
            parts = [p["String"]["sval"].lower() for p in node.get("funcname", ())]
            name, schema = parts[-1], (parts[0] if len(parts) > 1 else None)
            self.calls.append((schema, name))
            args = node.get("args") or ()
            if name == "set_config" and args and "sval" in args[0].get("A_Const", {}):
                self.sets.append(args[0]["A_Const"]["sval"]["sval"].lower())
        elif kind == "A_Const":
            if "ival" in node or "fval" in node:
                self.numbers.append(node.get("location", -1))
        elif kind == "ColumnRef":
            last = node.get("fields", ({},))[-1]
            if "String" in last and last["String"]["sval"].lower() in SYSTEM_COLUMNS:
                self.identity.add(last["String"]["sval"].lower())
        elif kind == "SQLValueFunction":
            name = node.get("op", "").removeprefix("SVFOP_").removesuffix("_N").lower()
            if name in VOLATILE_FUNCTIONS:
                self.volatile.add(name)
            elif name in SERVER_IDENTITY_FUNCTIONS:
                self.identity.add(name)
        elif kind == "ParamRef":
            self.max_param = max(self.max_param, node.get("number", 0))
        elif kind == "TypeCast":  # 'now'::timestamptz
            word = node.get("arg", {}).get("A_Const", {}).get("sval", {}).get("sval", "")
            type_name = node.get("typeName", {}).get("names", ({},))[-1].get("String", {})
            if word.strip().lower() in _NOW_WORDS and type_name.get("sval") in _DATETIME_TYPES:
                self.volatile.add(word.strip().lower())
        elif kind in _DML:
            self.writes.add(_qualified(node["relation"]))
            self.modifies = True
        elif kind == "SortBy":
            self.keep.add(_int_location(node.get("node")))
        else:
            self.has_cte |= kind == "CommonTableExpr"
            self.locks |= kind == "LockingClause"


class _Decoder:
    """A json.loads object_hook noting nodes as they are decoded: no second walk of the tree.

    The decoder completes children before their parent and statements one after the other,
    so everything noted before a RawStmt closes belongs to that statement.
    """

    def __init__(self) -> None:
        self.done: list[_Notes] = []
        self.notes = _Notes()

    def __call__(self, obj: Tree) -> Tree:
        if len(obj) == 1:
            ((key, node),) = obj.items()
            if key in _NOTED:
                self.notes.note(key, node)
            elif key == "stmt":
                self._close()
        elif "stmt" in obj:
            self._close()
        elif "typmods" in obj:  # as in numeric(10, 2): part of the type, not data
            self.notes.keep.update(_int_location(t) for t in obj["typmods"])
        elif "groupClause" in obj:
            self.notes.keep.update(_int_location(g) for g in obj["groupClause"])
        return obj

    def _close(self) -> None:
        self.done.append(self.notes)
        self.notes = _Notes()


def _scoped_reads(root: Tree) -> set[str]:
    """Tables read where WITH queries are: a WITH name hides a table only within its scope."""
    reads: set[str] = set()
    stack: list[tuple[Any, frozenset[str]]] = [(root, frozenset())]
    while stack:  # no recursion: deep expressions must not hit Python's limit
        value, ctes = stack.pop()
        if isinstance(value, list):
            stack.extend((item, ctes) for item in value)
            continue
        if not isinstance(value, dict):
            continue
        range_var = value.get("RangeVar")
        if range_var is not None:
            name = _qualified(range_var)
            if "schemaname" in range_var or name not in ctes:
                reads.add(name)
            continue
        clause = value.get("withClause")
        if clause:
            bodies = [c["CommonTableExpr"] for c in clause.get("ctes", ())]
            names = [c.get("ctename", "").lower() for c in bodies]
            every = ctes | frozenset(names)
            for i, body in enumerate(bodies):
                seen = every if clause.get("recursive") else ctes | frozenset(names[:i])
                stack.append((body.get("ctequery"), seen))
            ctes = every
        stack.extend((v, ctes) for k, v in value.items() if k != "withClause")
    return reads


def _describe(stmt: Tree, walk: _Notes, text: str | bytes, base: int) -> StatementInfo:
    """Describe one statement; ``text`` is its slice of the input, ``base`` its location."""
    ((node_type, node),) = stmt.items()
    kind = _KINDS.get(node_type) or ("other" if node_type in _OTHER else "ddl")
    query, read_only, transaction, sets = None, False, None, list(walk.sets)
    volatile = walk.volatile | {n for _, n in walk.calls if n in VOLATILE_FUNCTIONS}
    identity = walk.identity | {n for _, n in walk.calls if n in SERVER_IDENTITY_FUNCTIONS}
    if node_type in _OBJECT_LISTS:  # GRANT ... ON t, LOCK t, TRUNCATE t do not read t
        reads = set()
    elif walk.has_cte:
        reads = _scoped_reads(node)
    else:
        reads = {_qualified(r) for r in walk.range_vars}
    writes = walk.writes
    if node_type == "SelectStmt":
        query = node
        if "intoClause" in node:
            writes.add(_qualified(node["intoClause"]["rel"]))
        read_only = "intoClause" not in node and _read_only(walk, volatile)
    elif node_type in ("DeclareCursorStmt", "PrepareStmt"):
        query = node.get("query", {}).get("SelectStmt")  # what FETCH / EXECUTE will return
    elif node_type == "CopyStmt":
        query = node.get("query", {}).get("SelectStmt")
        if "relation" in node:
            (writes if node.get("is_from") else reads).add(_qualified(node["relation"]))
    elif node_type == "ExplainStmt":
        analyzes = any(
            o["DefElem"].get("defname") == "analyze"
            and o["DefElem"].get("arg", {}).get("String", {}).get("sval", "on")
            not in ("off", "false", "0", "no")
            for o in node.get("options", ())
        )
        if analyzes:
            read_only = _read_only(walk, volatile)
        else:  # only planned: nothing runs
            writes, read_only = set(), True
    elif node_type == "VariableShowStmt":
        read_only = True
        identity |= _shown_identity(node)
    elif node_type == "TransactionStmt":
        transaction = node.get("kind", "").removeprefix("TRANS_STMT_").lower()
        transaction = "begin" if transaction == "start" else transaction
    elif node_type == "VariableSetStmt":
        sets = _set_names(node)
    elif node_type == "DiscardStmt":
        sets = [node.get("target", "").removeprefix("DISCARD_").lower()]
    elif kind == "ddl":
        writes |= _ddl_targets(node_type, node)
    decoded = text if isinstance(text, str) else text.decode("utf-8")
    sql = decoded.strip(_SPACE)
    return StatementInfo(
        sql=sql,
        fingerprint=parser.fingerprint(sql),
        redacted=redact_literals(sql, _char_offsets(walk, text, base, decoded), walk.max_param),
        kind=kind,
        volatile=tuple(sorted(volatile)),
        server_identity=tuple(sorted(identity)),
        reads=frozenset(reads),
        relations=tuple(
            dict.fromkeys(
                tuple(r[k] for k in ("catalogname", "schemaname", "relname") if r.get(k))
                for r in walk.range_vars
                if _qualified(r) in reads
            )
        ),
        writes=frozenset(writes),
        read_only=read_only,
        transaction=transaction,
        sets=tuple(dict.fromkeys(sets)),
        **(_ordering(query) if query is not None else {}),
    )


def _shown_identity(show: Tree) -> set[str]:
    """SHOW of a setting that names the server (port, server_version...)."""
    name = show.get("name", "").lower()
    return {name} if name in SERVER_IDENTITY_SETTINGS else set()


def _read_only(walk: _Notes, volatile: set[str]) -> bool:
    """No data-modifying CTE, no row locks, nothing volatile, only allow-listed functions."""
    return not (walk.modifies or walk.locks or volatile) and all(
        schema in (None, "pg_catalog") and name in READ_ONLY_FUNCTIONS
        for schema, name in walk.calls
    )


def _char_offsets(walk: _Notes, text: str | bytes, base: int, decoded: str) -> set[int]:
    """Where the numbers to redact start, in characters from the start of the stripped text."""
    wanted = sorted(n - base for n in walk.numbers if n >= 0 and n not in walk.keep)
    if isinstance(text, bytes):  # JSON locations count UTF-8 bytes
        chars, done, at = [], 0, 0
        for n in wanted:  # decode piece by piece: linear even with many constants
            done += len(text[at:n].decode("utf-8", "ignore"))
            chars.append(done)
            at = n
        wanted = chars
    lead = len(decoded) - len(decoded.lstrip(_SPACE))
    return {n - lead for n in wanted}


def _qualified(range_var: Tree) -> str:
    parts = (range_var.get(k) for k in ("catalogname", "schemaname", "relname"))
    return ".".join(p for p in parts if p).lower()


def _int_location(node: Any) -> int:
    """Where an integer constant standing for an output column position is, else -1."""
    const = node.get("A_Const", {}) if isinstance(node, dict) else {}
    return const.get("location", -1) if "ival" in const else -1


def _set_names(node: Tree) -> list[str]:
    """GUC names a SET/RESET changes, as the server knows them."""
    kind, name = node.get("kind"), node.get("name", "").lower()
    if kind == "VAR_RESET_ALL":
        return ["all"]
    if kind == "VAR_SET_MULTI" and name in ("transaction", "session characteristics"):
        prefix = "default_" if name == "session characteristics" else ""
        return [prefix + a["DefElem"]["defname"] for a in node.get("args", ())]
    return ["transaction_snapshot" if name == "transaction snapshot" else name]


def _ddl_targets(node_type: str, node: Tree) -> set[str]:
    """Relations a DDL statement creates, changes or drops."""
    targets = {_qualified(node[k]) for k in ("relation", "view", "sequence") if k in node}
    if node_type == "CreateTableAsStmt":
        targets.add(_qualified(node["into"]["rel"]))
    elif node_type == "TruncateStmt":
        targets.update(_qualified(r["RangeVar"]) for r in node.get("relations", ()))
    elif node_type == "DropStmt" and node.get("removeType") in _RELATION_OBJECTS:
        for obj in node.get("objects", ()):
            names = obj.get("List", {}).get("items", ())
            targets.add(".".join(n["String"]["sval"] for n in names).lower())
    elif node_type == "RenameStmt" and "relation" in node and "newname" in node:
        schema = node["relation"].get("schemaname")
        targets.add(_qualified({"schemaname": schema, "relname": node["newname"]}))
    return targets


def _ordering(select: Tree) -> dict[str, Any]:
    """Order, limit and DISTINCT ON of the query whose rows the client receives."""
    limit = select.get("limitCount")
    limited = "limitOffset" in select or (
        limit is not None and not limit.get("A_Const", {}).get("isnull")  # LIMIT ALL
    )
    op = select.get("op", "SETOP_NONE")
    leaf = select
    while leaf.get("op", "SETOP_NONE") != "SETOP_NONE":
        leaf = leaf["larg"]  # output columns are named by the leftmost arm
    sort = [s["SortBy"]["node"] for s in select.get("sortClause", ())]
    columns = [_order_column(key, leaf, op != "SETOP_NONE") for key in sort]
    return {
        "ordered": bool(sort),
        "order_columns": None if None in columns else tuple(c for c in columns if c is not None),
        "limited": limited,
        "distinct_on": any(select.get("distinctClause", ())),
        "set_operation": None if op == "SETOP_NONE" else op.removeprefix("SETOP_").lower(),
    }


def _order_column(key: Tree, leaf: Tree, names_only: bool) -> int | None:
    """The output column an ORDER BY key sorts by, resolved the way PostgreSQL does."""
    outputs: list[tuple[str | None, Tree | None]] = []  # (name, expression)
    if "valuesLists" in leaf:
        width = len(leaf["valuesLists"][0]["List"]["items"])
        outputs = [(f"column{i + 1}", None) for i in range(width)]
    else:
        for target in leaf.get("targetList", ()):
            res = target["ResTarget"]
            val = res.get("val", {})
            if "A_Star" in val.get("ColumnRef", {}).get("fields", ({},))[-1]:
                break  # positions after a * are unknown
            outputs.append((res.get("name") or _column_name(val), val))
    const = key.get("A_Const", {})
    if "ival" in const:
        position = const["ival"].get("ival", 0) - 1
        return position if 0 <= position < len(outputs) else None
    fields = key.get("ColumnRef", {}).get("fields", ())
    if len(fields) == 1 and "String" in fields[0]:
        name = fields[0]["String"]["sval"]
        for i, (output_name, _) in enumerate(outputs):
            if output_name == name:
                return i
    if names_only:  # UNION/INTERSECT/EXCEPT sort by output column names or positions only
        return None
    try:
        return next(i for i, (_, v) in enumerate(outputs) if v is not None and _same(key, v))
    except (StopIteration, RecursionError):  # not an output column, or too deep to compare
        return None


def _column_name(val: Tree) -> str | None:
    """The name PostgreSQL gives an unaliased output column, for the common shapes."""
    if len(val) != 1:
        return None
    ((kind, node),) = val.items()
    if kind == "ColumnRef":
        last = node["fields"][-1]
        return last["String"]["sval"] if "String" in last else None
    if kind == "FuncCall":
        return node["funcname"][-1]["String"]["sval"]
    if kind == "TypeCast":
        inner = _column_name(node.get("arg", {}))
        return inner or node["typeName"]["names"][-1]["String"]["sval"]
    return {"CoalesceExpr": "coalesce", "CaseExpr": "case"}.get(kind)


def _same(a: Any, b: Any) -> bool:
    """Whether two expressions are written alike, wherever they are in the text."""
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(k in _POSITIONS or _same(v, b[k]) for k, v in a.items())
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


class StatementCache:
    """analyze() results cached by SQL text, least-recently-used.

    Bounded by entry count and by total cached SQL length (characters), so that a client
    sending endless distinct texts (literals inlined) costs bounded memory; hit/miss counters
    say whether the cache works. Parsing happens once per text, not per execution.
    """

    def __init__(self, max_entries: int = 5000, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0  # total length of the cached SQL texts
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, tuple[StatementInfo, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, sql: str) -> tuple[StatementInfo, ...]:
        found = self._entries.get(sql)
        if found is not None:
            self.hits += 1
            self._entries.move_to_end(sql)
            return found
        self.misses += 1
        infos = analyze(sql)
        if len(sql) <= self.max_bytes and self.max_entries > 0:
            self._entries[sql] = infos
            self.size += len(sql)
            while len(self._entries) > self.max_entries or self.size > self.max_bytes:
                old, _ = self._entries.popitem(last=False)
                self.size -= len(old)
        return infos
