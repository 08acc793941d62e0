"""Tests of the workshop runner (`loadtests/workshop.py`): `loadtests/test` runs them.

The unit tests need nothing. The end-to-end tests run the real commands, briefly, against a
Keel that this file starts on a tiny seeded database of its own (ports, Redis prefix and
RabbitMQ names of its own; dropped afterwards), so that the flags the runner changes can be
read back after it ends, or after it is killed half-way.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import workshop  # noqa: E402

ROOT = workshop.ROOT
TOKEN = workshop.DEV_ADMIN_TOKEN


class Units(unittest.TestCase):
    def test_durations_parse_and_bad_ones_are_refused(self):
        self.assertEqual(workshop.seconds("1500ms"), 1.5)
        self.assertEqual(workshop.seconds("2m"), 120)
        self.assertEqual(workshop.seconds("7"), 7)
        with self.assertRaises(ValueError):
            workshop.seconds("soon")

    def test_a_schedule_parses_sorted_and_rejects_mistakes(self):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "s.toml"
            path.write_text(
                '[[step]]\nat = "20s"\nfault = "redis"\nlatency_ms = 300\n'
                '[[step]]\nat = "5s"\nflag = "cache"\nenabled = false\n'
            )
            steps = workshop.load_schedule(path)
            self.assertEqual([s.at for s in steps], [5, 20])
            self.assertEqual(steps[0].describe(), "cache off")
            self.assertEqual(steps[1].describe(), "redis +300 ms, 0% errors")
            for bad in (
                '[[step]]\nat = "1s"\nflag = "nope"\nenabled = true\n',
                '[[step]]\nat = "1s"\nflag = "cache"\n',
                '[[step]]\nat = "1s"\nfault = "redis"\nerror_rate = 2\n',
                '[[step]]\nflag = "cache"\nenabled = true\n',
                '[[step]]\nat = "1s"\nflag = "cache"\nenabled = true\nfault = "redis"\n',
                '[[step]]\nat = "1s"\nflag = "cache"\nenabled = true\ncolour = "red"\n',
            ):
                path.write_text(bad)
                with self.assertRaises(workshop.RunError, msg=bad):
                    workshop.load_schedule(path)
            # The committed schedules parse.
            for committed in (ROOT / "loadtests" / "schedules").glob("*.toml"):
                self.assertTrue(workshop.load_schedule(committed), committed)

    def test_percentiles_are_nearest_rank_over_every_sample(self):
        values = sorted(float(v) for v in range(1, 101))
        self.assertEqual(workshop.percentile(values, 50), 50)
        self.assertEqual(workshop.percentile(values, 99), 99)
        self.assertEqual(workshop.percentile(values, 100), 100)
        self.assertEqual(workshop.percentile([], 99), 0)

    def test_a_summary_counts_the_window_and_corrects_for_omission(self):
        # 10 s window; 1 000 real requests of 1 ms, 20 back-filled of 1 s.
        rows = [(i / 100, 1.0, 200, True, "GET task") for i in range(1000)]
        rows += [(5.0, 1000.0, 200, False, "GET task") for _ in range(20)]
        rows += [(11.0, 5.0, 503, True, "GET task")]  # after the window
        run = workshop.RunResult("x", 0, rows, (0, 10.0), {"keel_shed_total": 2, "http_server_request_duration_seconds_count": 0},
                                 {"keel_shed_total": 12, "http_server_request_duration_seconds_count": 1000}, [])
        s = workshop.summarise(run)
        self.assertEqual(s["requests"], 1000)
        self.assertEqual(s["requests_per_second"], 100)
        self.assertEqual(s["p50_ms"], 1.0)
        self.assertEqual(s["p99_ms"], 1000.0)  # corrected: the back-filled samples count
        self.assertEqual(s["p99_ms_uncorrected"], 1.0)
        self.assertEqual(s["backfilled"], 20)
        self.assertEqual(s["shed_rate"], 0.01)

    def test_charts_are_well_formed_svg_with_the_switches_marked(self):
        svg = workshop.svg_chart(
            "t", {"p99 off": [(0, 5), (1, 500)], "p99 on": [(2, 3)]}, [(2, "switch: on")], "ms", log_y=True
        )
        root = ET.fromstring(svg)
        self.assertTrue(root.tag.endswith("svg"))
        self.assertIn("switch: on", svg)
        self.assertEqual(svg.count("<polyline"), 2)


def admin_get(admin: str, path: str) -> dict:
    request = urllib.request.Request(admin + path, headers={"authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def flags(admin: str) -> dict:
    return {f["name"]: f["enabled"] for f in admin_get(admin, "/admin/flags")["items"]}


class EndToEnd(unittest.TestCase):
    """A Keel of the test's own, on a seeded database of 2 000 tasks."""

    @classmethod
    def setUpClass(cls):
        os.environ.setdefault("KEEL_LOAD_PROFILE", "debug")
        cls.tmp = Path(tempfile.mkdtemp(prefix="keel-workshop-test-"))
        cls.keel, cls.sink, cls.goose = workshop.build()
        args = type("Args", (), {})()
        args.pg_server = os.environ.get("PG_SERVER", "postgres://postgres@127.0.0.1:5432")
        args.tasks, args.tokens, args.smtp_delay = 2000, 40, "20ms"
        cls.guardian = workshop.Guardian(cls.tmp / "unused.json", TOKEN)
        cls.stack = workshop.own_stack(args, cls.tmp, cls.keel, cls.sink, cls.guardian)

    @classmethod
    def tearDownClass(cls):
        cls.stack.stop()
        cls.guardian.close()

    def runner(self, command: str, *argv: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(ROOT / "loadtests" / command), *argv,
             "--api", self.stack.api, "--admin", self.stack.admin,
             "--seed-report", str(self.stack.seed_report)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def finish(self, proc: subprocess.Popen, timeout: float = 240) -> str:
        out, _ = proc.communicate(timeout=timeout)
        self.assertEqual(proc.returncode, 0, out)
        return out

    def wait_for(self, what, predicate, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        self.fail(f"timed out waiting for {what}")

    def test_a_before_after_run_writes_a_report_whose_figures_parse(self):
        out = self.tmp / "report-cache"
        self.finish(self.runner("before-after", "cache", "--duration", "3s", "--warmup", "1s",
                                "--rate", "40", "--out", str(out)))
        report = json.loads((out / "report.json").read_text())
        (section,) = report["sections"]
        self.assertEqual(section["name"], "cache")
        self.assertEqual([r["label"] for r in section["runs"]], ["off", "on"])
        for run in section["runs"]:
            s = run["summary"]
            self.assertGreater(s["requests"], 0)
            self.assertGreater(s["requests_per_second"], 0)
            for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
                self.assertGreater(s[key], 0, key)
            self.assertLessEqual(s["p50_ms"], s["p99_ms"])
            self.assertGreater(len(run["timeline"]), 0)
        self.assertGreater(section["ratios"]["p99"], 0)
        for chart in section["charts"]:
            svg = (out / chart).read_text()
            ET.fromstring(svg)
            self.assertIn("switch: cache on", svg)
        self.assertIn("| off |", (out / "report.md").read_text())
        self.assertTrue(flags(self.stack.admin)["cache"], "the flag is back on")
        self.assertFalse((out / "switches.json").exists())

    def kill_half_way(self, sig: int):
        out = self.tmp / f"killed-{sig}"
        proc = self.runner("before-after", "batch_loading", "--duration", "60s", "--warmup", "0s",
                           "--rate", "20", "--out", str(out))
        try:
            self.wait_for("the flag to go off", lambda: not flags(self.stack.admin)["batch_loading"])
            time.sleep(1)
            proc.send_signal(sig)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        self.wait_for("the flag to be restored", lambda: flags(self.stack.admin)["batch_loading"], 30)

    def test_a_run_killed_half_way_restores_the_flag_it_switched(self):
        self.kill_half_way(signal.SIGKILL)

    def test_an_interrupted_run_restores_the_flag_it_switched(self):
        self.kill_half_way(signal.SIGINT)

    def test_a_schedule_applies_its_steps_at_their_times(self):
        schedule = self.tmp / "steps.toml"
        schedule.write_text(
            '[[step]]\nat = "2s"\nflag = "cache"\nenabled = false\n'
            '[[step]]\nat = "4s"\nflag = "cache"\nenabled = true\n'
            '[[step]]\nat = "5s"\nflag = "rate_limit"\nenabled = false\n'
        )
        out = self.tmp / "schedule"
        started = time.time()
        proc = self.runner("scenario", "hot-read", "--duration", "7s", "--warmup", "0s", "--rate", "30",
                           "--schedule", str(schedule), "--out", str(out))
        seen_off = False
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if not flags(self.stack.admin)["cache"]:
                seen_off = True
            time.sleep(0.2)
        self.finish(proc)
        self.assertTrue(seen_off, "the cache flag was off between 2 s and 4 s")
        report = json.loads((out / "report.json").read_text())
        steps = report["sections"][0]["steps"]
        self.assertEqual([s["what"] for s in steps], ["cache off", "cache on", "rate_limit off"])
        for step, at in zip(steps, (2, 4, 5)):
            self.assertGreaterEqual(step["t"], at)
            self.assertLess(step["t"], at + 0.5, step)
        self.assertTrue(all(flags(self.stack.admin).values()), "every flag restored after the run")
        self.assertLess(time.time() - started, 120)


if __name__ == "__main__":
    unittest.main()
