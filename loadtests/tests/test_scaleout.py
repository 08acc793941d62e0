"""Unit tests of the scale-out runner's pure parts (`loadtests/scaleout.py`): the nginx and
replica configurations, the pg_hba.conf edit, the parsers and the verdicts. They need nothing
running; the runner itself is proven by running it (`loadtests/scale-out`)."""

import json
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import scaleout  # noqa: E402


class NginxConf(unittest.TestCase):
    def test_the_upstream_lists_every_instance_and_marks_the_down_ones(self):
        conf = scaleout.render_nginx_conf(Path("/x"), 8080, [(1001, True), (1002, False), (1003, True)])
        self.assertIn("server 127.0.0.1:1001 max_fails=0;", conf)
        self.assertIn("server 127.0.0.1:1002 max_fails=0 down;", conf)
        self.assertIn("server 127.0.0.1:1003 max_fails=0;", conf)
        self.assertIn("listen 127.0.0.1:8080;", conf)
        self.assertIn("pid /x/nginx.pid;", conf)
        self.assertIn("access_log /x/access.log scaleout;", conf)
        self.assertIn("X-Forwarded-For $proxy_add_x_forwarded_for", conf)

    def test_a_request_that_may_have_reached_keel_is_never_retried(self):
        conf = scaleout.render_nginx_conf(Path("/x"), 8080, [(1001, True)])
        (line,) = [l.strip() for l in conf.splitlines() if l.strip().startswith("proxy_next_upstream ")]
        self.assertEqual(line, "proxy_next_upstream error timeout;")
        self.assertNotIn("non_idempotent", conf.replace("`non_idempotent`", ""))

    def test_client_keepalive_is_off_only_when_asked(self):
        on = scaleout.render_nginx_conf(Path("/x"), 8080, [(1001, True)])
        off = scaleout.render_nginx_conf(Path("/x"), 8080, [(1001, True)], client_keepalive=False)
        self.assertIn("keepalive_timeout 65s;", on)
        self.assertIn("keepalive_timeout 0;", off)
        self.assertIn("keepalive 64;", off)  # to the upstreams, always

    def test_no_upstream_up_is_refused(self):
        with self.assertRaises(ValueError):
            scaleout.render_nginx_conf(Path("/x"), 8080, [(1001, False)])

    def test_nginx_accepts_the_configuration_when_it_is_installed(self):
        if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
            self.skipTest("nginx not installed")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        with tempfile.TemporaryDirectory() as d:
            conf = Path(d) / "nginx.conf"
            conf.write_text(scaleout.render_nginx_conf(Path(d), 8080, [(1001, True), (1002, False)])
                            .replace("user www-data;", ""))
            (Path(d) / "tmp").mkdir()
            done = subprocess.run([nginx, "-t", "-q", "-p", d, "-c", str(conf)], capture_output=True, text=True)
            self.assertEqual(done.returncode, 0, done.stderr)


class Hba(unittest.TestCase):
    ORIGINAL = "# comment\nlocal all all trust\nhost all all 127.0.0.1/32 trust\n"

    def test_the_line_goes_first_and_comes_out_leaving_the_file_as_it_was(self):
        marker = scaleout.hba_marker(4242)
        added = scaleout.hba_with_line(self.ORIGINAL, marker)
        self.assertEqual(added.splitlines()[0],
                         "host replication postgres 127.0.0.1/32 trust  # keel scale-out 4242")
        self.assertEqual(scaleout.hba_without_line(added, marker), self.ORIGINAL)

    def test_removing_takes_only_this_runs_line(self):
        other = scaleout.hba_with_line(self.ORIGINAL, scaleout.hba_marker(7))
        both = scaleout.hba_with_line(other, scaleout.hba_marker(70))
        self.assertEqual(scaleout.hba_without_line(both, scaleout.hba_marker(70)), other)
        self.assertEqual(scaleout.hba_without_line(both, scaleout.hba_marker(7)),
                         scaleout.hba_with_line(self.ORIGINAL, scaleout.hba_marker(70)))

    def test_the_replica_config_has_its_port_socket_and_the_primarys_minimums(self):
        conf = scaleout.render_replica_conf(5999, Path("/s"), {"max_connections": "100"}, "keel_x")
        self.assertIn("port = 5999", conf)
        self.assertIn("unix_socket_directories = '/s'", conf)
        self.assertIn("hot_standby = on", conf)
        self.assertIn("max_connections = 100", conf)
        self.assertIn("application_name=keel_x", conf)
        self.assertNotIn("slot", conf)


class Parsing(unittest.TestCase):
    def test_failures_count_setup_requests_and_transport_errors_but_not_backfill(self):
        rows = [
            {"name": "setup", "status_code": 200},
            {"name": "setup", "status_code": 502},
            {"name": "GET task", "status_code": 200},
            {"name": "GET task", "status_code": 304},
            {"name": "POST task", "status_code": 0, "error": "connection reset"},
            {"name": "GET task", "status_code": 503, "coordinated_omission_elapsed": 12},
            {"name": "GET task", "status_code": 500, "update": True},
        ]
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "r.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
            f = scaleout.request_failures(path)
        self.assertEqual(f["requests"], 5)
        self.assertEqual(f["failed"], 2)
        self.assertEqual(f["by_status"], {"502": 1, "transport error": 1})
        self.assertEqual(f["by_request"], {"POST task → transport error": 1, "setup → 502": 1})

    def test_emails_are_reconciled_by_job_id(self):
        log = "<a@keel>\t1\n<b@keel>\t2\n<b@keel>\t3\n<z@keel>\t4\n-\t5\n<other@elsewhere>\t6\n"
        received = scaleout.sink_ids(log)
        self.assertEqual(received, ["a", "b", "b", "z"])
        e = scaleout.reconcile_emails(["a", "b", "c"], received)
        self.assertEqual((e["due"], e["received"], e["delivered_once"], e["duplicates"], e["missing"],
                          e["unexpected"]), (3, 4, 1, 1, 1, 1))
        clean = scaleout.reconcile_emails(["a", "b"], ["b", "a"])
        self.assertEqual((clean["duplicates"], clean["missing"], clean["delivered_once"]), (0, 0, 2))

    def test_a_metric_sums_its_matching_series_and_is_none_when_absent(self):
        text = ('# TYPE keel_db_read_route_total counter\n'
                'keel_db_read_route_total{target="replica",query="x"} 5\n'
                'keel_db_read_route_total{target="primary",query="x"} 7\n'
                'keel_db_read_route_total{target="replica",query="y"} 2\n'
                'keel_db_read_route_totals_other 100\n')
        self.assertEqual(scaleout.metric_sum(text, "keel_db_read_route_total", {"target": "replica"}), 7)
        self.assertEqual(scaleout.metric_sum(text, "keel_db_read_route_total"), 14)
        self.assertIsNone(scaleout.metric_sum("up 1\n", "keel_db_read_route_total"))

    def test_the_access_log_counts_per_instance_retries_and_gateway_errors(self):
        log = "\n".join([
            "100.0|200|GET|127.0.0.1:1|200|0.001",
            "100.5|200|POST|127.0.0.1:2|200|0.002",
            "101.0|200|GET|127.0.0.1:2, 127.0.0.1:1|502, 200|0.003",
            "101.5|502|GET|127.0.0.1:1|502|0.001",
            "300.0|200|GET|127.0.0.1:1|200|0.001",
            "garbage",
        ])
        a = scaleout.parse_access_log(log, since=100, until=200)
        self.assertEqual(a["requests"], 4)
        self.assertEqual(a["per_upstream"], {"127.0.0.1:1": 3, "127.0.0.1:2": 1})
        self.assertEqual(a["retried"], 1)
        self.assertEqual(a["gateway_errors"], 1)

    def test_cpu_is_cores_over_the_interval(self):
        before = {"t": 0.0, "stat_total": 0, "stat_idle": 0, "ncpu": 2,
                  "groups": {"keel": {1: 100, 2: 50}, "nginx": {}}}
        after = {"t": 10.0, "stat_total": 2000, "stat_idle": 500, "ncpu": 2,
                 "groups": {"keel": {1: 600, 2: 550, 3: 999}, "nginx": {}}}
        c = scaleout.cpu_cores(before, after, clk_tck=100)
        self.assertEqual(c["machine"], 1.5)
        self.assertEqual(c["keel"], 1.0)  # pid 3 was not there at the start: left out
        self.assertEqual(c["nginx"], 0.0)
        self.assertEqual(c["other"], 0.5)  # the machine's busy time no group accounts for

    def test_cpu_per_request_is_cpu_seconds_over_requests_in_milliseconds(self):
        before = {"t": 0.0, "stat_total": 0, "stat_idle": 0, "ncpu": 2,
                  "groups": {"keel serve": {1: 100, 2: 50}, "postgres (all)": {7: 10}}}
        # 10 s on 2 cores at 100 ticks/s: 2000 ticks, 1500 busy = 15 CPU-seconds.
        after = {"t": 10.0, "stat_total": 2000, "stat_idle": 500, "ncpu": 2,
                 "groups": {"keel serve": {1: 600, 2: 550, 3: 999}, "postgres (all)": {7: 310}}}
        c = scaleout.cpu_ms_per_request(before, after, clk_tck=100, requests=3000)
        self.assertEqual(c["machine"], 5.0)  # 15 000 ms / 3 000
        self.assertEqual(c["keel serve"], 3.33)  # 10 s (pid 3 left out) / 3 000
        self.assertEqual(c["postgres (all)"], 1.0)
        self.assertEqual(c["other"], 0.67)  # 2 s no group accounts for
        self.assertEqual(scaleout.cpu_ms_per_request(before, after, 100, 0), {})

    def test_requests_between_counts_real_rows_sent_in_the_window(self):
        rows = [(0.5, 3.0, 200, True, "a"), (1.0, 3.0, 200, True, "a"), (1.5, 3.0, 503, True, "b"),
                (1.6, 3.0, 200, False, "a"), (2.0, 3.0, 200, True, "a")]
        # started at wall 100: the window [101, 102) holds the rows at 1.0 and 1.5 (1.6 is back-fill).
        self.assertEqual(scaleout.requests_between(rows, 100.0, 101.0, 102.0), (2, 1))
        self.assertEqual(scaleout.requests_between(rows, 100.0, 200.0, 300.0), (0, 0))


class Options(unittest.TestCase):
    def test_env_assignments_need_a_name_and_an_equals_sign(self):
        self.assertEqual(scaleout.parse_env(["TOKIO_WORKER_THREADS=1", "A_B=x=y", "E="]),
                         {"TOKIO_WORKER_THREADS": "1", "A_B": "x=y", "E": ""})
        for bad in ("NOEQUALS", "=1", "1A=2", "A-B=1"):
            with self.assertRaises(ValueError, msg=bad):
                scaleout.parse_env([bad])

    def test_a_variant_is_three_instances_unless_it_says_one(self):
        v = scaleout.parse_variant("TOKIO_WORKER_THREADS=1,KEEL_DB_MAX_CONNECTIONS=3")
        self.assertEqual(v["instances"], 3)
        self.assertEqual(v["env"], {"TOKIO_WORKER_THREADS": "1", "KEEL_DB_MAX_CONNECTIONS": "3"})
        self.assertEqual(v["label"], "3 instances, TOKIO_WORKER_THREADS=1 KEEL_DB_MAX_CONNECTIONS=3")
        v = scaleout.parse_variant("1:KEEL_PASSWORD_HASH_CONCURRENCY=3")
        self.assertEqual((v["instances"], v["label"]), (1, "1 instance, KEEL_PASSWORD_HASH_CONCURRENCY=3"))
        for bad in ("2:A=1", "1:", "A"):
            with self.assertRaises(ValueError, msg=bad):
                scaleout.parse_variant(bad)

    def test_a_bare_count_repeats_the_baseline_and_repeats_are_numbered(self):
        self.assertEqual(scaleout.parse_variant("1"), {"instances": 1, "env": {}, "label": "1 instance"})
        self.assertEqual(scaleout.parse_variant("3")["label"], "3 instances")
        self.assertEqual(scaleout.numbered(["1 instance", "3 instances", "1 instance", "1 instance"]),
                         ["1 instance", "3 instances", "1 instance (2nd)", "1 instance (3rd)"])

    def test_a_label_makes_a_file_name(self):
        self.assertEqual(scaleout.file_label("3 instances, A=1 B=2"), "3-instances-A=1-B=2")
        self.assertEqual(scaleout.file_label("1 instance at 300 req-s"), "1-instance-at-300-req-s")


def report(**over):
    r = {
        "rolling_restart": {"failures": {"requests": 1000, "failed": 0, "by_status": {}},
                            "restarts": [1, 2, 3, 4, 5], "expected_restarts": 5},
        "emails": {"due": 40, "received": 40, "duplicates": 0, "missing": 0, "unexpected": 0},
        "replica": {"streaming": True, "state": "streaming", "in_recovery": True,
                    "reads": {"replica_xact_commit": 0, "keel_read_route_replica": None,
                              "keel_supports_read_url": False, "required": False}},
    }
    for path, value in over.items():
        *keys, last = path.split("__")
        node = r
        for k in keys:
            node = node[k]
        node[last] = value
    return r


class Verdicts(unittest.TestCase):
    def results(self, r):
        return {name: result for name, result, _ in scaleout.verdicts(r)}

    def test_a_clean_run_passes_and_replica_reads_skip_on_a_keel_without_the_pool(self):
        v = self.results(report())
        self.assertEqual(v.pop("replica reads observed"), "SKIP")
        self.assertEqual(set(v.values()), {"PASS"})

    def test_one_failed_request_duplicate_or_missing_email_fails(self):
        r = report(rolling_restart__failures={"requests": 1000, "failed": 1, "by_status": {"502": 1}})
        self.assertEqual(self.results(r)["zero failed requests during the rolling restart"], "FAIL")
        for key in ("emails__duplicates", "emails__missing", "emails__unexpected"):
            self.assertEqual(self.results(report(**{key: 1}))["every assignment email delivered exactly once"],
                             "FAIL", key)
        self.assertEqual(self.results(report(emails__due=0))["every assignment email delivered exactly once"],
                         "FAIL")
        self.assertEqual(self.results(report(rolling_restart__restarts=[1]))["every instance restarted once mid-run"],
                         "FAIL")

    def test_without_the_rolling_restart_its_check_skips_and_the_others_still_count(self):
        v = self.results(report(rolling_restart=None))
        self.assertEqual(v["zero failed requests during the rolling restart"], "SKIP")
        self.assertNotIn("every instance restarted once mid-run", v)
        self.assertEqual(v["every assignment email delivered exactly once"], "PASS")
        r = report(emails__missing=2)
        r["rolling_restart"] = None
        self.assertEqual(self.results(r)["every assignment email delivered exactly once"], "FAIL")

    def test_replica_reads_fail_when_keel_could_route_them_and_none_came(self):
        r = report(replica__reads__keel_supports_read_url=True)
        self.assertEqual(self.results(r)["replica reads observed"], "FAIL")
        r = report(replica__reads__required=True)
        self.assertEqual(self.results(r)["replica reads observed"], "FAIL")
        r = report(replica__reads__replica_xact_commit=12)
        self.assertEqual(self.results(r)["replica reads observed"], "PASS")
        r = report(replica__reads__keel_read_route_replica=3.0, replica__reads__keel_supports_read_url=True)
        self.assertEqual(self.results(r)["replica reads observed"], "PASS")


class Summary(unittest.TestCase):
    def test_the_cost_table_has_a_row_per_configuration_and_the_ratio_to_the_first(self):
        row = {"label": "1 instance", "rate": 300, "seconds": 19.5, "requests_per_second": 299.0,
               "ok_share": 0.99, "p50_ms": 4.0, "p99_ms": 30.0, "sign_in_ok_per_second": 9.0,
               "cpu_ms_per_request": {"machine": 3.0, "keel serve": 1.0, "postgres (all)": 1.0,
                                      "keel worker": 0.2, "nginx": 0.2, "goose": 0.3, "other": 0.3}}
        three = {**row, "label": "3 instances",
                 "cpu_ms_per_request": {**row["cpu_ms_per_request"], "machine": 3.6, "keel serve": 1.5}}
        text = "\n".join(scaleout.render_cost([row, three]))
        self.assertIn("fixed 300 req/s", text)
        self.assertIn("3 instances / 1 instance: machine 1.20× CPU per request; keel serve +0.50 ms", text)
        self.assertEqual(sum(1 for l in text.splitlines() if " 299.0 " in l), 2)


if __name__ == "__main__":
    unittest.main()
