"""Unit tests of the capacity runner's pure parts (`loadtests/capacity.py`): reading CPU time
from /proc text, and the per-request arithmetic. `loadtests/test` runs them; they need nothing."""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import capacity  # noqa: E402

TCK = capacity.CLK_TCK


def stat(pid: int, comm: str, utime: int, stime: int) -> str:
    # The first 17 fields of a real /proc/PID/stat line (the rest do not matter here).
    return (f"{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 1234 0 0 0 {utime} {stime} 7 8 20 0 "
            "12 0 3456 574264 76676 18446744073709551615")


class ProcText(unittest.TestCase):
    def test_utime_plus_stime(self):
        self.assertEqual(capacity.stat_ticks(stat(42, "keel", 1500, 250)), 1750)

    def test_a_command_name_with_spaces_and_parentheses(self):
        self.assertEqual(capacity.stat_ticks(stat(7, "tokio (runtime) 1", 10, 5)), 15)
        self.assertEqual(capacity.stat_ticks(stat(8, ") x (", 3, 4)), 7)

    def test_the_machines_busy_ticks(self):
        text = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nintr 1 2\n"
        self.assertEqual(capacity.cpu_busy(text), (161, 1181))
        with self.assertRaises(ValueError):
            capacity.cpu_busy("intr 1 2\n")

    def test_components(self):
        of = capacity.component_of
        db = "keel_capacity_123"
        self.assertEqual(of("postgres", f"postgres: 15/main: postgres {db} 127.0.0.1(5432) idle", "postgres", db),
                         "postgres-mine")
        self.assertEqual(of("postgres", "postgres: 15/main: postgres keel_capacity_1234 127.0.0.1(1) idle",
                            "postgres", db), "postgres")
        self.assertEqual(of("postgres", "postgres: 15/main: walwriter", "postgres", db), "postgres")
        self.assertEqual(of("redis-server", "", "redis", db), "redis")
        self.assertEqual(of("beam.smp", "", "rabbitmq", db), "rabbitmq")
        self.assertIsNone(of("nginx", "", "www-data", db))

    def test_component_seconds_between_snapshots(self):
        before = {1: ("keel-serve", 100), 2: ("postgres-mine", 10), 3: ("postgres", 50), 4: ("redis", 5),
                  9: ("postgres", 40)}  # 9 ends in between: its time is lost
        after = {1: ("keel-serve", 100 + 2 * TCK), 2: ("postgres-mine", 10 + TCK), 3: ("postgres", 50 + TCK),
                 4: ("redis", 5), 5: ("postgres-mine", TCK // 2 * 2),  # started in between: counts whole
                 6: ("rabbitmq", TCK)}
        s = capacity.component_seconds(before, after)
        self.assertAlmostEqual(s["keel-serve"], 2.0)
        self.assertAlmostEqual(s["postgres-mine"], 1.0 + (TCK // 2 * 2) / TCK)
        # The server's total includes this run's backends.
        self.assertAlmostEqual(s["postgres"], 2.0 + (TCK // 2 * 2) / TCK)
        self.assertEqual(s["redis"], 0.0)
        self.assertAlmostEqual(s["rabbitmq"], 1.0)
        self.assertEqual(s["keel-worker"], 0.0)

    def test_a_reused_pid_of_another_component_counts_from_zero(self):
        s = capacity.component_seconds({7: ("redis", 5 * TCK)}, {7: ("postgres", TCK)})
        self.assertAlmostEqual(s["postgres"], 1.0)
        self.assertEqual(s["redis"], 0.0)


class Arithmetic(unittest.TestCase):
    def test_cpu_per_request_subtracts_the_idle_rate(self):
        # 3 s of CPU over a 20 s window, 0.05 cores idle → 2 s for 4 000 requests: 0.5 ms each.
        self.assertEqual(capacity.cpu_ms_per_request(3.0, 0.05, 20.0, 4000), 0.5)
        # Never negative, and no requests: no figure.
        self.assertEqual(capacity.cpu_ms_per_request(0.5, 0.05, 20.0, 4000), 0.0)
        self.assertIsNone(capacity.cpu_ms_per_request(3.0, 0.0, 20.0, 0))

    def test_per_core(self):
        self.assertEqual(capacity.per_core(0.5), 2000)
        self.assertEqual(capacity.per_core(3.0), 333)
        self.assertIsNone(capacity.per_core(0.0))
        self.assertIsNone(capacity.per_core(None))

    def test_class_counts_from_metrics(self):
        text = "\n".join([
            "# TYPE http_server_request_duration_seconds histogram",
            'http_server_request_duration_seconds_bucket{http_route="/v1/tasks/{id}",le="0.1",keel_route_class="read"} 9',
            'http_server_request_duration_seconds_count{http_request_method="GET",http_route="/v1/tasks/{id}",'
            'http_response_status_class="2xx",keel_route_class="read"} 10',
            'http_server_request_duration_seconds_count{http_request_method="GET",http_route="/v1/tasks/{id}",'
            'http_response_status_class="4xx",keel_route_class="read"} 2',
            'http_server_request_duration_seconds_count{http_request_method="PATCH",http_route="/v1/tasks/{id}",'
            'http_response_status_class="2xx",keel_route_class="write"} 3.0',
            'http_server_request_duration_seconds_count{http_route="/x"} 1',
        ])
        counts = capacity.class_counts(text)
        self.assertEqual(counts, {"read": 12.0, "write": 3.0, "unlabelled": 1.0})
        self.assertEqual(capacity.counts_delta({"read": 2.0, "list": 5.0}, counts),
                         {"read": 10.0, "unlabelled": 1.0, "write": 3.0})

    def test_cache_counter_sums(self):
        text = "\n".join([
            "# HELP keel_cache_requests_total Lookups",
            'keel_cache_requests_total{cache="task",outcome="hit"} 7',
            'keel_cache_requests_total{cache="task",outcome="miss"} 3',
            'keel_cache_fills_total{cache="task",result="stored"} 3',
            'keel_cache_requests_totally_else 99',
        ])
        self.assertEqual(capacity.ws.metric_sums(text, capacity.CACHE_COUNTERS),
                         {"keel_cache_requests_total": 10.0, "keel_cache_fills_total": 3.0,
                          "keel_cache_invalidations_total": 0.0})

    def test_redis_command_count(self):
        self.assertEqual(capacity.redis_total_commands("# Stats\r\ntotal_commands_processed:1234\r\n"), 1234)

    def test_figures_per_component(self):
        window = {"seconds": 10.0, "cpu_s": {c: 0.0 for c in capacity.COMPONENTS}}
        window["cpu_s"]["keel-serve"] = 1.0
        idle = {"cores": {c: 0.0 for c in capacity.COMPONENTS}}
        f = capacity.figures(window, idle, 1000)
        self.assertEqual(f["keel-serve"], {"cpu_ms": 1.0, "per_core": 1000})
        self.assertEqual(f["redis"], {"cpu_ms": 0.0, "per_core": None})


if __name__ == "__main__":
    unittest.main()
