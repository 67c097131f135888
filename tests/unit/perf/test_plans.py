"""twinkly.perf.plans: why a statement is slower on the target, read from the two EXPLAIN plans.

The missing-index, join, stale-statistics, sort and hash fixtures were captured from the
sandbox's PostgreSQL 15 and 18 (python -m devtools.sandbox up) with EXPLAIN (ANALYZE, BUFFERS,
FORMAT JSON); the first pair verbatim, the others trimmed to the keys the module reads.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from twinkly.perf.plans import _condition_columns, compare_plans, parse_plan, plan_summary

# SELECT o.id, o.amount FROM orders o WHERE o.customer_id = 42 AND o.status = 'open'
# with 100000 orders; only the PostgreSQL 15 copy has orders_customer_idx on (customer_id).
PG15_WITH_INDEX = """\
[
  {
    "Plan": {
      "Node Type": "Bitmap Heap Scan",
      "Parallel Aware": false,
      "Async Capable": false,
      "Relation Name": "orders",
      "Alias": "o",
      "Startup Cost": 4.67,
      "Total Cost": 160.65,
      "Plan Rows": 17,
      "Plan Width": 8,
      "Actual Startup Time": 0.137,
      "Actual Total Time": 0.622,
      "Actual Rows": 16,
      "Actual Loops": 1,
      "Recheck Cond": "(customer_id = 42)",
      "Rows Removed by Index Recheck": 0,
      "Filter": "(status = 'open'::text)",
      "Rows Removed by Filter": 34,
      "Exact Heap Blocks": 50,
      "Lossy Heap Blocks": 0,
      "Shared Hit Blocks": 50,
      "Shared Read Blocks": 2,
      "Shared Dirtied Blocks": 0,
      "Shared Written Blocks": 0,
      "Local Hit Blocks": 0,
      "Local Read Blocks": 0,
      "Local Dirtied Blocks": 0,
      "Local Written Blocks": 0,
      "Temp Read Blocks": 0,
      "Temp Written Blocks": 0,
      "Plans": [
        {
          "Node Type": "Bitmap Index Scan",
          "Parent Relationship": "Outer",
          "Parallel Aware": false,
          "Async Capable": false,
          "Index Name": "orders_customer_idx",
          "Startup Cost": 0.00,
          "Total Cost": 4.67,
          "Plan Rows": 50,
          "Plan Width": 0,
          "Actual Startup Time": 0.048,
          "Actual Total Time": 0.049,
          "Actual Rows": 50,
          "Actual Loops": 1,
          "Index Cond": "(customer_id = 42)",
          "Shared Hit Blocks": 0,
          "Shared Read Blocks": 2,
          "Shared Dirtied Blocks": 0,
          "Shared Written Blocks": 0,
          "Local Hit Blocks": 0,
          "Local Read Blocks": 0,
          "Local Dirtied Blocks": 0,
          "Local Written Blocks": 0,
          "Temp Read Blocks": 0,
          "Temp Written Blocks": 0
        }
      ]
    },
    "Planning": {
      "Shared Hit Blocks": 97,
      "Shared Read Blocks": 1,
      "Shared Dirtied Blocks": 0,
      "Shared Written Blocks": 0,
      "Local Hit Blocks": 0,
      "Local Read Blocks": 0,
      "Local Dirtied Blocks": 0,
      "Local Written Blocks": 0,
      "Temp Read Blocks": 0,
      "Temp Written Blocks": 0
    },
    "Planning Time": 0.813,
    "Triggers": [
    ],
    "Execution Time": 0.712
  }
]
"""

PG18_WITHOUT_INDEX = """\
[
  {
    "Plan": {
      "Node Type": "Seq Scan",
      "Parallel Aware": false,
      "Async Capable": false,
      "Relation Name": "orders",
      "Alias": "o",
      "Startup Cost": 0.00,
      "Total Cost": 2137.00,
      "Plan Rows": 17,
      "Plan Width": 8,
      "Actual Startup Time": 0.564,
      "Actual Total Time": 12.795,
      "Actual Rows": 16.00,
      "Actual Loops": 1,
      "Disabled": false,
      "Filter": "((customer_id = 42) AND (status = 'open'::text))",
      "Rows Removed by Filter": 99984,
      "Shared Hit Blocks": 637,
      "Shared Read Blocks": 0,
      "Shared Dirtied Blocks": 0,
      "Shared Written Blocks": 0,
      "Local Hit Blocks": 0,
      "Local Read Blocks": 0,
      "Local Dirtied Blocks": 0,
      "Local Written Blocks": 0,
      "Temp Read Blocks": 0,
      "Temp Written Blocks": 0
    },
    "Planning": {
      "Shared Hit Blocks": 77,
      "Shared Read Blocks": 0,
      "Shared Dirtied Blocks": 0,
      "Shared Written Blocks": 0,
      "Local Hit Blocks": 0,
      "Local Read Blocks": 0,
      "Local Dirtied Blocks": 0,
      "Local Written Blocks": 0,
      "Temp Read Blocks": 0,
      "Temp Written Blocks": 0
    },
    "Planning Time": 0.560,
    "Triggers": [
    ],
    "Execution Time": 12.872
  }
]
"""


def node(node_type: str, **keys: Any) -> dict:
    """A plan node; keyword names stand for keys with spaces (Plan_Rows -> "Plan Rows")."""
    return {"Node Type": node_type, **{k.replace("_", " "): v for k, v in keys.items()}}


def rows(planned: float, actual: float, loops: int = 1) -> dict:
    """The row counts of a node run under ANALYZE (actual rows are per loop, as EXPLAIN's)."""
    return {"Plan Rows": planned, "Actual Rows": actual, "Actual Loops": loops}


def explained(root: dict, ms: float = 1.0) -> list:
    """What EXPLAIN (ANALYZE, FORMAT JSON) returns around a plan."""
    return [{"Plan": root, "Planning Time": 0.1, "Triggers": [], "Execution Time": ms}]


def seq(relation: str, alias: str | None = None, **keys: Any) -> dict:
    return node("Seq Scan", Relation_Name=relation, Alias=alias or relation, **keys)


def hashed(child: dict, batches: int = 1, **keys: Any) -> dict:
    return node("Hash", Hash_Batches=batches, Original_Hash_Batches=batches, Plans=[child], **keys)


# SELECT c.name, sum(o.amount) FROM orders o JOIN customers c ON o.customer_id = c.id
# WHERE c.region = 'north' GROUP BY c.name ORDER BY 2 DESC; PostgreSQL 18 with enable_hashjoin off.
JOIN_15 = explained(
    node(
        "Sort",
        **rows(200, 200),
        Actual_Total_Time=34.786,
        Sort_Key=["(sum(o.amount)) DESC"],
        Sort_Method="quicksort",
        Sort_Space_Used=35,
        Sort_Space_Type="Memory",
        Plans=[
            node(
                "Aggregate",
                **rows(200, 200),
                Plans=[
                    node(
                        "Hash Join",
                        Join_Type="Inner",
                        Hash_Cond="(o.customer_id = c.id)",
                        **rows(10000, 10000),
                        Actual_Total_Time=30.074,
                        Plans=[
                            seq("orders", "o", **rows(100000, 100000), Actual_Total_Time=12.198),
                            hashed(
                                seq(
                                    "customers",
                                    "c",
                                    Filter="(region = 'north'::text)",
                                    **rows(200, 200),
                                    Actual_Total_Time=0.351,
                                ),
                                Peak_Memory_Usage=17,
                                **rows(200, 200),
                            ),
                        ],
                    )
                ],
            )
        ],
    ),
    34.999,
)
JOIN_18 = explained(
    node(
        "Sort",
        **rows(200, 200.0),
        Actual_Total_Time=65.216,
        Sort_Key=["(sum(o.amount)) DESC"],
        Sort_Method="quicksort",
        Sort_Space_Used=31,
        Sort_Space_Type="Memory",
        Plans=[
            node(
                "Aggregate",
                **rows(200, 200.0),
                Plans=[
                    node(
                        "Nested Loop",
                        Join_Type="Inner",
                        **rows(10000, 10000.0),
                        Actual_Total_Time=59.953,
                        Plans=[
                            seq("orders", "o", **rows(100000, 100000.0), Actual_Total_Time=11.52),
                            node(
                                "Memoize",
                                Cache_Key="o.customer_id",
                                **rows(1, 0.1, 100000),
                                Plans=[
                                    node(
                                        "Index Scan",
                                        Index_Name="customers_pkey",
                                        Relation_Name="customers",
                                        Alias="c",
                                        Index_Cond="(id = o.customer_id)",
                                        Filter="(region = 'north'::text)",
                                        **rows(1, 0.1, 2000),
                                        Actual_Total_Time=0.002,
                                    )
                                ],
                            ),
                        ],
                    )
                ],
            )
        ],
    ),
    65.434,
)
# SELECT count(*) FROM events WHERE kind = 'b': 100000 rows of kind 'b' added after the
# PostgreSQL 18 copy was last analyzed (autovacuum off), when it held only kind 'a'.
STALE_15 = explained(
    node(
        "Aggregate",
        **rows(1, 1),
        Plans=[seq("events", Filter="(kind = 'b'::text)", **rows(100007, 100000))],
    )
)
STALE_18 = explained(
    node(
        "Aggregate",
        **rows(1, 1.0),
        Plans=[seq("events", Filter="(kind = 'b'::text)", **rows(1, 100000.0))],
    )
)


def sorted_orders(method: str, space: int, space_type: str, temp_read: int) -> list:
    """SELECT * FROM orders ORDER BY status, amount (work_mem 64MB on 15, 64kB on 18)."""
    scan = seq("orders", **rows(100000, 100000), Shared_Read_Blocks=0, Temp_Read_Blocks=0)
    return explained(
        node(
            "Sort",
            **rows(100000, 100000),
            Sort_Key=["status", "amount"],
            Sort_Method=method,
            Sort_Space_Used=space,
            Sort_Space_Type=space_type,
            Shared_Read_Blocks=0,
            Temp_Read_Blocks=temp_read,
            Plans=[scan],
        )
    )


SORT_15 = sorted_orders("quicksort", 9320, "Memory", 0)
SORT_18 = sorted_orders("external merge", 3008, "Disk", 1110)


def joined_events(batches: int, events_estimate: int, temp_read: int) -> list:
    """SELECT o.id, e.kind FROM orders o JOIN events e ON o.id = e.id (work_mem 64kB on 18)."""
    return explained(
        node(
            "Hash Join",
            Join_Type="Inner",
            Hash_Cond="(e.id = o.id)",
            **rows(min(events_estimate, 100000), 100000),
            Temp_Read_Blocks=temp_read,
            Plans=[
                seq("events", "e", **rows(events_estimate, 101000)),
                hashed(seq("orders", "o", **rows(100000, 100000)), batches, **rows(100000, 100000)),
            ],
        )
    )


HASH_15 = joined_events(1, 101000, 0)
HASH_18 = joined_events(16, 89400, 613)


def insight(kind: str, message: str, relation: str | None = None) -> dict:
    return {"kind": kind, "message": message, "relation": relation}


def kinds(insights: list[dict]) -> list[str]:
    return [i["kind"] for i in insights]


class ParsePlanTests(SynchronousTestCase):
    def test_the_cell_of_a_real_explain(self) -> None:
        plan = parse_plan(PG15_WITH_INDEX)
        assert plan is not None
        self.assertEqual(len(plan), 1)
        self.assertEqual(plan[0]["Plan"]["Node Type"], "Bitmap Heap Scan")
        self.assertEqual(plan[0]["Execution Time"], 0.712)

    def test_a_bare_plan_object_is_wrapped_in_a_list(self) -> None:
        self.assertEqual(
            parse_plan('{"Plan": {"Node Type": "Result"}}'), [{"Plan": {"Node Type": "Result"}}]
        )

    def test_what_is_not_a_plan_gives_none(self) -> None:
        for text in ("", "not json", "[]", "[1]", "{}", "null", '"Seq Scan"', "[" * 100_000):
            self.assertIsNone(parse_plan(text), text[:20])
        self.assertIsNone(parse_plan(None))  # type: ignore[arg-type]


class SummaryTests(SynchronousTestCase):
    def test_rows_estimates_when_off_and_the_time_of_reads(self) -> None:
        plan = explained(
            node(
                "Sort",
                **rows(1200, 1200),
                Actual_Total_Time=50.2,
                Plans=[seq("orders", **rows(10, 1200), Actual_Total_Time=48.1)],
            )
        )
        self.assertEqual(
            plan_summary(plan),
            "Sort (rows 1200) <- Seq Scan on orders (rows 1200 of est. 10, 48.1 ms)",
        )

    def test_real_plans_indexes_and_loops(self) -> None:
        self.assertEqual(
            plan_summary(parse_plan(PG15_WITH_INDEX)),
            "Bitmap Heap Scan on orders (rows 16, 0.6 ms)"
            " <- Bitmap Index Scan on orders_customer_idx (rows 50)",
        )
        # Rows and times over all loops; Memoize only passes rows on and is left out.
        self.assertEqual(
            plan_summary(JOIN_18),
            "Sort (rows 200) <- Aggregate (rows 200) <- Nested Loop (rows 10000)"
            " <- Seq Scan on orders (rows 100000, 11.5 ms)"
            " <- Index Scan using customers_pkey on customers (rows 200 of est. 2000, 4.0 ms)",
        )

    def test_estimates_only_without_analyze(self) -> None:
        self.assertEqual(
            plan_summary([{"Plan": seq("orders", Plan_Rows=10)}]),
            "Seq Scan on orders (est. rows 10)",
        )

    def test_cut_to_the_limit(self) -> None:
        full = plan_summary(JOIN_18)
        self.assertEqual(plan_summary(JOIN_18, limit=len(full)), full)
        cut = plan_summary(JOIN_18, limit=40)
        self.assertEqual(cut, full[:39] + "…")
        self.assertEqual(len(cut), 40)
        self.assertEqual(plan_summary(JOIN_18, limit=0), "")

    def test_the_list_its_first_element_or_a_bare_node(self) -> None:
        expected = "Aggregate (rows 1) <- Seq Scan on events (rows 100000 of est. 1)"
        for plan in (STALE_18, STALE_18[0], STALE_18[0]["Plan"]):
            self.assertEqual(plan_summary(plan), expected)

    def test_no_plan_no_summary(self) -> None:
        for plan in (None, [], [None], {"Plan": None}, {"Plan": {}}, "Seq Scan", 42):
            self.assertEqual(plan_summary(plan), "", plan)  # type: ignore[arg-type]


class ConditionColumnsTests(SynchronousTestCase):
    def test_the_left_of_each_comparison_without_qualifiers(self) -> None:
        cases = {
            "(customer_id = 42)": ["customer_id"],
            "((o.customer_id = c.id) AND (status = 'x'::text))": ["customer_id", "status"],
            "(public.orders.customer_id = $1)": ["customer_id"],
            '("Customer Id" >= 3)': ["Customer Id"],
            "((b > 1) AND (a < 2) AND (b <= 9))": ["b", "a"],
            "(deleted_at IS NULL)": ["deleted_at"],
            "(id = ANY ('{1,2,3}'::integer[]))": ["id"],
            "((email)::text ~~ 'a%'::text)": ["email"],
            "((o.status)::text = 'open'::text)": ["status"],
            "(tags @> '{a}'::text[])": ["tags"],
        }
        for condition, expected in cases.items():
            self.assertEqual(_condition_columns(condition), expected, condition)

    def test_literals_and_casts_are_skipped(self) -> None:
        cases = {
            "((status)::text = 'a = (b) AND c > d'::text)": ["status"],
            "((name = 'it''s = (x)'::text) OR (kind = 'y'::text))": ["name", "kind"],
            r"(note = E'x\' OR y = 1'::text)": ["note"],
            "((name)::character varying = 'x = y'::character varying)": ["name"],
            "((at)::timestamp without time zone < now())": ["at"],
        }
        for condition, expected in cases.items():
            self.assertEqual(_condition_columns(condition), expected, condition)

    def test_expressions_name_no_column(self) -> None:
        for condition in (
            "(lower(email) = 'x'::text)",
            "((a + b) = 3)",
            "(f(o.a) = 1)",
            "((address).city = 'x'::text)",
            "(42 = x)",
            "(ROW(a, b) > ROW(1, 2))",
            "",
            None,
        ):
            self.assertEqual(_condition_columns(condition), [], condition)


class MissingIndexTests(SynchronousTestCase):
    def test_real_plans_with_the_index_on_one_server_only(self) -> None:
        insights = compare_plans(
            parse_plan(PG15_WITH_INDEX), parse_plan(PG18_WITHOUT_INDEX), "postgresql", "yugabytedb"
        )
        message = (
            "sequential scan of orders on yugabytedb where postgresql uses index"
            " orders_customer_idx on (customer_id): no index on orders(customer_id) on yugabytedb?"
        )
        self.assertEqual(insights, [insight("missing_index", message, "orders")])

    def test_index_scan_of_a_join_and_yugabytedb_keys(self) -> None:
        truth = node(
            "Nested Loop",
            Plans=[
                seq("customers", "c"),
                node(
                    "Index Scan",
                    Index_Name="orders_customer_status_idx",
                    Relation_Name="orders",
                    Alias="o",
                    Index_Cond="((customer_id = c.id) AND (status = 'open'::text))",
                ),
            ],
        )
        target = node(
            "Hash Join",
            Plans=[
                seq(
                    "orders",
                    "o",
                    Storage_Filter="(status = 'open'::text)",
                    Storage_Table_Read_Requests=98,
                ),
                hashed(seq("customers", "c", Remote_Filter="(region = 'north'::text)")),
            ],
        )
        self.assertEqual(
            compare_plans(truth, target, "postgresql", "yugabytedb"),
            [
                insight(
                    "missing_index",
                    "sequential scan of orders on yugabytedb where postgresql uses index"
                    " orders_customer_status_idx on (customer_id, status):"
                    " no index on orders(customer_id, status) on yugabytedb?",
                    "orders",
                ),
                insight(
                    "join_method",
                    "yugabytedb joins orders and customers with Hash Join"
                    " where postgresql uses Nested Loop",
                    "orders",
                ),
            ],
        )

    def test_bitmap_scans_of_yugabytedb_and_index_only_scans(self) -> None:
        yb_bitmap = node(
            "YB Bitmap Table Scan",
            Relation_Name="orders",
            Alias="orders",
            Plans=[
                node(
                    "Bitmap Index Scan",
                    Index_Name="orders_status_idx",
                    Index_Cond="(status = 'open'::text)",
                )
            ],
        )
        index_only = node(
            "Index Only Scan",
            Index_Name="orders_amount_idx",
            Relation_Name="orders",
            Alias="orders",
            Index_Cond="(amount > '10'::numeric)",
        )
        for truth, index, column in (
            (yb_bitmap, "orders_status_idx", "status"),
            (index_only, "orders_amount_idx", "amount"),
        ):
            self.assertEqual(
                compare_plans(truth, seq("orders")),
                [
                    insight(
                        "missing_index",
                        f"sequential scan of orders on target where truth uses index {index}"
                        f" on ({column}): no index on orders({column}) on target?",
                        "orders",
                    )
                ],
            )

    def test_an_index_read_without_condition(self) -> None:
        truth = node("Index Scan", Index_Name="orders_created_idx", Relation_Name="orders")
        self.assertEqual(
            compare_plans(truth, seq("orders")),
            [
                insight(
                    "missing_index",
                    "sequential scan of orders on target where truth uses index"
                    " orders_created_idx: is that index missing on target?",
                    "orders",
                )
            ],
        )

    def test_only_where_the_truth_reads_that_table_through_an_index(self) -> None:
        index_scan = node("Index Scan", Index_Name="orders_pkey", Relation_Name="orders")
        self.assertEqual(compare_plans(seq("orders"), seq("orders")), [])
        self.assertEqual(kinds(compare_plans(seq("orders"), index_scan)), ["different_plan"])
        self.assertEqual(kinds(compare_plans(index_scan, seq("customers"))), ["different_plan"])

    def test_two_reads_of_one_table_are_told_apart_by_alias(self) -> None:
        def self_join(first: dict) -> dict:
            second = node("Index Scan", Index_Name="orders_pkey", Relation_Name="orders", Alias="b")
            return node("Nested Loop", Plans=[first, second])

        # Both scan "a" whole and read "b" by its primary key: nothing is missing.
        self.assertEqual(
            compare_plans(self_join(seq("orders", "a")), self_join(seq("orders", "a"))), []
        )
        # Both aliases scanned whole on the target: one insight for the table.
        target = node("Nested Loop", Plans=[seq("orders", "a"), seq("orders", "b")])
        self.assertEqual(
            kinds(compare_plans(self_join(seq("orders", "a")), target)), ["missing_index"]
        )


class RowEstimateTests(SynchronousTestCase):
    def test_real_plans_with_stale_statistics_on_the_target(self) -> None:
        self.assertEqual(
            compare_plans(STALE_15, STALE_18, "pg15", "pg18"),
            [
                insight(
                    "row_estimate",
                    "row estimate off by 100000x on pg18 for events (est. 1, actual 100000):"
                    " stale statistics? run ANALYZE events on pg18",
                    "events",
                )
            ],
        )

    def test_two_worst_per_backend_target_first_each_error_once(self) -> None:
        def plan(customers: dict, orders: dict, join: dict) -> dict:
            hash_join = node(
                "Hash Join",
                **join,
                Plans=[seq("orders", **orders), hashed(seq("customers", **customers), **customers)],
            )
            return node("Sort", **join, Plans=[hash_join])  # the join's error passed up

        truth = plan(rows(10, 300), rows(1000, 1000), rows(500, 600))
        target = plan(rows(5, 500), rows(10, 1200), rows(50, 60000))
        self.assertEqual(
            compare_plans(truth, target),
            [
                insight(
                    "row_estimate",
                    "row estimate off by 1200x on target for the join of orders and customers"
                    " (est. 50, actual 60000): stale statistics? run ANALYZE orders, customers"
                    " on target",
                    "orders",
                ),
                insight(
                    "row_estimate",
                    "row estimate off by 120x on target for orders (est. 10, actual 1200):"
                    " stale statistics? run ANALYZE orders on target",
                    "orders",
                ),
                insight(
                    "row_estimate",
                    "row estimate off by 30x on truth for customers (est. 10, actual 300):"
                    " stale statistics? run ANALYZE customers on truth",
                    "customers",
                ),
            ],
        )

    def test_thresholds(self) -> None:
        def target(planned: float, actual: float, loops: int = 1) -> list[dict]:
            return compare_plans(seq("t", **rows(1, 1)), seq("t", **rows(planned, actual, loops)))

        self.assertEqual(target(1, 99), [])  # 99x, but fewer than 100 rows
        self.assertEqual(target(20, 199), [])  # 199 rows, but under 10x
        self.assertEqual(target(5, 100, 0), [])  # never executed
        message = (
            "row estimate off by 10x on target for t (est. 10, actual 100):"
            " stale statistics? run ANALYZE t on target"
        )
        self.assertEqual(target(10, 100), [insight("row_estimate", message, "t")])
        # Per loop: 5 estimated, 100 found, 10 times.
        self.assertIn(
            "off by 20x on target for t (est. 50, actual 1000)", target(5, 100, 10)[0]["message"]
        )
        # Estimates never go below one row per loop: 1 against 0.1 is no error.
        self.assertEqual(target(1, 0.1, 100000), [])
        self.assertEqual(target(1, 0, 5000), [])

    def test_a_node_reading_no_relation(self) -> None:
        function = node(
            "Function Scan", Function_Name="generate_series", Alias="g", **rows(1000, 10)
        )
        same = node("Function Scan", Function_Name="generate_series", Alias="g", **rows(10, 10))
        self.assertEqual(
            compare_plans(same, function),
            [
                insight(
                    "row_estimate",
                    "row estimate off by 100x on target for Function Scan (est. 1000, actual 10)",
                )
            ],
        )


class JoinMethodTests(SynchronousTestCase):
    def test_real_plans_hash_join_against_nested_loop(self) -> None:
        # The target's index scan of customers is no missing index (the truth scans it whole),
        # and the Memoize's 1 row estimated against 0.1 found per loop is no estimate error.
        self.assertEqual(
            compare_plans(JOIN_15, JOIN_18, "pg15", "pg18"),
            [
                insight(
                    "join_method",
                    "pg18 joins orders and customers with Nested Loop where pg15 uses Hash Join",
                    "orders",
                )
            ],
        )

    def test_joins_matched_by_their_relations(self) -> None:
        def orders_customers(method: str) -> dict:
            return node(method, Plans=[seq("orders"), hashed(seq("customers"))])

        items = node("Index Scan", Index_Name="items_pkey", Relation_Name="items")
        truth = node(
            "Merge Join",
            Plans=[
                node("Sort", Plans=[orders_customers("Hash Join")]),
                node("Sort", Plans=[seq("items")]),
            ],
        )
        target = node("YB Batched Nested Loop", Plans=[orders_customers("Hash Join"), items])
        self.assertEqual(
            compare_plans(truth, target, "postgresql", "yugabytedb"),
            [
                insight(
                    "join_method",
                    "yugabytedb joins orders, customers and items with YB Batched Nested Loop"
                    " where postgresql uses Merge Join",
                    "orders",
                )
            ],
        )


class SpillTests(SynchronousTestCase):
    def test_real_plans_sort_on_disk(self) -> None:
        self.assertEqual(
            compare_plans(SORT_15, SORT_18, "pg15", "pg18"),
            [
                insight(
                    "sort_spill",
                    "sort by status, amount spills to disk on pg18 (3008 kB): raise work_mem",
                    "orders",
                ),
                insight(
                    "more_io",
                    "pg18 reads more blocks than pg15 (1110 vs 0), mostly temporary files:"
                    " raise work_mem",
                ),
            ],
        )

    def test_real_plans_hash_in_batches(self) -> None:
        self.assertEqual(
            compare_plans(HASH_15, HASH_18, "pg15", "pg18"),
            [
                insight(
                    "sort_spill",
                    "hash of orders spills to disk in 16 batches on pg18:"
                    " raise work_mem (or hash_mem_multiplier)",
                    "orders",
                )
            ],
        )

    def test_an_external_sort_method_alone_and_several_relations(self) -> None:
        join = node("Hash Join", Plans=[seq("orders"), hashed(seq("customers"))])
        truth = node("Sort", Sort_Method="quicksort", Plans=[join])
        target = node("Sort", Sort_Method="external sort", Plans=[join])
        self.assertEqual(
            compare_plans(truth, target),
            [insight("sort_spill", "sort spills to disk on target: raise work_mem")],
        )

    def test_only_the_target_spilling_counts(self) -> None:
        self.assertEqual(compare_plans(SORT_18, SORT_15), [])
        self.assertEqual(compare_plans(HASH_18, HASH_15), [])


class MoreIoTests(SynchronousTestCase):
    def read(self, blocks: int, relation: str = "orders") -> dict:
        return seq(relation, Shared_Read_Blocks=blocks, Temp_Read_Blocks=0)

    def test_ten_times_more_from_disk(self) -> None:
        self.assertEqual(
            compare_plans(self.read(100), self.read(5000)),
            [
                insight(
                    "more_io",
                    "target reads 50x more blocks than truth (5000 vs 100), most from orders:"
                    " a cold cache, a bloated table or a worse access path?",
                    "orders",
                )
            ],
        )

    def test_thresholds(self) -> None:
        self.assertEqual(compare_plans(self.read(0), self.read(999)), [])
        self.assertEqual(compare_plans(self.read(501), self.read(5000)), [])
        self.assertEqual(kinds(compare_plans(self.read(0), self.read(1000))), ["more_io"])

    def test_counts_include_the_childrens(self) -> None:
        # EXPLAIN counts a scan's 600 blocks again in its parent: 600 read, not 1200.
        target = node("Aggregate", Shared_Read_Blocks=600, Plans=[self.read(600)])
        truth = node("Aggregate", Shared_Read_Blocks=0, Plans=[self.read(0)])
        self.assertEqual(compare_plans(truth, target), [])


class DifferentPlanTests(SynchronousTestCase):
    def test_when_nothing_else_explains_it(self) -> None:
        def join(first: str, second: str) -> dict:
            scans = {
                "orders": seq("orders", Plan_Rows=1000),
                "customers": seq("customers", Plan_Rows=10),
            }
            return node("Hash Join", Plan_Rows=100, Plans=[scans[first], hashed(scans[second])])

        self.assertEqual(
            compare_plans(
                join("orders", "customers"), join("customers", "orders"), "postgresql", "yugabytedb"
            ),
            [
                insight(
                    "different_plan",
                    "the plans differ: postgresql: Hash Join (est. rows 100)"
                    " <- Seq Scan on orders (est. rows 1000)"
                    " <- Seq Scan on customers (est. rows 10);"
                    " yugabytedb: Hash Join (est. rows 100)"
                    " <- Seq Scan on customers (est. rows 10)"
                    " <- Seq Scan on orders (est. rows 1000)",
                )
            ],
        )

    def test_same_shape_nothing_to_say(self) -> None:
        self.assertEqual(
            compare_plans(parse_plan(PG15_WITH_INDEX), parse_plan(PG15_WITH_INDEX)), []
        )
        self.assertEqual(compare_plans(JOIN_15, JOIN_15), [])
        # Timings and estimates differ a little, the shape not.
        self.assertEqual(compare_plans(JOIN_15, explained(JOIN_15[0]["Plan"], 99.0)), [])


class OrderingTests(SynchronousTestCase):
    def test_missing_index_first_truth_estimates_last(self) -> None:
        truth = node(
            "Sort",
            Sort_Space_Type="Memory",
            Shared_Read_Blocks=10,
            Plans=[
                node(
                    "Hash Join",
                    **rows(300, 300),
                    Plans=[
                        node(
                            "Index Scan",
                            Index_Name="orders_customer_idx",
                            Relation_Name="orders",
                            Index_Cond="(customer_id = 42)",
                            **rows(1200, 1200),
                        ),
                        hashed(seq("customers", **rows(10, 300))),
                    ],
                )
            ],
        )
        target = node(
            "Sort",
            Sort_Space_Type="Disk",
            Sort_Space_Used=12345,
            Shared_Read_Blocks=20000,
            Plans=[
                node(
                    "Nested Loop",
                    **rows(10, 1200),
                    Plans=[seq("orders", **rows(10, 1200)), seq("customers", **rows(300, 300))],
                )
            ],
        )
        insights = compare_plans(truth, target)
        self.assertEqual(
            kinds(insights),
            [
                "missing_index",
                "row_estimate",
                "row_estimate",
                "join_method",
                "sort_spill",
                "more_io",
                "row_estimate",
            ],
        )
        self.assertEqual(
            [i["message"].split(" for ")[0] for i in insights if i["kind"] == "row_estimate"],
            [
                "row estimate off by 120x on target",
                "row estimate off by 120x on target",
                "row estimate off by 30x on truth",
            ],
        )


class MalformedTests(SynchronousTestCase):
    BAD = (None, [], [1], [None], {}, {"Plan": None}, {"Plan": "x"}, "text", 42, [{"Plan": {}}])

    def test_no_plan_no_insight(self) -> None:
        for bad in self.BAD:
            self.assertEqual(compare_plans(bad, JOIN_18), [], bad)  # type: ignore[arg-type]
            self.assertEqual(compare_plans(JOIN_15, bad), [], bad)  # type: ignore[arg-type]

    def test_odd_values_are_ignored(self) -> None:
        odd = node(
            "Sort",
            Sort_Space_Type="Disk",
            Sort_Key="not a list",
            Sort_Space_Used="lots",
            Plan_Rows="many",
            Actual_Rows=None,
            Actual_Loops=True,
            Hash_Batches="2",
            Shared_Read_Blocks=[5000],
            Plans=[None, 1, "x", node("Seq Scan", Relation_Name=42, Plans="none"), {"a": 1}],
        )
        self.assertEqual(
            compare_plans(node("Sort", Plan_Rows=1), odd),
            [insight("sort_spill", "sort spills to disk on target: raise work_mem")],
        )
        self.assertEqual(plan_summary(odd), "Sort <- Seq Scan <- ?")

    def test_numbers_that_are_not_finite(self) -> None:
        # json.loads reads NaN and Infinity; no estimate, row count or time is made of them.
        target = parse_plan(
            '[{"Plan": {"Node Type": "Seq Scan", "Relation Name": "t", "Plan Rows": NaN,'
            ' "Actual Rows": Infinity, "Actual Loops": 1, "Actual Total Time": NaN,'
            ' "Shared Read Blocks": Infinity}}]'
        )
        self.assertEqual(compare_plans(seq("t", **rows(1, 1)), target), [])
        self.assertEqual(plan_summary(target), "Seq Scan on t")

    def test_a_very_deep_plan(self) -> None:
        deep = seq("t", **rows(1, 1))
        for _ in range(5000):
            deep = node("Materialize", Plans=[node("Limit", **rows(1, 1), Plans=[deep])])
        self.assertEqual(compare_plans(deep, deep), [])
        self.assertEqual(len(plan_summary(deep)), 300)
