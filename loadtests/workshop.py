"""The workshop's load runner: scenarios, schedules, before/after comparisons and their reports.

`loadtests/scenario` and `loadtests/before-after` are its two commands; this module is what
they share. Python's standard library only, so that a laptop needs nothing but Python 3.11,
cargo and the three servers.

How a run goes:

* **The stack.** By default the runner brings up its own: a scratch database seeded by
  `keel seed` (with pre-issued tokens), an SMTP server that answers after a set delay
  (`examples/smtp_sink.rs`: a real provider's latency) and `keel all` on ports of its own,
  under its own Redis key prefix and RabbitMQ names, behind `KEEL_TRUSTED_PROXIES=127.0.0.1`
  so that each simulated user has an address. `--api/--admin/--seed-report` point it at a
  stack that is already running instead (a workshop's, with the console open).
* **The load** comes from Goose (`loadtests/goose/`, a maintained load-testing framework):
  users paced at a fixed cadence, the total capped at the run's rate, coordinated omission
  back-filled. Goose's per-request log is the raw data: every figure here is computed from it
  (percentiles exactly, from every sample; the per-second timelines) and from the service's
  own `/metrics` (what it shed and rate-limited).
* **Switches.** Every flag or fault the runner changes is recorded before it changes it, and
  put back when the run ends, fails or is interrupted (SIGINT, SIGTERM), and even when the
  runner is killed outright: a guardian process that outlives it restores what the record
  says (see `Guardian`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOOSE_DIR = ROOT / "loadtests" / "goose"
DEV_ADMIN_TOKEN = "keel-dev-admin-token"
FLAGS = [
    "batch_loading",
    "cache",
    "async_jobs",
    "timeouts",
    "load_shedding",
    "circuit_breaker",
    "rate_limit",
]
DEPENDENCIES = ["postgres", "redis", "rabbitmq", "smtp"]
SCENARIOS = ["hot-read", "task-page", "write", "peak-hour", "overload", "soak"]


def note(message: str) -> None:
    print(f"workshop: {message}", file=sys.stderr, flush=True)


class RunError(Exception):
    """A run that cannot go on; the message says why."""


# ---------------------------------------------------------------------------------------------
# Durations and the schedule file


def seconds(text: str | int | float) -> float:
    """`90`, `90s`, `1500ms`, `2m` → seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (e.g. 500ms, 30s, 2m)")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


@dataclass
class Step:
    """One line of a schedule: at `at` seconds into the run, set a flag or a fault."""

    at: float
    flag: str | None = None
    enabled: bool | None = None
    fault: str | None = None
    latency_ms: int = 0
    error_rate: float = 0.0
    label: str = ""

    def describe(self) -> str:
        if self.label:
            return self.label
        if self.flag:
            return f"{self.flag} {'on' if self.enabled else 'off'}"
        if self.latency_ms == 0 and self.error_rate == 0:
            return f"{self.fault} fault cleared"
        return f"{self.fault} +{self.latency_ms} ms, {self.error_rate:.0%} errors"


def load_schedule(path: Path) -> list[Step]:
    """A TOML schedule: `[[step]]` tables with `at` and either `flag` + `enabled` or `fault`
    (+ `latency_ms`, `error_rate`); an optional `label` names the step on the charts."""
    data = tomllib.loads(path.read_text())
    steps = []
    for i, raw in enumerate(data.get("step", [])):
        where = f"{path}: step {i + 1}"
        unknown = set(raw) - {"at", "flag", "enabled", "fault", "latency_ms", "error_rate", "label"}
        if unknown:
            raise RunError(f"{where}: unknown keys {sorted(unknown)}")
        if "at" not in raw:
            raise RunError(f"{where}: `at` is required")
        step = Step(at=seconds(raw["at"]), label=str(raw.get("label", "")))
        if ("flag" in raw) == ("fault" in raw):
            raise RunError(f"{where}: give either `flag` (with `enabled`) or `fault`")
        if "flag" in raw:
            if raw["flag"] not in FLAGS:
                raise RunError(f"{where}: unknown flag {raw['flag']!r} (one of {', '.join(FLAGS)})")
            if not isinstance(raw.get("enabled"), bool):
                raise RunError(f"{where}: `enabled = true|false` is required with `flag`")
            step.flag, step.enabled = raw["flag"], raw["enabled"]
        else:
            if raw["fault"] not in DEPENDENCIES:
                raise RunError(
                    f"{where}: unknown dependency {raw['fault']!r} (one of {', '.join(DEPENDENCIES)})"
                )
            step.fault = raw["fault"]
            step.latency_ms = int(raw.get("latency_ms", 0))
            step.error_rate = float(raw.get("error_rate", 0.0))
            if not 0 <= step.latency_ms <= 10_000 or not 0 <= step.error_rate <= 1:
                raise RunError(f"{where}: latency_ms is 0–10000 and error_rate 0–1")
        steps.append(step)
    return sorted(steps, key=lambda s: s.at)


# ---------------------------------------------------------------------------------------------
# The admin API, and putting back what a run changed


class Admin:
    """The admin listener's flag and fault API."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.token = token

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            raise RunError(f"{method} {path}: {e.code} {e.read()[:300]!r}") from None
        except OSError as e:
            raise RunError(f"{method} {path}: {e}") from None

    def flags(self) -> dict[str, bool]:
        return {f["name"]: f["enabled"] for f in self._call("GET", "/admin/flags")["items"]}

    def set_flag(self, name: str, enabled: bool) -> dict:
        return self._call("PUT", f"/admin/flags/{name}", {"enabled": enabled})

    def faults(self) -> dict[str, dict]:
        items = self._call("GET", "/admin/faults")["items"]
        return {f["dependency"]: {"latency_ms": f["latency_ms"], "error_rate": f["error_rate"]} for f in items}

    def set_fault(self, dependency: str, latency_ms: int, error_rate: float) -> dict:
        body = {"latency_ms": latency_ms, "error_rate": error_rate}
        return self._call("PUT", f"/admin/faults/{dependency}", body)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            return response.read().decode()


class Switches:
    """Changes flags and faults, recording each one's first value in a file before changing it,
    so that `restore()` — or the guardian, if this process dies — can put it back."""

    def __init__(self, admin: Admin, record: Path):
        self.admin = admin
        self.record = record
        self.original: dict = {"admin": admin.url, "flags": {}, "faults": {}}
        self._write()

    def _write(self) -> None:
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.original))
        tmp.replace(self.record)

    def flag(self, name: str, enabled: bool) -> None:
        if name not in self.original["flags"]:
            self.original["flags"][name] = self.admin.flags()[name]
            self._write()
        self.admin.set_flag(name, enabled)

    def fault(self, dependency: str, latency_ms: int, error_rate: float) -> None:
        if dependency not in self.original["faults"]:
            self.original["faults"][dependency] = self.admin.faults()[dependency]
            self._write()
        self.admin.set_fault(dependency, latency_ms, error_rate)

    def apply(self, step: Step) -> None:
        if step.flag:
            self.flag(step.flag, bool(step.enabled))
        else:
            self.fault(step.fault, step.latency_ms, step.error_rate)

    def restore(self) -> None:
        restore_record(self.record, self.admin.token)


def restore_record(record: Path, token: str) -> None:
    """Puts back every flag and fault the record lists, then deletes the record."""
    if not record.exists():
        return
    original = json.loads(record.read_text())
    admin = Admin(original["admin"], token)
    failures = []
    for name, enabled in original["flags"].items():
        try:
            admin.set_flag(name, enabled)
        except RunError as e:
            failures.append(str(e))
    for dependency, fault in original["faults"].items():
        try:
            admin.set_fault(dependency, fault["latency_ms"], fault["error_rate"])
        except RunError as e:
            failures.append(str(e))
    if failures:
        raise RunError("could not restore: " + "; ".join(failures))
    record.unlink()
    changed = list(original["flags"]) + [f"{d} fault" for d in original["faults"]]
    if changed:
        note("restored " + ", ".join(changed))


class Guardian:
    """A process that outlives the runner: it waits for the runner's end (its stdin closes,
    however the runner ends, `kill -9` included) and then restores the switch record, and
    stops the processes the runner started if they are still there. A signal handler or
    `finally` covers everything but SIGKILL; this covers that too."""

    def __init__(self, record: Path, token: str, script: str = __file__):
        # `script --guard RECORD` is the guardian's body: this module's, or a runner's that
        # handles more kinds of lines (see `guard`'s `extra`).
        self.proc = subprocess.Popen(
            [sys.executable, script, "--guard", str(record)],
            stdin=subprocess.PIPE,
            env={**os.environ, "KEEL_ADMIN_TOKEN": token},
            start_new_session=True,
        )

    def _tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        self.proc.stdin.flush()

    def watch(self, pid: int) -> None:
        """Also stop this process (a server the runner started) when the runner dies."""
        self._tell(str(pid))

    def drop(self, pg_server: str, database: str, redis_prefix: str) -> None:
        """Also drop this scratch database, and the Redis keys under this prefix, when the
        runner dies."""
        self._tell(f"db {pg_server} {database}")
        self._tell(f"redis {redis_prefix}")

    def close(self) -> None:
        """The runner ended normally and restored everything itself."""
        if self.proc.stdin:
            self.proc.stdin.write(b"done\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def guard(record: Path, extra=None) -> None:
    """The guardian's body (`workshop.py --guard RECORD`): lines on stdin are process ids to
    stop, `db PG_SERVER NAME` a scratch database to drop, `redis PREFIX` keys to delete, `done` a clean end.
    Any other line goes to `extra(lines)`, called last, when the runner died (`scaleout.py`'s
    replica and pg_hba.conf line)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids, databases, prefixes, other, done = [], [], [], [], False
    for line in sys.stdin:
        line = line.strip()
        if line == "done":
            done = True
        elif line.isdigit():
            pids.append(int(line))
        elif line.startswith("db "):
            databases.append(line.split(" ", 2)[1:])
        elif line.startswith("redis "):
            prefixes.append(line.split(" ", 1)[1])
        elif line:
            other.append(line)
    if done:
        return
    note("the runner ended without cleaning up; restoring its switches")
    try:
        restore_record(record, os.environ.get("KEEL_ADMIN_TOKEN", DEV_ADMIN_TOKEN))
    except (RunError, OSError, ValueError) as e:
        note(str(e))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    time.sleep(1)
    for server, name in databases:
        try:
            psql(f"{server}/postgres", f'drop database if exists "{name}" with (force)')
        except (subprocess.SubprocessError, OSError) as e:
            note(f"could not drop {name}: {e}")
    for prefix in prefixes:
        try:
            redis_delete_prefix(prefix)
        except OSError as e:
            note(f"could not delete the Redis keys under {prefix}: {e}")
    if extra is not None:
        extra(other)


# ---------------------------------------------------------------------------------------------
# The stack


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_delete_prefix(prefix: str, host: str = "127.0.0.1", port: int = 6379) -> int:
    """Deletes every Redis key under `prefix` (SCAN, then UNLINK), speaking RESP over a socket:
    a few lines instead of a client library or `redis-cli` on every laptop."""
    import socket

    def command(sock, buf, *args: str):
        sock.sendall(b"".join([f"*{len(args)}\r\n".encode()]
                              + [f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args]))
        return read(sock, buf)

    def line(sock, buf) -> bytes:
        while b"\r\n" not in buf[0]:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("redis closed the connection")
            buf[0] += chunk
        head, buf[0] = buf[0].split(b"\r\n", 1)
        return head

    def read(sock, buf):
        head = line(sock, buf)
        kind, rest = head[:1], head[1:]
        if kind in (b"+", b":"):
            return rest.decode()
        if kind == b"-":
            raise OSError(rest.decode())
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(buf[0]) < n + 2:
                buf[0] += sock.recv(65536)
            value, buf[0] = buf[0][:n], buf[0][n + 2:]
            return value.decode()
        if kind == b"*":
            return [read(sock, buf) for _ in range(int(rest))]
        raise OSError(f"unexpected reply {head!r}")

    deleted = 0
    with socket.create_connection((host, port), timeout=10) as sock:
        buf = [b""]
        cursor = "0"
        for _ in range(100_000):  # bounded: 100 000 pages of 1 000 keys
            cursor, keys = command(sock, buf, "SCAN", cursor, "MATCH", f"{prefix}*", "COUNT", "1000")
            if keys:
                deleted += int(command(sock, buf, "UNLINK", *keys))
            if cursor == "0":
                break
    return deleted


def psql_rows(url: str, sql: str, timeout: float = 60) -> list[list[str]]:
    """The rows of one query (`psql -X -At`), each a list of its columns."""
    text = subprocess.run(["psql", "-X", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
                          capture_output=True, text=True, check=True, timeout=timeout).stdout
    return [line.split("\t") for line in text.splitlines() if line]


def psql(url: str, sql: str) -> None:
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )


@dataclass
class Stack:
    """Keel and what it needs, either started here (`own`) or already running."""

    api: str
    admin: str
    token: str
    seed_report: Path
    own: bool = False
    keel: Path | None = None
    env: dict = field(default_factory=dict)
    database: str = ""
    pg_server: str = ""
    processes: list = field(default_factory=list)
    workdir: Path | None = None
    guardian: Guardian | None = None
    # Held from a start's Popen to its entry in `processes`, and by `stop` while it takes the
    # list: a start racing a stop (another thread of a runner that is being interrupted) is
    # either stopped with the rest or refused, never left running.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _stopping: bool = field(default=False, repr=False, compare=False)

    def keel_cmd(self, *args: str, timeout: float = 600, extra: dict | None = None) -> None:
        assert self.keel is not None
        subprocess.run(
            [str(self.keel), *args],
            env={**os.environ, **self.env, **(extra or {})},
            check=True,
            timeout=timeout,
        )

    def start_process(self, name: str, argv: list[str], ready_url: str | None,
                      extra_env: dict | None = None) -> subprocess.Popen:
        assert self.workdir is not None
        with self._lock, open(self.workdir / f"{name}.log", "ab") as log:
            if self._stopping:
                raise RunError(f"{name} not started: the stack is stopping")
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **self.env, **(extra_env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.processes.append(proc)
        if self.guardian:
            self.guardian.watch(proc.pid)
        deadline = time.monotonic() + 60
        while ready_url and not http_ok(ready_url):
            if proc.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RunError(f"{name} exited:\n{tail}")
            if time.monotonic() > deadline:
                raise RunError(f"{name} not ready after 60 s")
            time.sleep(0.2)
        return proc

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.processes.clear()
        if self.own and self.database:
            try:
                psql(f"{self.pg_server}/postgres", f'drop database if exists "{self.database}" with (force)')
            except (subprocess.SubprocessError, OSError) as e:
                note(f"could not drop {self.database}: {e}")
            if self.keel:
                try:
                    self.keel_cmd("jobs", "delete-topology", timeout=60)
                except (subprocess.SubprocessError, OSError) as e:
                    note(f"could not delete the RabbitMQ topology: {e}")
            try:
                redis_delete_prefix(self.env["KEEL_REDIS_PREFIX"])
            except OSError as e:
                note(f"could not delete the Redis keys under {self.env['KEEL_REDIS_PREFIX']}: {e}")


def build() -> tuple[Path, Path, Path]:
    """Builds Keel, the SMTP sink and the Goose scenarios; returns their paths. Release builds
    (figures are only worth a release build's); `KEEL_LOAD_PROFILE=debug` for the runner's own
    tests, which check the mechanics and reuse the test build."""
    profile = os.environ.get("KEEL_LOAD_PROFILE", "release")
    if profile not in ("release", "debug"):
        raise RunError("KEEL_LOAD_PROFILE is release or debug")
    flag = ["--release"] if profile == "release" else []
    note(f"building keel, smtp_sink and the Goose scenarios ({profile})")
    cargo = ["cargo", "build", "--quiet", *flag]
    subprocess.run([*cargo, "--bin", "keel", "--example", "smtp_sink"], cwd=ROOT, check=True)
    subprocess.run(cargo, cwd=GOOSE_DIR, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    goose_target = Path(os.environ.get("CARGO_TARGET_DIR", GOOSE_DIR / "target"))
    return (
        target / profile / "keel",
        target / profile / "examples" / "smtp_sink",
        goose_target / profile / "keel-load",
    )


def own_stack(args, workdir: Path, keel: Path, sink: Path, guardian: Guardian,
              role: str = "all", tag: str = "") -> Stack:
    """A scratch database, seeded; the SMTP sink; `keel all` (or `role`: `serve`) on ports of
    its own; `tag` names the database, the Redis prefix and the RabbitMQ names."""
    tag = tag or f"keel_workshop_{os.getpid()}"
    pg_server = args.pg_server.rstrip("/")
    http_port, admin_port, smtp_port = free_port(), free_port(), free_port()
    stack = Stack(
        api=f"http://127.0.0.1:{http_port}",
        admin=f"http://127.0.0.1:{admin_port}",
        token=DEV_ADMIN_TOKEN,
        seed_report=workdir / "seed.json",
        own=True,
        keel=keel,
        database=tag,
        pg_server=pg_server,
        workdir=workdir,
        env={
            "KEEL_ENV": "dev",
            "RUST_LOG": "warn",
            "DATABASE_URL": f"{pg_server}/{tag}",
            "KEEL_HTTP_ADDR": f"127.0.0.1:{http_port}",
            "KEEL_ADMIN_ADDR": f"127.0.0.1:{admin_port}",
            "KEEL_REDIS_PREFIX": f"{tag}:",
            "KEEL_AMQP_PREFIX": f"{tag}.",
            "KEEL_TRUSTED_PROXIES": "127.0.0.1",
            "SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
            # A token lives as long as the longest run (the seed issues them).
            "KEEL_JWT_TTL": "12h",
            "KEEL_FLAGS_POLL_INTERVAL": "1s",
        },
    )
    stack.guardian = guardian
    guardian.drop(pg_server, tag, f"{tag}:")
    try:
        psql(f"{pg_server}/postgres", f'drop database if exists "{tag}" with (force)')
        psql(f"{pg_server}/postgres", f'create database "{tag}"')
        stack.keel_cmd("migrate")
        note(f"seeding {args.tasks} tasks into {tag}")
        stack.keel_cmd(
            "seed", "--tasks", str(args.tasks), "--tokens", str(args.tokens),
            "--seed", "42", "--out", str(stack.seed_report), timeout=1800,
        )
        stack.start_process(
            "smtp_sink", [str(sink), f"127.0.0.1:{smtp_port}", args.smtp_delay, str(workdir / "accepted.tsv"), "6h"], None
        )
        time.sleep(0.3)
        stack.start_process("keel", [str(keel), role], f"{stack.admin}/readyz")
    except BaseException:
        # A stack that did not come up is taken down at once (its database too), not left
        # for the guardian, which only acts when the runner dies.
        stack.stop()
        raise
    return stack


# ---------------------------------------------------------------------------------------------
# One run of a scenario


def default_pace(rate: int) -> int:
    """A user's pause: long enough that a slow answer (up to a pace) barely lowers what the
    users offer, short enough to keep the users few: 100 users up to 1 000 req/s (1 s down to
    100 ms), then 100 ms each."""
    return max(100, min(1000, round(100_000 / max(1, rate))))


@dataclass
class Shape:
    """How hard and how long: `rate` requests/s at the peak, `users` Goose users paced at
    `pace_ms`, an unmeasured `warmup`, then `duration` measured; `ramp` (peak-hour) climbs
    to the peak over that long first."""

    scenario: str
    rate: int
    duration: float
    warmup: float = 5.0
    ramp: float = 0.0
    pace_ms: int = 0
    users: int = 0
    # Goose's back-fill (see the module docs); `disabled` for a closed loop (users with no
    # pause), where a request's wait is the load itself, not an omission.
    co_mitigation: str = "minimum"

    def __post_init__(self) -> None:
        if not self.pace_ms:
            self.pace_ms = default_pace(self.rate)

    def goose_users(self) -> int:
        """Users, each sending one request per pace (plus the answer's latency): together
        they offer the rate while answers are fast against the pace. (Not Goose's throttle,
        `--throttle-requests`: it hands out permits in 10 ms slices and delivers about 10 %
        under the rate it is set to, and it would hold back `overload`'s scrapers.)"""
        if self.users:
            return self.users
        return max(1, round(self.rate * self.pace_ms / 1000))

    def total(self) -> float:
        return self.ramp + self.warmup + self.duration


@dataclass
class RunResult:
    label: str
    started: float
    rows: list  # (t_start_s, latency_ms, status, real, name)
    window: tuple[float, float]
    metrics_before: dict
    metrics_after: dict
    steps: list  # (t_s, description)


# The counters a run's report compares before and after.
REPORT_COUNTERS = ("keel_shed_total", "keel_rate_limited_total", "keel_deadline_exceeded_total",
                   "http_server_request_duration_seconds_count")


def metric_sums(text: str, names: tuple[str, ...] = REPORT_COUNTERS) -> dict[str, float]:
    """Each of `names`' sum over all its series in a Prometheus exposition (0 when absent)."""
    sums = {name: 0.0 for name in names}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return sums


# ---------------------------------------------------------------------------------------------
# Reading /proc (pure functions of the text, for the tests)


def stat_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks) from a /proc/PID/stat line. The command name (field 2) is in
    parentheses and may hold spaces or parentheses itself, so fields are counted after the last
    `)`: state is field 3, utime 14 and stime 15."""
    rest = stat_text[stat_text.rindex(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def cpu_busy(proc_stat_text: str) -> tuple[int, int]:
    """(busy, total) ticks of all cores from /proc/stat's `cpu` line; busy leaves out idle and
    iowait (guest time is already inside user)."""
    for line in proc_stat_text.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:]]
            user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
            busy = user + nice + system + irq + softirq + steal
            return busy, busy + idle + iowait
    raise ValueError("no cpu line in /proc/stat")


def run_goose(goose: Path, stack: Stack, shape: Shape, workdir: Path, label: str,
              switches: Switches | None, schedule: list[Step]) -> RunResult:
    log = workdir / f"requests-{label}.jsonl"
    users = shape.goose_users()
    argv = [
        str(goose), "--host", stack.api,
        "--co-mitigation", shape.co_mitigation,
        "--request-log", str(log), "--request-format", "json",
        "--no-telnet", "--no-print-metrics", "--quiet",
        "--timeout", "30",
    ]
    if shape.ramp > 0:
        # Goose's test plan: climb to a quarter of the users at once, to all of them over the
        # ramp, hold them through the warm-up and the measurement.
        argv += ["--test-plan", f"{max(1, users // 4)},1s;{users},{math.ceil(shape.ramp)}s;"
                 f"{users},{math.ceil(shape.warmup + shape.duration)}s;0,0s"]
    else:
        argv += ["--users", str(users), "--increase-rate", str(max(1, users)),
                 "--run-time", f"{math.ceil(shape.total())}s"]
    env = {
        **os.environ,
        "KEEL_LOAD_SCENARIO": shape.scenario,
        "KEEL_LOAD_SEED": str(stack.seed_report),
        "KEEL_LOAD_PACE_MS": str(shape.pace_ms),
    }
    admin = Admin(stack.admin, stack.token)
    before = metric_sums(admin.metrics())
    note(f"{label}: {shape.scenario} at {shape.rate} req/s, {users} users, "
         f"{shape.ramp:.0f}s ramp + {shape.warmup:.0f}s warm-up + {shape.duration:.0f}s")
    started = time.time()
    with open(workdir / f"goose-{label}.log", "wb") as goose_out:
        proc = subprocess.Popen(argv, env=env, stdout=goose_out, stderr=subprocess.STDOUT, cwd=workdir)
    if stack.guardian:
        stack.guardian.watch(proc.pid)
    applied = []
    pending = list(schedule)
    deadline = started + shape.total() + 120
    try:
        while proc.poll() is None:
            now = time.time() - started
            while pending and pending[0].at <= now:
                step = pending.pop(0)
                if switches is None:
                    raise RunError("a schedule needs the admin API")
                switches.apply(step)
                applied.append((round(time.time() - started, 3), step.describe()))
                note(f"{label}: {applied[-1][0]:.1f}s: {step.describe()}")
            if time.time() > deadline:
                proc.kill()
                raise RunError(f"goose ran past its time ({shape.total():.0f}s + 120s)")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    if proc.returncode != 0:
        tail = (workdir / f"goose-{label}.log").read_text(errors="replace")[-2000:]
        raise RunError(f"goose failed ({proc.returncode}):\n{tail}")
    after = metric_sums(admin.metrics())
    rows = read_request_log(log)
    start = shape.ramp + shape.warmup
    return RunResult(label, started, rows, (start, start + shape.duration), before, after, applied)


def read_request_log(path: Path) -> list:
    rows = []
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("name") == "setup" or r.get("update"):
                continue
            latency = r["response_time"] + r.get("response_time_fraction_us", 0) / 1000
            real = r.get("coordinated_omission_elapsed", 0) == 0
            rows.append((r["elapsed"] / 1000, latency, r.get("status_code", 0), real, r.get("name", "")))
    return rows


# ---------------------------------------------------------------------------------------------
# Figures


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile of every sample (no histogram: exact)."""
    if not sorted_values:
        return 0.0
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


SCRAPER = "scraper: "


def summarise(run: RunResult) -> dict:
    """The run's figures over its measured window. The headline is the crowd's: `overload`'s
    scrapers are left out of it (their own figures are in `by_request`), since what a rate
    limit or a shedder does for everyone else is the point of the comparison."""
    lo, hi = run.window
    window = [r for r in run.rows if lo <= r[0] < hi]
    rows = [r for r in window if not r[4].startswith(SCRAPER)]
    real = [r for r in rows if r[3]]
    latencies = sorted(r[1] for r in rows)  # real and back-filled: the corrected view
    ok = [r for r in real if 200 <= r[2] < 300]
    seconds_ = hi - lo
    n = max(1, len(real))
    status = {}
    for r in real:
        key = str(r[2]) if r[2] else "transport error"
        status[key] = status.get(key, 0) + 1
    def delta(name: str) -> float:
        return run.metrics_after.get(name, 0.0) - run.metrics_before.get(name, 0.0)

    # The service's own counts over the whole run (warm-up and scrapers included), against the
    # requests it answered over the same time: it knows why it refused, the log only sees 503.
    served = max(1.0, delta("http_server_request_duration_seconds_count"))
    five = sum(1 for r in real if r[2] >= 500 or r[2] == 0)
    return {
        "requests": len(real),
        "requests_per_second": round(len(real) / seconds_, 1),
        "ok_per_second": round(len(ok) / seconds_, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p90_ms": round(percentile(latencies, 90), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(latencies[-1], 2) if latencies else 0.0,
        "p99_ms_uncorrected": round(percentile(sorted(r[1] for r in real), 99), 2),
        # Refusals (a shed 503, a 429) are fast: this is the p99 of the answers people wanted.
        "p99_ms_2xx": round(percentile(sorted(r[1] for r in ok), 99), 2),
        "backfilled": len(rows) - len(real),
        # 5xx (refusals included) and transport failures, of the crowd's requests in the window.
        "error_rate": round(five / n, 4),
        "shed_rate": round(delta("keel_shed_total") / served, 4),
        "rate_limited_rate": round(delta("keel_rate_limited_total") / served, 4),
        "deadline_exceeded_rate": round(delta("keel_deadline_exceeded_total") / served, 4),
        "status": dict(sorted(status.items())),
        "by_request": by_request(window),
    }


def by_request(rows: list) -> dict:
    """Per request kind (Goose's request names): how many, p50 and p99 (back-filled included)."""
    kinds: dict[str, list] = {}
    for r in rows:
        kinds.setdefault(r[4], []).append(r)
    out = {}
    for name, kind_rows in sorted(kinds.items()):
        lat = sorted(r[1] for r in kind_rows)
        real = [r for r in kind_rows if r[3]]
        out[name] = {
            "requests": len(real),
            "p50_ms": round(percentile(lat, 50), 2),
            "p99_ms": round(percentile(lat, 99), 2),
            "non_2xx": sum(1 for r in real if not 200 <= r[2] < 300),
        }
    return out


def timeline(run: RunResult) -> list[dict]:
    """Per second of the run: requests answered, and p50/p99 (back-filled samples included)."""
    by_second: dict[int, list] = {}
    for t, latency, status, real, _ in run.rows:
        by_second.setdefault(int(t), []).append((latency, status, real))
    out = []
    for second in sorted(by_second):
        samples = by_second[second]
        lat = sorted(s[0] for s in samples)
        out.append({
            "t": second,
            "rps": sum(1 for s in samples if s[2]),
            "errors": sum(1 for s in samples if s[2] and (s[1] >= 500 or s[1] == 0)),
            "p50_ms": round(percentile(lat, 50), 2),
            "p99_ms": round(percentile(lat, 99), 2),
        })
    return out


def ratio(on: float, off: float) -> float | None:
    return round(on / off, 4) if off else None


# ---------------------------------------------------------------------------------------------
# Charts (SVG by hand: no plotting library to install)


def svg_chart(title: str, series: dict[str, list[tuple[float, float]]], marks: list[tuple[float, str]],
              y_label: str, log_y: bool = False, width: int = 900, height: int = 320,
              shades: list[tuple[float, float]] = ()) -> str:
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    left, right, top, bottom = 70, 20, 40, 45
    points = [p for s in series.values() for p in s]
    if not points:
        points = [(0, 1)]
    x_max = max(max(p[0] for p in points), max((m[0] for m in marks), default=0), 1)
    ys = [max(p[1], 0.01) for p in points]
    if log_y:
        y_lo = 10 ** math.floor(math.log10(min(ys)))
        y_hi = 10 ** math.ceil(math.log10(max(ys) * 1.01))
        if y_hi <= y_lo:
            y_hi = y_lo * 10

        def fy(v: float) -> float:
            v = max(v, y_lo)
            return top + (height - top - bottom) * (1 - (math.log10(v) - math.log10(y_lo))
                                                     / (math.log10(y_hi) - math.log10(y_lo)))
        ticks = [10 ** e for e in range(int(math.log10(y_lo)), int(math.log10(y_hi)) + 1)]
    else:
        y_lo, y_hi = 0.0, max(ys) * 1.1

        def fy(v: float) -> float:
            return top + (height - top - bottom) * (1 - (v - y_lo) / (y_hi - y_lo))
        ticks = [y_hi * i / 4 for i in range(5)]

    def fx(v: float) -> float:
        return left + (width - left - right) * v / x_max

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    for t in ticks:
        y = fy(t)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
    step = max(1, int(x_max // 10))
    for x in range(0, int(x_max) + 1, step):
        out.append(f'<text x="{fx(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x}</text>')
    out.append(f'<text x="{(left + width) / 2}" y="{height - 8}" text-anchor="middle">seconds</text>')
    out.append(f'<text x="14" y="{(top + height - bottom) / 2}" transform="rotate(-90 14 '
               f'{(top + height - bottom) / 2})" text-anchor="middle">{escape(y_label)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
               'fill="none" stroke="#999"/>')
    for (x0, x1) in shades:
        if x1 > x0:
            out.append(f'<rect x="{fx(x0):.1f}" y="{top}" width="{fx(x1) - fx(x0):.1f}" '
                       f'height="{height - top - bottom}" fill="#f0f0f0"/>')
    for (x, label) in marks:
        out.append(f'<line x1="{fx(x):.1f}" x2="{fx(x):.1f}" y1="{top}" y2="{height - bottom}" '
                   'stroke="#444" stroke-dasharray="5,4"/>')
        out.append(f'<text x="{fx(x) + 4:.1f}" y="{top + 14}" fill="#444">{escape(label)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        if pts:
            path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in pts)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{path}"/>')
        out.append(f'<rect x="{width - right - 150}" y="{top + 8 + 16 * i}" width="12" height="3" fill="{colour}"/>')
        out.append(f'<text x="{width - right - 134}" y="{top + 13 + 16 * i}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def charts(name: str, runs: list[RunResult], timelines: list[list[dict]], out: Path) -> list[str]:
    """Latency percentiles and throughput over time (each run's `timeline`), the runs one after
    another on one axis, each switch (the start of the next run, a schedule's step) marked."""
    lat: dict[str, list] = {}
    rps: dict[str, list] = {}
    marks: list = []
    shades: list = []
    offset = 0.0
    for run, tl in zip(runs, timelines):
        lat[f"p99 {run.label}"] = [(offset + p["t"], p["p99_ms"]) for p in tl]
        lat[f"p50 {run.label}"] = [(offset + p["t"], p["p50_ms"]) for p in tl]
        rps[f"req/s {run.label}"] = [(offset + p["t"], p["rps"]) for p in tl]
        if offset:
            marks.append((offset, f"switch: {run.label.replace('-', ' ')}"))
        shades.append((offset, offset + run.window[0]))
        marks += [(offset + t, text) for t, text in run.steps]
        offset += max((p["t"] for p in tl), default=0) + 1
    files = []
    for kind, series, label, log_y in (("latency", lat, "ms (log scale)", True),
                                       ("throughput", rps, "requests answered per second", False)):
        path = out / f"{name}-{kind}.svg"
        path.write_text(svg_chart(f"{name}: {kind} (grey: ramp and warm-up, not measured)",
                                  series, marks, label, log_y, shades=shades))
        files.append(path.name)
    return files


# ---------------------------------------------------------------------------------------------
# What each fix is compared under


@dataclass
class Comparison:
    """How one fix is shown: the scenario, its rate, and any fault that sets the stage."""

    scenario: str
    rate: int
    flags: list[str]
    indexes: bool = False
    faults: dict = field(default_factory=dict)
    why: str = ""
    # Flags held off through both runs, so that the one compared works alone.
    held_off: list = field(default_factory=list)


COMPARISONS = {
    "indexes": Comparison("task-page", 100, [], indexes=True,
                          why="deep task pages without the (project_id, created_at, id) index: a scan per page"),
    "batch_loading": Comparison("task-page", 100, ["batch_loading"],
                                why="pages of 50 tasks, each assignee and comment count loaded by its own query"),
    "cache": Comparison("hot-read", 1500, ["cache"],
                        why="skewed reads of tasks, projects and first pages, at about what Postgres alone can serve here"),
    "async_jobs": Comparison("write", 60, ["async_jobs"],
                             why="assignments send an email through an SMTP server that answers after the run's SMTP delay"),
    "timeouts": Comparison("peak-hour", 100, ["timeouts"], faults={"postgres": (3000, 0.0)},
                           held_off=["circuit_breaker", "load_shedding"],
                           why="every Postgres statement answers 3 s late (a fault): without deadlines a request "
                               "waits for each of its statements in turn; with them, no longer than its class's "
                               "deadline (breaker and shedder held off in both runs: they would refuse first)"),
    "load_shedding": Comparison("overload", 3000, ["load_shedding"],
                                why="the peak-hour mix offered beyond the capacity"),
    "circuit_breaker": Comparison("hot-read", 300, ["circuit_breaker"], faults={"redis": (1000, 1.0)},
                                  why="every Redis call fails after 1 s (a fault): without the breaker each read waits for it"),
    "rate_limit": Comparison("overload", 1200, ["rate_limit"], held_off=["load_shedding"],
                             why="the peak-hour mix at about half the capacity, plus a scraper per 60 users "
                                 "walking a big project's tasks, 100 a page, with no pause; load "
                                 "shedding held off in both runs (it would refuse the scrapers' pages first)"),
    "all": Comparison("peak-hour", 400, FLAGS, indexes=True,
                      why="the case study: every fix off (indexes dropped too), then every fix on"),
}
ORDER = ["indexes", "batch_loading", "cache", "async_jobs", "timeouts", "load_shedding",
         "circuit_breaker", "rate_limit", "all"]


def set_indexes(stack: Stack, present: bool) -> None:
    if not stack.keel:
        raise RunError("the indexes exercise needs the runner's own stack (or run `keel workshop "
                       "drop-indexes` yourself)")
    stack.keel_cmd("workshop", "restore-indexes" if present else "drop-indexes", timeout=1800)


# ---------------------------------------------------------------------------------------------
# Reports


def write_reports(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# {report['title']}", ""]
    m = report["machine"]
    lines += [
        f"Keel {m['commit']} on {m['cpus']} CPUs ({m['cpu_model']}), {m['python']}; "
        f"{report['seed']['tasks']} seeded tasks, {report['seed']['users']} users; "
        f"Goose users paced at {report['pace_ms']} ms; {report['generated_at']}.",
        "",
        "Latency is counted over the measured window, Goose's back-filled requests included "
        "(coordinated omission corrected); `p99 raw` is the requests actually sent, `p99 of 2xx` "
        "the successful ones only (refusals are fast). `req/s` is what was sent and answered; "
        "`errors` the 5xx (refusals included) and failed connections. Shed and 429 shares are the "
        "service's own counts against the requests it answered over the whole run. `overload`'s "
        "scrapers are left out of the headline figures and shown per request.",
        "",
    ]
    for section in report["sections"]:
        lines += [f"## {section['name']}", "", section["why"], ""]
        lines += ["| run | req/s | p50 ms | p90 ms | p99 ms | max ms | p99 raw | p99 of 2xx | errors | shed | 429 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for run in section["runs"]:
            s = run["summary"]
            lines.append(
                f"| {run['label']} | {s['requests_per_second']} | {s['p50_ms']} | {s['p90_ms']} | "
                f"{s['p99_ms']} | {s['max_ms']} | {s['p99_ms_uncorrected']} | {s['p99_ms_2xx']} | {s['error_rate']:.1%} | "
                f"{s['shed_rate']:.1%} | {s['rate_limited_rate']:.1%} |")
        if "ratios" in section:
            r = section["ratios"]
            change = (r["p99"] - 1) * 100 if r.get("p99") is not None else None
            lines += ["", f"on/off: p99 × {r['p99']}, p99 of 2xx × {r['p99_2xx']}, p50 × {r['p50']}, "
                      f"req/s × {r['requests_per_second']}"
                      + (f" — p99 {change:+.1f} %" if change is not None else "")]
        kinds = sorted({k for run in section["runs"] for k in run["summary"]["by_request"]})
        if kinds:
            labels = [run["label"] for run in section["runs"]]
            lines += ["", "| request | " + " | ".join(f"{l}: n, p50, p99 ms" for l in labels) + " |",
                      "| --- |" + " ---: |" * len(labels)]
            for kind in kinds:
                cells = []
                for run in section["runs"]:
                    k = run["summary"]["by_request"].get(kind)
                    cells.append(f"{k['requests']}, {k['p50_ms']}, {k['p99_ms']}" if k else "–")
                lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        if "soak" in section and section["soak"].get("series"):
            lines += ["", "| soak: series | first minute | last minute | max |", "| --- | ---: | ---: | ---: |"]
            for key, v in section["soak"]["series"].items():
                lines.append(f"| `{key}` | {v['first']} | {v['last']} | {v['max']} |")
        lines.append("")
        for step in section.get("steps", []):
            lines.append(f"- at {step['t']:.1f} s ({step['run']}): {step['what']}")
        lines += [""] + [f"![{c}]({c})" for c in section["charts"]] + [""]
    (out / "report.md").write_text("\n".join(lines))


def machine() -> dict:
    def sh(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
        except OSError:
            return ""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dirty = " (with uncommitted changes)" if sh("git", "status", "--porcelain", "--untracked-files=no") else ""
    return {
        "commit": sh("git", "rev-parse", "--short", "HEAD") + dirty,
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
    }


def seed_facts(stack: Stack) -> dict:
    report = json.loads(stack.seed_report.read_text())
    return {"tasks": report["counts"]["tasks"], "users": report["counts"]["users"],
            "tokens": len(report["sample_users"])}


# ---------------------------------------------------------------------------------------------
# The commands


def common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", default="30s", help="measured time per run (default 30s)")
    p.add_argument("--warmup", default="5s", help="unmeasured lead-in per run (default 5s)")
    p.add_argument("--tasks", type=int, default=200_000, help="tasks `keel seed` makes (default 200000)")
    p.add_argument("--tokens", type=int, default=200, help="pre-issued tokens (default 200)")
    p.add_argument("--rate", type=int, help="requests/s offered (default: the scenario's)")
    p.add_argument("--pace", type=int, default=0,
                   help="each Goose user's pause, ms (default: 100 000 / rate, from 100 to 1 000)")
    p.add_argument("--out", type=Path, help="the report's directory (default target/workshop/NAME)")
    p.add_argument("--smtp-delay", default="200ms", help="the SMTP server's answer delay (default 200ms)")
    p.add_argument("--pg-server", default=os.environ.get("PG_SERVER", "postgres://postgres@127.0.0.1:5432"),
                   help="the Postgres server for the scratch database (loopback)")
    p.add_argument("--api", help="use a running Keel: its public URL (with --admin and --seed-report)")
    p.add_argument("--admin", help="the running Keel's admin URL")
    p.add_argument("--seed-report", type=Path, help="the running Keel's `keel seed --out` report")
    p.add_argument("--admin-token", default=os.environ.get("KEEL_ADMIN_TOKEN", DEV_ADMIN_TOKEN))


def check_loopback(url: str) -> None:
    host = urllib.request.urlparse(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        raise RunError(f"{url}: load goes to loopback only")


class Interruptible:
    """A command's life that SIGINT/SIGTERM end the same way as its normal end: `close()`,
    run once, with the signals ignored while it runs; a subclass says what closing does in
    `_close()` and installs the handlers (`_handle_signals()`) before it starts anything."""

    _interrupted = "cleaning up"  # what the note on a signal says is happening
    _note = staticmethod(note)  # a runner's own, for its prefix
    _closed = False

    def _handle_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        self._note(f"interrupted ({signal.Signals(signum).name}); {self._interrupted}")
        self.close()
        sys.exit(128 + signum)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self._close()

    def _close(self) -> None:
        raise NotImplementedError


class Session(Interruptible):
    """One command's life: the build, the stack, the switch record, the guardian; `close()`
    (also on SIGINT/SIGTERM) restores the switches and stops what it started."""

    _interrupted = "restoring and stopping"

    def __init__(self, args, name: str):
        self.args = args
        self.stack: Stack | None = None
        self.guardian: Guardian | None = None
        # First of all, so that an interrupt at any point (the build included) ends the
        # same way: whatever exists so far is put back and stopped.
        self._handle_signals()
        self.out = (args.out or ROOT / "target" / "workshop" / name).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.keel, sink, self.goose = build()
        if args.api:
            if not (args.admin and args.seed_report):
                raise RunError("--api needs --admin and --seed-report")
            for url in (args.api, args.admin):
                check_loopback(url)
            self.stack = Stack(args.api, args.admin, args.admin_token, args.seed_report.resolve(),
                               keel=self.keel, workdir=self.out)
        self.record = self.out / "switches.json"
        self.guardian = Guardian(self.record, args.admin_token)
        if self.stack is not None:
            self.stack.guardian = self.guardian
        if self.stack is None:
            self.stack = own_stack(args, self.out, self.keel, sink, self.guardian)
        self.switches = Switches(Admin(self.stack.admin, self.stack.token), self.record)

    def _close(self) -> None:
        if hasattr(self, "switches"):  # not before the stack is up
            try:
                self.switches.restore()
            except RunError as e:
                note(str(e))
        if self.stack is not None:
            self.stack.stop()
        if self.guardian is not None:
            self.guardian.close()

    def report(self, title: str, sections: list[dict]) -> dict:
        """The report's document: the sections, with where and how they were measured."""
        return {
            "title": title,
            "generated_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": machine(),
            "seed": seed_facts(self.stack),
            "pace_ms": self.args.pace or "100 000 / rate (100–1 000)",
            "duration_s": seconds(self.args.duration),
            "warmup_s": seconds(self.args.warmup),
            "sections": sections,
        }

    def shape(self, scenario: str, rate: int, ramp: float = 0.0) -> Shape:
        return Shape(scenario, self.args.rate or rate, seconds(self.args.duration),
                     seconds(self.args.warmup), ramp, self.args.pace)


def compare(session: Session, name: str) -> dict:
    """One fix: the scenario with the fix off, then on; faults that set the stage stay on
    through both runs."""
    c = COMPARISONS[name]
    sw = session.switches
    ramp = min(10.0, seconds(session.args.duration) / 3) if c.scenario == "peak-hour" else 0.0
    shape = session.shape(c.scenario, c.rate, ramp)
    # A fault that sets the stage comes on once the users have signed in and learned their ids
    # (a second or two into the warm-up), so the scenario is the same one in both runs.
    stage = [Step(at=min(2.0, shape.ramp + shape.warmup * 0.4), fault=dependency, latency_ms=latency,
                  error_rate=errors) for dependency, (latency, errors) in c.faults.items()]
    for flag in c.held_off:
        sw.flag(flag, False)
    runs = []
    for label, on in (("off", False), ("on", True)):
        for flag in c.flags:
            sw.flag(flag, on)
        if c.indexes:
            set_indexes(session.stack, on)
        time.sleep(1.5)  # every instance follows a change within the poll interval (1 s here)
        runs.append(run_goose(session.goose, session.stack, shape, session.out, f"{name}-{label}", sw, stage))
        for dependency in c.faults:
            sw.fault(dependency, 0, 0.0)
    for flag in c.held_off:
        sw.flag(flag, sw.original["flags"][flag])
    summaries = [summarise(r) for r in runs]
    timelines = [timeline(r) for r in runs]
    off, on = summaries
    section = {
        "name": name,
        "scenario": c.scenario,
        "why": c.why,
        "rate": session.args.rate or c.rate,
        "faults": {d: {"latency_ms": l, "error_rate": e} for d, (l, e) in c.faults.items()},
        "runs": [{"label": r.label.rsplit("-", 1)[1], "summary": s, "timeline": tl}
                 for r, s, tl in zip(runs, summaries, timelines)],
        "ratios": {k: ratio(on[f"{k}_ms"], off[f"{k}_ms"]) for k in ("p50", "p90", "p99")}
        | {"p99_2xx": ratio(on["p99_ms_2xx"], off["p99_ms_2xx"])}
        | {"requests_per_second": ratio(on["requests_per_second"], off["requests_per_second"])},
        "charts": charts(name, runs, timelines, session.out),
    }
    note(f"{name}: p99 off {off['p99_ms']} ms → on {on['p99_ms']} ms (2xx: {off['p99_ms_2xx']} → "
         f"{on['p99_ms_2xx']}); "
         f"req/s {off['requests_per_second']} → {on['requests_per_second']}")
    return section


def before_after(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loadtests/before-after", description=(
        "Each fix's scenario with the fix off, then on, on the same seeded data; a report "
        "(report.json, report.md, SVG charts) in --out. FIX: a fix flag, `indexes`, or `all`; "
        "none: every one of them."))
    p.add_argument("fix", nargs="?", choices=ORDER, help="the fix to compare (default: every fix)")
    common_args(p)
    args = p.parse_args(argv)
    fixes = [args.fix] if args.fix else ORDER
    session = Session(args, args.fix or "all-fixes")
    try:
        sections = [compare(session, name) for name in fixes]
        write_reports(session.out, session.report(f"Keel before/after: {', '.join(fixes)}", sections))
        note(f"report: {session.out / 'report.md'}")
        return 0
    finally:
        session.close()


def scenario(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loadtests/scenario", description=(
        "One scenario at a fixed rate, optionally replaying a schedule of flag and fault "
        "changes; a report (report.json, report.md, SVG charts) in --out."))
    p.add_argument("name", choices=SCENARIOS)
    p.add_argument("--schedule", type=Path, help="a TOML file of steps (see loadtests/schedules/)")
    common_args(p)
    args = p.parse_args(argv)
    steps = load_schedule(args.schedule) if args.schedule else []
    defaults = {"hot-read": 800, "task-page": 100, "write": 60, "peak-hour": 400, "overload": 3000, "soak": 300}
    session = Session(args, args.name)
    try:
        ramp = min(10.0, seconds(args.duration) / 3) if args.name == "peak-hour" else 0.0
        shape = session.shape(args.name, defaults[args.name], ramp)
        keel_pid = session.stack.processes[-1].pid if session.stack.processes else None
        sampler = (Sampler(session.stack.admin, session.out / "samples.jsonl", keel_pid)
                   if args.name == "soak" else None)
        try:
            run = run_goose(session.goose, session.stack, shape, session.out, args.name, session.switches, steps)
        finally:
            soak = sampler.stop() if sampler else None
        summary = summarise(run)
        tl = timeline(run)
        section = {
            "name": args.name,
            "scenario": args.name,
            "why": f"{args.name} at {shape.rate} req/s" + (f", schedule {args.schedule.name}" if steps else ""),
            "rate": shape.rate,
            "runs": [{"label": args.name, "summary": summary, "timeline": tl}],
            "steps": [{"t": t, "what": what, "run": args.name} for t, what in run.steps],
            "charts": charts(args.name, [run], [tl], session.out),
        }
        if soak:
            section["soak"] = soak
        write_reports(session.out, session.report(f"Keel scenario: {args.name}", [section]))
        note(f"{args.name}: {summary['requests_per_second']} req/s, p50 {summary['p50_ms']} ms, "
             f"p99 {summary['p99_ms']} ms; report: {session.out / 'report.md'}")
        return 0
    finally:
        session.close()


class Sampler:
    """`soak`: once a second, what leaks would show in: Keel's resident memory (when the
    runner started it), its pool, requests in flight, the outbox backlog and the queues' depth
    (from `/metrics`, one key per series)."""

    WATCH = ("db_client_connection_count", "db_client_connection_pending_requests",
             "http_server_active_requests", "keel_outbox_backlog", "keel_queue_depth")

    def __init__(self, admin_url: str, path: Path, pid: int | None):
        import threading

        self.admin = Admin(admin_url, "")
        self.path = path
        self.pid = pid
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.time()
        self.thread.start()

    def _rss_mib(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except (OSError, ValueError):
            return None
        return None

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                text = self.admin.metrics()
            except OSError:
                continue
            sample: dict = {"t": round(time.time() - self.started, 1)}
            if self.pid and (rss := self._rss_mib()) is not None:
                sample["rss_mib"] = rss
            for line in text.splitlines():
                if line.startswith(self.WATCH):
                    series, value = line.rsplit(" ", 1)
                    sample[series] = float(value)
            self.samples.append(sample)

    def stop(self) -> dict:
        self._stop.set()
        self.thread.join(timeout=5)
        self.path.write_text("".join(json.dumps(s) + "\n" for s in self.samples))
        if not self.samples:
            return {"samples": 0}
        keys = sorted({k for s in self.samples for k in s} - {"t"})
        # First and last minute's means side by side: a leak is a drift between them.
        n = min(60, max(1, len(self.samples) // 3))

        def mean(rows: list[dict], key: str) -> float:
            values = [r[key] for r in rows if key in r]
            return round(sum(values) / len(values), 2) if values else 0.0

        return {
            "samples": len(self.samples),
            "series": {k: {"first": mean(self.samples[:n], k), "last": mean(self.samples[-n:], k),
                           "max": max((s.get(k, 0) for s in self.samples), default=0)} for k in keys},
        }


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "--guard":
        guard(Path(sys.argv[2]))
        return 0
    command = Path(sys.argv[0]).name
    try:
        if command == "before-after":
            return before_after(sys.argv[1:])
        if command == "scenario":
            return scenario(sys.argv[1:])
        print("usage: loadtests/before-after … or loadtests/scenario …", file=sys.stderr)
        return 2
    except RunError as e:
        note(str(e))
        return 1
    except subprocess.CalledProcessError as e:
        note(f"{' '.join(map(str, e.cmd))} failed ({e.returncode})")
        return 1


if __name__ == "__main__":
    sys.exit(main())
