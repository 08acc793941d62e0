"""`loadtests/capacity`: what one request of each route class costs in CPU, per component.

For each route class Keel labels requests with (`keel_route_class`: `read`, `list`, `write`,
`auth`; see src/http/route_class.rs) the runner offers a FIXED rate well below saturation with
the Goose scenario that exercises it, and reads from /proc the CPU time each component used over
the measured window:

* `keel serve` and `keel worker` (their own processes: utime + stime of /proc/PID/stat);
* Postgres: the backends of this run's scratch database (matched by their command line), and
  every process of the `postgres` user (a shared server: its idle rate, measured just before,
  is subtracted);
* `redis-server` and RabbitMQ (`beam.smp`), shared too, idle rate subtracted.

CPU per request = (CPU over the window − idle rate × window) / requests Keel counted over the
same window (its /metrics), and req/s per core = 1000 / CPU-ms. At a fixed rate below
saturation this is the robust figure on a shared 2-core machine (docs/benchmarks.md): latency
and throughput move with whatever else runs, CPU per request much less.

Sign-ins (`auth`) have no Goose scenario of their own: this runner drives them itself at a low
rate (each pays for an argon2 hash). Reuses loadtests/workshop.py's build, stack, Goose run and
summary. Writes capacity.json and capacity.md into --out (default target/capacity/).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workshop as ws  # noqa: E402
from workshop import cpu_busy, stat_ticks  # noqa: E402  (the /proc readers)

CLK_TCK = os.sysconf("SC_CLK_TCK")
COMPONENTS = ["keel-serve", "keel-worker", "postgres-mine", "postgres", "redis", "rabbitmq"]
# What each measurement runs: (name, Goose scenario or "sign-in", default rate, what it stands for).
RUNS = [
    ("read", "hot-read", 300, "GET a task 50 %, a project 30 % (read class) + a first task page 20 % (list)"),
    ("list", "task-page", 150, "walks a big project's task list, 50 a page, 20 pages deep (list class)"),
    ("write", "write", 120, "create task 30 %, assign 25 %, comment 25 %, status 20 % (write class)"),
    ("peak-hour", "peak-hour", 300, "the case study's mix: 80 % reads, 15 % writes, 5 % sign-ins"),
    ("auth", "sign-in", 8, "POST /v1/auth/token from fresh addresses: one argon2 hash each (auth class)"),
]


def note(message: str) -> None:
    print(f"capacity: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Whose a process is, and the arithmetic (pure functions, for the tests); the /proc readers
# themselves are workshop.py's, shared with the scale-out runner


def component_of(comm: str, cmdline: str, user: str, database: str) -> str | None:
    """Which shared component a process belongs to (Keel's own are known by their pid)."""
    if user == "postgres" or comm in ("postgres", "postmaster"):
        # A backend's title: `postgres: 15/main: USER DATABASE ADDRESS STATE`.
        if database and f" {database} " in f" {cmdline} ":
            return "postgres-mine"
        return "postgres"
    if comm == "redis-server":
        return "redis"
    if comm == "beam.smp":
        return "rabbitmq"
    return None


def component_seconds(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds each component used between two snapshots ({pid: (component, ticks)}): a
    process that started in between counts whole; one that ended in between is lost (its time
    is no longer in /proc), which is why Keel's pools keep their connections for the runs.
    `postgres` is every process of the server, this run's backends included."""
    out = {c: 0.0 for c in COMPONENTS}
    for pid, (component, ticks) in after.items():
        prev = before.get(pid)
        start = prev[1] if prev and prev[0] == component else 0
        delta = max(0, ticks - start) / CLK_TCK
        out[component] += delta
        if component == "postgres-mine":
            out["postgres"] += delta
    return {c: round(v, 4) for c, v in out.items()}


def cpu_ms_per_request(cpu_s: float, idle_cores: float, window_s: float, requests: float) -> float | None:
    """Milliseconds of CPU per request: the window's CPU less the idle rate over the window."""
    if requests <= 0:
        return None
    return round(max(0.0, cpu_s - idle_cores * window_s) * 1000 / requests, 4)


def per_core(cpu_ms: float | None) -> float | None:
    """Requests a second one fully busy core serves at that cost."""
    return round(1000 / cpu_ms) if cpu_ms else None


def class_counts(metrics_text: str) -> dict[str, float]:
    """Requests Keel answered so far, per `keel_route_class` (all statuses)."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("http_server_request_duration_seconds_count{"):
            continue
        labels, value = line.rsplit(" ", 1)
        cls = "unlabelled"
        marker = 'keel_route_class="'
        if marker in labels:
            cls = labels.split(marker, 1)[1].split('"', 1)[0]
        out[cls] = out.get(cls, 0.0) + float(value)
    return out


def counts_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in sorted(set(before) | set(after))
            if after.get(k, 0.0) - before.get(k, 0.0) > 0}


CACHE_COUNTERS = ("keel_cache_requests_total", "keel_cache_fills_total", "keel_cache_invalidations_total")


def redis_total_commands(info_text: str) -> int:
    for line in info_text.splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":", 1)[1])
    raise ValueError("no total_commands_processed in INFO")


# ---------------------------------------------------------------------------------------------
# Snapshots


class Probe:
    """Takes snapshots: CPU ticks per process of interest, the machine's busy ticks, the load
    average, Redis's command count and Keel's per-class request counts."""

    def __init__(self, keel_pids: dict[str, int], database: str, api_admin: str, worker_admin: str = ""):
        self.keel_pids = keel_pids
        self.database = database
        self.admin = api_admin
        self.worker_admin = worker_admin

    def processes(self) -> dict[int, tuple[str, int]]:
        out = {}
        by_pid = {pid: name for name, pid in self.keel_pids.items()}
        users: dict[int, str] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                if pid in by_pid:
                    out[pid] = (by_pid[pid], stat_ticks(stat))
                    continue
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                uid = entry.stat().st_uid
                if uid not in users:
                    try:
                        users[uid] = pwd.getpwuid(uid).pw_name
                    except KeyError:
                        users[uid] = str(uid)
                cmdline = ""
                if users[uid] == "postgres":
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                component = component_of(comm, cmdline.strip(), users[uid], self.database)
                if component:
                    out[pid] = (component, stat_ticks(stat))
            except (OSError, ValueError, IndexError):
                continue  # it ended while we looked
        return out

    def snapshot(self) -> dict:
        snap = {"t": time.monotonic(), "procs": self.processes(),
                "cpu": cpu_busy(Path("/proc/stat").read_text()),
                "loadavg": float(Path("/proc/loadavg").read_text().split()[0])}
        try:
            snap["redis_commands"] = redis_total_commands(
                subprocess.run(["redis-cli", "INFO", "stats"], capture_output=True, text=True, timeout=5).stdout)
        except (OSError, ValueError, subprocess.SubprocessError):
            snap["redis_commands"] = None
        try:
            with urllib.request.urlopen(self.admin + "/metrics", timeout=5) as r:
                text = r.read().decode()
            snap["classes"] = class_counts(text)
            snap["cache"] = ws.metric_sums(text, CACHE_COUNTERS)
        except OSError:
            snap["classes"], snap["cache"] = {}, {}
        if self.worker_admin:
            try:
                with urllib.request.urlopen(self.worker_admin + "/metrics", timeout=5) as r:
                    for k, v in ws.metric_sums(r.read().decode(), CACHE_COUNTERS).items():
                        snap["cache"][k] = snap["cache"].get(k, 0.0) + v
            except OSError:
                pass
        return snap


def between(a: dict, b: dict) -> dict:
    """What happened between two snapshots: seconds, CPU per component, the machine's busy
    cores, Redis commands and Keel's requests per class."""
    seconds_ = b["t"] - a["t"]
    busy = (b["cpu"][0] - a["cpu"][0]) / CLK_TCK
    out = {
        "seconds": round(seconds_, 3),
        "cpu_s": component_seconds(a["procs"], b["procs"]),
        "machine_busy_cores": round(busy / seconds_, 3) if seconds_ > 0 else 0.0,
        "loadavg_1m": [a["loadavg"], b["loadavg"]],
        "requests": counts_delta(a["classes"], b["classes"]),
        "cache_calls": counts_delta(a.get("cache", {}), b.get("cache", {})),
    }
    if a.get("redis_commands") is not None and b.get("redis_commands") is not None:
        out["redis_commands"] = b["redis_commands"] - a["redis_commands"]
    return out


def idle_baseline(probe: Probe, seconds_: float, max_wait: float, busy_limit: float) -> dict:
    """The idle rates (cores) with this stack quiet, re-measured until the rest of the machine is
    calm (busy below `busy_limit` cores) or `max_wait` has passed; the result says which."""
    deadline = time.monotonic() + max_wait
    for attempt in range(1, 1000):  # bounded by the deadline too
        a = probe.snapshot()
        time.sleep(seconds_)
        b = probe.snapshot()
        d = between(a, b)
        rates = {c: round(v / d["seconds"], 4) for c, v in d["cpu_s"].items()}
        calm = d["machine_busy_cores"] < busy_limit
        result = {"seconds": d["seconds"], "cores": rates, "machine_busy_cores": d["machine_busy_cores"],
                  "loadavg_1m": b["loadavg"], "attempts": attempt, "calm": calm,
                  "redis_commands_per_s": round(d.get("redis_commands", 0) / d["seconds"], 1)}
        if calm or time.monotonic() + seconds_ > deadline:
            if not calm:
                note(f"the machine stays busy ({d['machine_busy_cores']} cores idle-stack, load "
                     f"{b['loadavg']}); measuring anyway, marked contended")
            return result
        note(f"machine busy ({d['machine_busy_cores']} cores with this stack idle, load {b['loadavg']}); waiting")
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
    return result


class Window(threading.Thread):
    """Snapshots at `start` and `end` seconds from now, while the load runs."""

    def __init__(self, probe: Probe, start: float, end: float):
        super().__init__(daemon=True)
        self.probe, self.start_at, self.end_at = probe, start, end
        self.t0 = time.monotonic()
        self.snaps: list[dict] = []

    def run(self) -> None:
        for at in (self.start_at, self.end_at):
            time.sleep(max(0.0, self.t0 + at - time.monotonic()))
            self.snaps.append(self.probe.snapshot())


# ---------------------------------------------------------------------------------------------
# Sign-ins, driven from here


def sign_ins(api: str, seed_report: Path, rate: float, total_s: float, window: tuple[float, float]) -> dict:
    """POST /v1/auth/token at `rate` a second for `total_s`, each from a fresh address; latency
    figures over `window` (seconds from the start)."""
    report = json.loads(seed_report.read_text())
    users, password = report["counts"]["users"], report["password"]
    rows: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    started = time.monotonic()

    def one(i: int) -> None:
        n = random.randrange(users)
        body = json.dumps({"email": f"user{n:07}@seed.keel.dev", "password": password}).encode()
        req = urllib.request.Request(api + "/v1/auth/token", data=body, method="POST", headers={
            "content-type": "application/json",
            "x-forwarded-for": f"10.{200 + (i >> 16) % 50}.{(i >> 8) & 255}.{i & 255}"})
        t = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        except OSError:
            status = 0
        with lock:
            rows.append((t - started, (time.monotonic() - t) * 1000, status))

    with ThreadPoolExecutor(max_workers=8) as pool:
        for i in range(int(rate * total_s)):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            pool.submit(one, i)
    inside = sorted(r[1] for r in rows if window[0] <= r[0] < window[1])
    ok = sum(1 for r in rows if window[0] <= r[0] < window[1] and 200 <= r[2] < 300)
    return {"requests": len(inside), "ok": ok,
            "requests_per_second": round(len(inside) / (window[1] - window[0]), 1),
            "p50_ms": round(ws.percentile(inside, 50), 2), "p99_ms": round(ws.percentile(inside, 99), 2)}


# ---------------------------------------------------------------------------------------------
# Redis memory and RabbitMQ messages


def redis_memory(prefix: str, per_kind: int = 200, max_keys: int = 50_000) -> dict:
    """MEMORY USAGE of the keys under `prefix`, by kind (the key's next segment): how many keys,
    and the mean bytes of up to `per_kind` of each."""
    keys = subprocess.run(["redis-cli", "--scan", "--pattern", f"{prefix}*"],
                          capture_output=True, text=True, timeout=60).stdout.split()[:max_keys]
    kinds: dict[str, list[str]] = {}
    for key in keys:
        kinds.setdefault(key[len(prefix):].split(":", 1)[0], []).append(key)
    out = {}
    for kind, names in sorted(kinds.items()):
        sample = names[:per_kind]
        text = "".join(f'MEMORY USAGE "{k}" SAMPLES 0\n' for k in sample)
        values = [int(v) for v in subprocess.run(["redis-cli"], input=text, capture_output=True, text=True,
                                                   timeout=60).stdout.split() if v.isdigit()]
        out[kind] = {"keys": len(names), "mean_bytes": round(sum(values) / len(values)) if values else None}
    return out


# ---------------------------------------------------------------------------------------------
# The run


def figures(window: dict, idle: dict, requests: float) -> dict:
    """Per component: CPU-ms per request and req/s per core."""
    out = {}
    for c in COMPONENTS:
        ms = cpu_ms_per_request(window["cpu_s"][c], idle["cores"][c], window["seconds"], requests)
        out[c] = {"cpu_ms": ms, "per_core": per_core(ms)}
    return out


def measure(session, stack, probe: Probe, name: str, scenario: str, rate: int, args) -> dict:
    warmup, duration = ws.seconds(args.warmup), ws.seconds(args.duration)
    idle = idle_baseline(probe, ws.seconds(args.baseline), ws.seconds(args.max_wait), args.busy_limit)
    # Snapshots one second into the measured part and one second before its end: Goose takes a
    # moment to start its users, and the requests are counted by Keel over the same interval.
    win = Window(probe, warmup + 1.0, warmup + duration - 1.0)
    wall0 = time.time()
    win.start()
    if scenario == "sign-in":
        latency = sign_ins(stack.api, stack.seed_report, rate, warmup + duration, (warmup, warmup + duration))
    else:
        shape = ws.Shape(scenario, rate, duration, warmup)
        run = ws.run_goose(session.goose, stack, shape, session.out, f"capacity-{name}", None, [])
        s = ws.summarise(run)
        latency = {k: s[k] for k in ("requests", "requests_per_second", "p50_ms", "p99_ms", "error_rate")}
        latency["by_request"] = {k: {"requests": v["requests"], "p50_ms": v["p50_ms"], "p99_ms": v["p99_ms"]}
                                 for k, v in s["by_request"].items()}
    win.join(timeout=30)
    if len(win.snaps) != 2:
        raise ws.RunError(f"{name}: the window's snapshots did not complete")
    w = between(*win.snaps)
    requests = sum(w["requests"].values())
    result = {
        "name": name, "scenario": scenario, "rate": rate, "idle": idle, "window": w,
        "requests_in_window": requests, "latency": latency,
        # The machine was busy elsewhere before the window (the idle baseline never calmed).
        "contended": not idle["calm"],
        "per_request": figures(w, idle, requests),
    }
    if "redis_commands" in w and requests:
        extra = w["redis_commands"] - idle["redis_commands_per_s"] * w["seconds"]
        result["redis_commands_per_request"] = round(max(0.0, extra) / requests, 3)
    if requests:
        result["cache_calls_per_request"] = {k.removeprefix("keel_cache_").removesuffix("_total"): round(v / requests, 3)
                                             for k, v in w["cache_calls"].items()}
    t_a, t_b = wall0 + warmup + 1.0, wall0 + warmup + duration - 1.0
    rows = ws.psql_rows(stack.env["DATABASE_URL"], "select kind, count(*) from outbox where created_at >= "
                     f"to_timestamp({t_a}) and created_at < to_timestamp({t_b}) group by kind order by kind")
    if rows and requests:
        writes = w["requests"].get("write", 0.0)
        result["outbox"] = {k: int(v) for k, v in rows}
        result["messages_per_write"] = round(sum(int(v) for _, v in rows) / writes, 3) if writes else None
    pr = result["per_request"]
    note(f"{name}: {requests:.0f} requests in {w['seconds']:.1f}s; CPU-ms/request keel-serve "
         f"{pr['keel-serve']['cpu_ms']}, worker {pr['keel-worker']['cpu_ms']}, postgres "
         f"{pr['postgres']['cpu_ms']} (its backends {pr['postgres-mine']['cpu_ms']}), redis "
         f"{pr['redis']['cpu_ms']}, rabbitmq {pr['rabbitmq']['cpu_ms']}; p50 {latency['p50_ms']} ms, "
         f"p99 {latency['p99_ms']} ms; load {w['loadavg_1m']}")
    return result


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# {report['title']}", "",
        f"{report['generated_at']} · commit {m['commit']} · {m['cpus']} × {m['cpu_model']} · "
        f"seed {report['seed']['tasks']} tasks · {report['warmup_s']:.0f}s warm-up + "
        f"{report['duration_s']:.0f}s measured per class", "",
        "CPU-ms per request over the measured window (idle rate subtracted); req/s per core = 1000 / CPU-ms.", "",
        "| class | scenario | offered | served req/s | keel serve | keel worker | Postgres (its backends) | "
        "Postgres (server) | Redis | RabbitMQ | p50 | p99 | load 1m | contended |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]

    def cell(f: dict) -> str:
        return "–" if f["cpu_ms"] is None else f"{f['cpu_ms']:.3f} ms ({f['per_core'] or '∞'}/s)"

    for r in report["runs"]:
        pr, lat, w = r["per_request"], r["latency"], r["window"]
        served = r["requests_in_window"] / w["seconds"]
        lines.append(
            f"| {r['name']} | {r['scenario']} | {r['rate']} | {served:.0f} | {cell(pr['keel-serve'])} | "
            f"{cell(pr['keel-worker'])} | {cell(pr['postgres-mine'])} | {cell(pr['postgres'])} | "
            f"{cell(pr['redis'])} | {cell(pr['rabbitmq'])} | {lat['p50_ms']} ms | {lat['p99_ms']} ms | "
            f"{w['loadavg_1m'][0]}→{w['loadavg_1m'][1]} | {'yes' if r['contended'] else 'no'} |")
    lines += ["", "| class | requests by class in the window (Keel's /metrics) | machine busy cores in the window | "
              "Keel's cache calls / request | Redis commands / request (server-wide, shared) | "
              "outbox rows (messages) / write |", "|---|---|---:|---|---:|---:|"]
    for r in report["runs"]:
        mix = ", ".join(f"{k} {v:.0f}" for k, v in r["window"]["requests"].items())
        calls = ", ".join(f"{k} {v}" for k, v in r.get("cache_calls_per_request", {}).items()) or "–"
        lines.append(f"| {r['name']} | {mix} | {r['window']['machine_busy_cores']} | {calls} | "
                     f"{r.get('redis_commands_per_request', '–')} | {r.get('messages_per_write', '–')} |")
    if report.get("redis_memory"):
        lines += ["", "| Redis key kind | keys after the runs | mean MEMORY USAGE |", "|---|---:|---:|"]
        for kind, v in report["redis_memory"].items():
            lines.append(f"| {kind} | {v['keys']} | {v['mean_bytes']} B |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="loadtests/capacity", description=(
        "CPU per request per route class and component at a fixed rate; capacity.json and "
        "capacity.md in --out."))
    p.add_argument("--only", nargs="*", choices=[r[0] for r in RUNS], help="these classes only")
    p.add_argument("--duration", default="25s", help="measured time per class (default 25s)")
    p.add_argument("--warmup", default="8s", help="unmeasured lead-in per class (default 8s)")
    p.add_argument("--baseline", default="6s", help="idle measurement before each class (default 6s)")
    p.add_argument("--max-wait", default="90s", help="longest wait for a calm machine per class (default 90s)")
    p.add_argument("--busy-limit", type=float, default=0.6,
                   help="cores busy elsewhere (this stack idle) above which a class waits (default 0.6)")
    p.add_argument("--rate", action="append", default=[], metavar="CLASS=N", help="a class's rate, e.g. read=400")
    p.add_argument("--tasks", type=int, default=50_000, help="tasks `keel seed` makes (default 50000)")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--smtp-delay", default="200ms")
    p.add_argument("--pg-server", default=os.environ.get("PG_SERVER", "postgres://postgres@127.0.0.1:5432"))
    p.add_argument("--out", type=Path, default=ws.ROOT / "target" / "capacity")
    args = p.parse_args(argv)
    rates = {r[0]: r[2] for r in RUNS}
    for item in args.rate:
        k, _, v = item.partition("=")
        if k not in rates or not v.isdigit():
            raise ws.RunError(f"--rate {item}: CLASS=N with CLASS one of {', '.join(rates)}")
        rates[k] = int(v)
    ws.check_loopback(args.pg_server)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    # workshop.Session's own-stack path, with `keel serve` and `keel worker` apart so that the
    # API's CPU and the worker's are read separately.
    args.api = args.admin = args.seed_report = None
    args.admin_token, args.pace, args.rate = ws.DEV_ADMIN_TOKEN, 0, None
    loadavg0 = Path("/proc/loadavg").read_text().split()[:3]
    session = CapacitySession(args)
    try:
        stack = session.stack
        probe = Probe({"keel-serve": session.serve_pid, "keel-worker": session.worker_pid},
                      stack.database, stack.admin, session.worker_admin)
        runs = []
        for name, scenario, _, why in RUNS:
            if args.only and name not in args.only:
                continue
            r = measure(session, stack, probe, name, scenario, rates[name], args)
            r["why"] = why
            runs.append(r)
        memory = redis_memory(stack.env["KEEL_REDIS_PREFIX"])
        report = {
            "title": "Keel capacity: CPU per request per route class",
            "generated_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": ws.machine(), "seed": ws.seed_facts(stack),
            "loadavg_at_start": loadavg0,
            "duration_s": ws.seconds(args.duration), "warmup_s": ws.seconds(args.warmup),
            "clk_tck": CLK_TCK, "runs": runs, "redis_memory": memory,
        }
        (args.out / "capacity.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "capacity.md").write_text(markdown(report))
        print(markdown(report))
        note(f"report: {args.out / 'capacity.md'}")
        return 0
    finally:
        session.close()


class CapacitySession(ws.Session):
    """workshop.Session, with its own stack started as `keel serve` + `keel worker`."""

    def __init__(self, args):
        self.args = args
        self.stack = None
        self.guardian = None
        self.worker_pid = None
        self._handle_signals()
        self.out = args.out
        self.keel, sink, self.goose = ws.build()
        self.record = self.out / "switches.json"
        self.guardian = ws.Guardian(self.record, args.admin_token)
        self.stack = ws.own_stack(args, self.out, self.keel, sink, self.guardian,
                                  role="serve", tag=f"keel_capacity_{os.getpid()}")
        self.serve_pid = self.stack.processes[-1].pid
        worker_admin = f"127.0.0.1:{ws.free_port()}"
        self.worker_admin = f"http://{worker_admin}"
        # The same stack with the worker's own admin listener; its process joins the stack's list.
        worker_view = replace(self.stack, env={**self.stack.env, "KEEL_ADMIN_ADDR": worker_admin},
                              processes=self.stack.processes)
        try:
            self.worker_pid = worker_view.start_process(
                "keel-worker", [str(self.keel), "worker"], f"http://{worker_admin}/readyz").pid
        except BaseException:
            self.stack.stop()
            raise
        self.switches = ws.Switches(ws.Admin(self.stack.admin, self.stack.token), self.record)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ws.RunError as e:
        note(str(e))
        sys.exit(1)
    except subprocess.CalledProcessError as e:
        note(f"{' '.join(map(str, e.cmd))} failed ({e.returncode})")
        sys.exit(1)
