"""The scale-out proof (issue 15): `loadtests/scale-out` runs it. Python's standard library
only; the pieces a load run needs (the build, the scratch database and its clean-up, the
guardian, Goose and its request log) are `workshop.py`'s.

On this one machine it stands up what a production deployment has several machines for, and
checks that Keel behaves as a horizontally scaled service:

* **A streaming replica** of the local Postgres, on a port of its own: `pg_basebackup` into a
  scratch directory, started as the `postgres` OS user (not root), removed at the end. The
  primary is shared, so the only change made to it is one temporary, marked line in its
  pg_hba.conf that allows replication connections from 127.0.0.1 (see `HbaLine`).
* **Three `keel serve` and two `keel worker`**, every one with `DATABASE_URL` on the primary
  and `DATABASE_READ_URL` on the replica (a Keel without the read-replica pool ignores the
  latter; replica reads are detected from the replica's own statistics either way).
* **nginx** (Debian's package) in front of the serve instances, a master process of the
  runner's own with a scratch configuration (`render_nginx_conf`).
* **The peak-hour load** (Goose, `workshop.run_goose`) through nginx, with a rolling restart in
  the middle: each serve instance, then each worker, is stopped with SIGTERM and started again.
  Then the same closed-loop load against nginx with one serve instance, and with three.
* **CPU per request at a fixed rate** (`--cost-at RATE`): the same mix as an open loop at RATE
  req/s against one instance and three, with the CPU-ms per request of each group of processes
  (`cpu_ms_per_request`); `--variant` adds configurations (serve instances restarted with other
  variables), a bare `--variant 1`/`3` repeats a baseline (the figures drift as the runs write).

It proves, and exits non-zero unless: no request failed in the rolling-restart run; every
assignment email the database says was due reached the SMTP sink exactly once; the replica
was streaming and served reads (when this Keel can route reads to it); and it prints req/s
with one instance and with three side by side, with the CPU the machine spent.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workshop as ws  # noqa: E402
from workshop import RunError  # noqa: E402

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"  # the OS user that owns Postgres' binaries: the replica runs as it
EMAIL_KIND = "email.task_assigned"


def note(message: str) -> None:
    print(f"scale-out: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Pure parts (tested in loadtests/tests/test_scaleout.py)


def render_nginx_conf(prefix: Path, port: int, upstreams: list[tuple[int, bool]],
                      client_keepalive: bool = True) -> str:
    """nginx's configuration: one upstream of the serve instances (`(port, up)` each; `up`
    False writes `down`), on 127.0.0.1:`port`, logs and temporary files under `prefix`.

    * **Retries.** `proxy_next_upstream error timeout` hands a request to the next instance
      when the one it picked refused the connection or failed before answering. nginx never
      retries a non-idempotent request (POST, PATCH: `non_idempotent` is deliberately absent)
      once it has been sent upstream, so a POST that may have reached Keel is never sent
      twice: it is retried only when the connection itself failed, i.e. Keel never saw it.
      `timeout` is the connect timeout here (1 s); the read timeout is long (60 s) so that a
      slow answer is waited for, not retried.
    * **Keep-alive** to the upstreams (HTTP/1.1, an empty `Connection` header), as a real
      proxy does. An idle pooled connection that Keel closes as nginx reuses it is the one way
      a write could fail after being sent; that is why an instance is marked `down` *before*
      it is stopped (see `Deployment.restart_serve`), so nginx stops using its connections first.
    * **X-Forwarded-For** gets the client's address appended (`$proxy_add_x_forwarded_for`):
      Keel trusts 127.0.0.1 (`KEEL_TRUSTED_PROXIES`), skips it, and takes the Goose user's own
      address, the one before it, as the client.
    * **Client keep-alive** (`client_keepalive`): off during the rolling restart. A reload
      makes the old worker close its idle client connections, and a client that sends a
      request on one at that instant gets a transport error (the first run of this proof saw
      3 in 8 800 requests, "client error (SendRequest)" in Goose): a race between the proxy
      and the client, before Keel is involved. Kubernetes' ingress-nginx avoids it by changing
      endpoints without a reload (a Lua balancer); open-source nginx cannot, so for that run
      nginx closes each client connection after its answer (`keepalive_timeout 0`). The
      comparison runs, with no reload while they run, keep client keep-alive.
    * `max_fails=0`: no passive health marking; the runner says which instance is down (it
      plays Kubernetes' endpoints controller, which open-source nginx has no equivalent of).
    """
    if not any(up for _, up in upstreams):
        raise ValueError("at least one upstream must be up")
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=0{'' if up else ' down'};" for p, up in upstreams
    )
    return f"""# Written by loadtests/scaleout.py; the runner rewrites it and reloads nginx.
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
# The master runs as root (the runner's user); its worker as an unprivileged user.
user www-data;
events {{
    worker_connections 4096;
}}
http {{
    # `|`-separated: $upstream_addr lists every instance tried, with spaces.
    log_format scaleout '$msec|$status|$request_method|$upstream_addr|$upstream_status|$request_time';
    access_log {prefix}/access.log scaleout;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    keepalive_timeout {"65s" if client_keepalive else "0"};
    keepalive_requests 100000;

    upstream keel {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://keel;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 1s;
            proxy_read_timeout 60s;
            proxy_send_timeout 60s;
        }}
    }}
}}
"""


def hba_marker(pid: int) -> str:
    return f"# keel scale-out {pid}"


def hba_with_line(text: str, marker: str) -> str:
    """pg_hba.conf with a line allowing replication from 127.0.0.1 as `postgres`, marked, at the
    top (the first matching line wins; a `replication` database matches no `all` line)."""
    line = f"host replication {PG_USER} 127.0.0.1/32 trust  {marker}\n"
    return line + text


def hba_without_line(text: str, marker: str) -> str:
    """pg_hba.conf without the lines this run's marker ends (and nothing else changed)."""
    return "".join(l for l in text.splitlines(keepends=True) if not l.rstrip("\n").endswith(marker))


def request_failures(path: Path) -> dict:
    """Every request Goose sent (its on-start `setup` requests included, back-filled samples
    excluded) whose answer was not 2xx/3xx or which got no answer: counts by status and by
    request name. Goose records a transport error as status 0."""
    total, by_status, by_name = 0, {}, {}
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("update") or r.get("coordinated_omission_elapsed", 0):
                continue
            total += 1
            status = int(r.get("status_code", 0) or 0)
            if 200 <= status < 400:
                continue
            key = str(status) if status else "transport error"
            name = f"{r.get('name', '?')} → {key}"
            by_status[key] = by_status.get(key, 0) + 1
            by_name[name] = by_name.get(name, 0) + 1
    return {"requests": total, "failed": sum(by_status.values()),
            "by_status": dict(sorted(by_status.items())), "by_request": dict(sorted(by_name.items()))}


def sink_ids(text: str) -> list[str]:
    """Job ids from the SMTP sink's log (`<message-id>\\t<µs>` lines; Keel's Message-ID is
    `<{job id}@keel>`), one per accepted message, repeats kept."""
    ids = []
    for line in text.splitlines():
        mid = line.split("\t", 1)[0].strip()
        if mid.startswith("<") and mid.endswith("@keel>"):
            ids.append(mid[1:-len("@keel>")])
    return ids


def reconcile_emails(due: list[str], received: list[str]) -> dict:
    """The emails the outbox says were due against those the sink accepted."""
    due_set = set(due)
    counts: dict[str, int] = {}
    for job in received:
        counts[job] = counts.get(job, 0) + 1
    return {
        "due": len(due_set),
        "received": len(received),
        "delivered_once": sum(1 for j in due_set if counts.get(j) == 1),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "missing": sum(1 for j in due_set if j not in counts),
        "unexpected": sum(1 for j in counts if j not in due_set),
    }


def metric_sum(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The sum of a Prometheus counter's series whose labels include `labels`; None when the
    metric is not exposed at all (a Keel without it)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        seen = True
        series, value = line.rsplit(" ", 1)
        if labels and not all(f'{k}="{v}"' in series for k, v in labels.items()):
            continue
        total += float(value)
    return total if seen else None


def parse_access_log(text: str, since: float = 0.0, until: float = float("inf")) -> dict:
    """nginx's access log (`render_nginx_conf`'s format): requests per upstream (the last one
    tried), nginx's own failures (502/504: no instance answered), and retries (more than one
    upstream tried)."""
    per_upstream: dict[str, int] = {}
    retried = gateway_errors = total = 0
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 6:
            continue
        try:
            t = float(parts[0])
        except ValueError:
            continue
        if not since <= t < until:
            continue
        total += 1
        tried = [u.strip() for u in parts[3].replace(" : ", ",").split(",") if u.strip() not in ("", "-")]
        if len(tried) > 1:
            retried += 1
        if tried:
            per_upstream[tried[-1]] = per_upstream.get(tried[-1], 0) + 1
        if parts[1] in ("502", "504"):
            gateway_errors += 1
    return {"requests": total, "per_upstream": dict(sorted(per_upstream.items())),
            "retried": retried, "gateway_errors": gateway_errors}


def group_seconds(before: dict, after: dict, clk_tck: int) -> dict[str, float]:
    """CPU-seconds each group's processes used between two `cpu_sample`s (utime + stime; a
    process that ended or started between the samples is left out)."""
    return {
        group: sum(t - before["groups"].get(group, {}).get(pid, t) for pid, t in ticks.items()) / clk_tck
        for group, ticks in after["groups"].items()
    }


def cpu_cores(before: dict, after: dict, clk_tck: int) -> dict:
    """Cores kept busy between two `cpu_sample`s: the machine's (from /proc/stat) and each
    group's (from its processes' utime + stime; a process that ended between the samples is
    left out)."""
    dt = after["t"] - before["t"]
    out: dict[str, float] = {}
    if dt <= 0:
        return out
    total = after["stat_total"] - before["stat_total"]
    idle = after["stat_idle"] - before["stat_idle"]
    out["machine"] = round((total - idle) / total * after["ncpu"], 2) if total else 0.0
    for group, used_s in group_seconds(before, after, clk_tck).items():
        out[group] = round(used_s / dt, 2)
    # Whatever else ran: Redis, RabbitMQ, the runner, other people's work on a shared machine.
    out["other"] = round(max(0.0, out["machine"] - sum(v for k, v in out.items() if k != "machine")), 2)
    return out


def cpu_ms_per_request(before: dict, after: dict, clk_tck: int, requests: int) -> dict:
    """CPU milliseconds per request between two `cpu_sample`s: the machine's (busy time from
    /proc/stat over all cores) and each group's (utime + stime of its processes; a process that
    ended or started between the samples is left out), with `other` the rest of the machine's.
    Unrounded inputs, rounded to 0.01 ms at the end."""
    out: dict[str, float] = {}
    if requests <= 0 or after["t"] <= before["t"]:
        return out
    total = after["stat_total"] - before["stat_total"]
    idle = after["stat_idle"] - before["stat_idle"]
    # /proc/stat counts every core's ticks: busy ticks / clk_tck are CPU-seconds of the machine.
    machine_s = (total - idle) / clk_tck
    groups_s = group_seconds(before, after, clk_tck)
    out["machine"] = round(machine_s * 1000 / requests, 2)
    for group, used_s in groups_s.items():
        out[group] = round(used_s * 1000 / requests, 2)
    out["other"] = round(max(0.0, machine_s - sum(groups_s.values())) * 1000 / requests, 2)
    return out


def requests_between(rows: list, started: float, t0: float, t1: float) -> tuple[int, int]:
    """(requests, 2xx) of a Goose run's rows (`workshop.read_request_log`'s tuples: start time
    in seconds after `started`, latency, status, real, name) sent between the wall-clock times
    `t0` and `t1`; back-filled rows (not real) are not requests and are left out."""
    n = ok = 0
    for r in rows:
        if r[3] and t0 <= started + r[0] < t1:
            n += 1
            ok += 200 <= r[2] < 300
    return n, ok


def parse_env(items: list[str]) -> dict[str, str]:
    """`KEY=VALUE` assignments (an environment variable's name: letters, digits, `_`)."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not all(c.isalnum() or c == "_" for c in key) or key[0].isdigit():
            raise ValueError(f"{item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def parse_variant(text: str) -> dict:
    """A `--variant`: `[N:]KEY=VALUE[,KEY=VALUE...]`, N the serve instances up (1 or 3; default
    3), the assignments the environment those instances run with; or a bare `1` or `3`, the
    baseline again (the database grows as the runs write, so a baseline repeated after the
    variants shows how much the order alone moved the figures)."""
    if text.strip() in ("1", "3"):
        n = int(text)
        return {"instances": n, "env": {}, "label": f"{n} instance{'s' if n > 1 else ''}"}
    instances = 3
    head, sep, rest = text.partition(":")
    if sep and head.strip().isdigit():
        instances, text = int(head), rest
    if instances not in (1, 3):
        raise ValueError(f"{text!r}: a variant runs 1 or 3 instances")
    env = parse_env([a for a in text.split(",") if a.strip()])
    if not env:
        raise ValueError(f"{text!r}: a variant sets at least one variable")
    label = f"{instances} instance{'s' if instances > 1 else ''}, " + " ".join(f"{k}={v}" for k, v in env.items())
    return {"instances": instances, "env": env, "label": label}


def numbered(labels: list[str]) -> list[str]:
    """Labels made unique in order: a repeated one gets ` (2nd)`, ` (3rd)`, ..."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        k = seen[label]
        out.append(label if k == 1 else f"{label} ({k}{ {2: 'nd', 3: 'rd'}.get(k, 'th') })")
    return out


def file_label(label: str) -> str:
    """A run's label as a file-name part: `3 instances, A=1 B=2` → `3-instances-A=1-B=2`."""
    return "-".join(label.replace(",", " ").split()).replace("/", "_")


def verdicts(report: dict) -> list[tuple[str, str, str]]:
    """The proofs: (name, PASS|FAIL|SKIP, detail). FAIL in any makes the exit status 1."""
    out = []
    if report["rolling_restart"] is None:
        out.append(("zero failed requests during the rolling restart", "SKIP", "--skip-rolling"))
        return out + later_verdicts(report)
    r = report["rolling_restart"]["failures"]
    out.append(("zero failed requests during the rolling restart",
                "PASS" if r["failed"] == 0 and r["requests"] > 0 else "FAIL",
                f"{r['failed']} of {r['requests']} failed" + (f" {r['by_status']}" if r["failed"] else "")))
    restarts = report["rolling_restart"]["restarts"]
    expected = report["rolling_restart"]["expected_restarts"]
    out.append(("every instance restarted once mid-run", "PASS" if len(restarts) == expected else "FAIL",
                f"{len(restarts)} of {expected} restarts"))
    return out + later_verdicts(report)


def later_verdicts(report: dict) -> list[tuple[str, str, str]]:
    out = []
    e = report["emails"]
    ok = e["due"] > 0 and e["missing"] == 0 and e["duplicates"] == 0 and e["unexpected"] == 0
    out.append(("every assignment email delivered exactly once", "PASS" if ok else "FAIL",
                f"{e['due']} due, {e['received']} received, {e['duplicates']} duplicates, "
                f"{e['missing']} missing"))
    rep = report["replica"]
    out.append(("replica streaming", "PASS" if rep["streaming"] else "FAIL",
                f"pg_stat_replication {rep['state']!r}, pg_is_in_recovery {rep['in_recovery']}"))
    reads = rep["reads"]
    seen = reads["replica_xact_commit"] > 0 or (reads["keel_read_route_replica"] or 0) > 0
    detail = (f"{reads['replica_xact_commit']} transactions on the replica's copy of the database, "
              f"keel_db_read_route_total{{target=\"replica\"}} = {reads['keel_read_route_replica']}")
    if seen:
        out.append(("replica reads observed", "PASS", detail))
    elif reads["keel_supports_read_url"] or reads["required"]:
        out.append(("replica reads observed", "FAIL", detail))
    else:
        out.append(("replica reads observed", "SKIP",
                    detail + "; this keel has no read-replica pool (DATABASE_READ_URL is ignored)"))
    return out


# ---------------------------------------------------------------------------------------------
# Postgres: psql helpers, the hba line, the replica


def sql(url: str, query: str, timeout: float = 30) -> str:
    """One value (or rows, `|`-separated) from `psql -At`."""
    return subprocess.run(
        ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", query],
        check=True, capture_output=True, text=True, timeout=timeout,
    ).stdout.strip()


class HbaLine:
    """The one change to the shared primary: a line in its pg_hba.conf that lets the replica
    (and pg_basebackup) connect for replication from 127.0.0.1, ended by a marker with this
    run's pid, so that removing it removes this run's line only. `add` writes the file
    through a temporary file and a rename (owner and mode kept), then `pg_reload_conf()`;
    `remove` the same without the line. The guardian removes it too if the runner is killed."""

    def __init__(self, pg_url: str, marker: str):
        self.pg_url = pg_url
        self.marker = marker
        self.path = Path(sql(pg_url, "show hba_file"))
        self.added = False

    def _write(self, text: str) -> None:
        rewrite_keeping_owner(self.path, text)
        sql(self.pg_url, "select pg_reload_conf()")

    def add(self) -> None:
        self.added = True  # before the write: a failure half-way is still cleaned up
        self._write(hba_with_line(self.path.read_text(), self.marker))

    def remove(self) -> None:
        if self.added:
            remove_hba_line(self.path, self.pg_url, self.marker)
            self.added = False


def rewrite_keeping_owner(path: Path, text: str) -> None:
    st = path.stat()
    tmp = path.with_name(f".{path.name}.scaleout-{os.getpid()}")
    tmp.write_text(text)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, st.st_mode & 0o7777)
    tmp.replace(path)


def remove_hba_line(path: Path, pg_url: str, marker: str) -> None:
    text = path.read_text()
    if marker in text:
        rewrite_keeping_owner(path, hba_without_line(text, marker))
        sql(pg_url, "select pg_reload_conf()")
        note(f"removed the replication line from {path} and reloaded")


def primary_settings(pg_url: str) -> dict[str, str]:
    """The settings a hot standby must have at least as high as its primary's."""
    names = ("max_connections", "max_worker_processes", "max_wal_senders",
             "max_prepared_transactions", "max_locks_per_transaction")
    rows = sql(pg_url, "select name, setting from pg_settings where name in ("
               + ", ".join(f"'{n}'" for n in names) + ")")
    return dict(line.split("|", 1) for line in rows.splitlines())


def render_replica_conf(port: int, socket_dir: Path, settings: dict[str, str], app_name: str) -> str:
    """Appended to the copy's postgresql.auto.conf (after `pg_basebackup -R`'s lines: the last
    setting of a name wins, and the auto file is read after postgresql.conf, so nothing the
    primary's own auto file carried can override these)."""
    lines = [
        "# loadtests/scaleout.py: the replica's own settings",
        f"port = {port}",
        "listen_addresses = '127.0.0.1'",
        f"unix_socket_directories = '{socket_dir}'",
        "hot_standby = on",
        "shared_buffers = '32MB'",
        "logging_collector = off",
        "ssl = off",
        # Identifies this standby in the primary's pg_stat_replication.
        f"primary_conninfo = 'host=127.0.0.1 port=5432 user={PG_USER} application_name={app_name}'",
    ]
    lines += [f"{name} = {value}" for name, value in sorted(settings.items())]
    return "\n".join(lines) + "\n"


class Replica:
    """A streaming replica of the local primary in a scratch directory, run as `postgres`."""

    def __init__(self, pg_url: str, scratch: Path, logdir: Path, app_name: str):
        self.pg_url = pg_url
        self.dir = scratch / "replica"
        self.logdir = logdir
        self.app_name = app_name
        self.port = ws.free_port()
        self.proc: subprocess.Popen | None = None
        self.facts: dict = {}

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}"

    def create(self) -> None:
        user = pwd.getpwnam(PG_USER)
        self.dir.mkdir(mode=0o700)
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        note(f"pg_basebackup into {self.dir}")
        started = time.monotonic()
        # -X stream: the WAL written during the copy comes along, over a second connection.
        # No replication slot (no -S/-C, no primary_slot_name below): a slot outlives the
        # standby, and one left behind by a killed run would pin WAL on the shared server
        # forever. (pg_basebackup's own temporary slot lives only as long as its connection.)
        # Without a slot, a standby that falls further behind than the WAL the primary keeps
        # would stop streaming; a run this short does not.
        subprocess.run(
            [str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1",
             "-p", "5432", "-U", PG_USER, "-D", str(self.dir), "-X", "stream", "-R",
             "--checkpoint", "fast", "--no-sync"],
            check=True, timeout=600, capture_output=True, cwd=self.dir, **as_postgres(),
        )
        took = time.monotonic() - started
        size = sum(f.stat().st_size for f in self.dir.rglob("*") if f.is_file())
        databases = sql(self.pg_url, "select count(*) from pg_database where datallowconn").strip()
        self.facts.update(basebackup_s=round(took, 2), basebackup_bytes=size,
                          primary_databases=int(databases))
        note(f"basebackup: {size / 1e6:.1f} MB in {took:.1f} s (the whole cluster: "
             f"{databases} databases on the shared server, not only Keel's)")
        # Debian keeps the cluster's postgresql.conf and pg_hba.conf in /etc: the copy has
        # neither, so it gets minimal ones of its own.
        settings = primary_settings(self.pg_url)
        (self.dir / "postgresql.conf").write_text("# loadtests/scaleout.py: see postgresql.auto.conf\n")
        (self.dir / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n")
        (self.dir / "pg_ident.conf").write_text("")
        with open(self.dir / "postgresql.auto.conf", "a") as f:
            f.write(render_replica_conf(self.port, self.dir, settings, self.app_name))
        for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf", "postgresql.auto.conf"):
            os.chown(self.dir / name, user.pw_uid, user.pw_gid)

    def start(self) -> subprocess.Popen:
        with open(self.logdir / "replica.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(PG_BIN / "postgres"), "-D", str(self.dir)], cwd=self.dir,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_postgres(),
            )
        deadline = time.monotonic() + 90
        state = recovering = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.logdir / "replica.log").read_text(errors="replace")[-2000:]
                raise RunError(f"the replica exited:\n{tail}")
            try:
                recovering = sql(f"{self.url}/postgres", "select pg_is_in_recovery()", timeout=5)
                state = sql(self.pg_url, "select state from pg_stat_replication where application_name = "
                            f"'{self.app_name}'", timeout=5)
            except (subprocess.SubprocessError, OSError):
                pass
            if recovering == "t" and state == "streaming":
                self.facts.update(streaming=True, state=state, in_recovery=True)
                note(f"replica on 127.0.0.1:{self.port}: streaming, in recovery")
                return self.proc
            time.sleep(0.5)
        raise RunError(f"the replica is not streaming after 90 s (state {state!r}, in recovery {recovering!r})")

    def lag(self) -> dict | None:
        """Replay lag now: seconds (pg_stat_replication.replay_lag) and bytes behind."""
        try:
            row = sql(self.pg_url, "select coalesce(extract(epoch from replay_lag), 0), "
                      "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), state from pg_stat_replication "
                      f"where application_name = '{self.app_name}'", timeout=5)
        except (subprocess.SubprocessError, OSError):
            return None
        if not row:
            return {"lag_s": None, "lag_bytes": None, "state": "absent"}
        lag_s, lag_bytes, state = row.split("|")
        return {"lag_s": float(lag_s), "lag_bytes": int(float(lag_bytes or 0)), "state": state}

    def xact_commit(self, database: str) -> int:
        value = sql(f"{self.url}/postgres",
                    f"select coalesce(sum(xact_commit), 0) from pg_stat_database where datname = '{database}'")
        return int(value or 0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_postgres(self.proc.pid)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                pass
        self.proc = None
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)


def as_postgres() -> dict:
    """Popen's arguments that run a child as the `postgres` OS user (Postgres refuses root).
    Not `runuser`: it would stand between the runner and postgres, and it answers a signal by
    sending SIGTERM and then SIGKILL, where a fast shutdown wants SIGINT."""
    user = pwd.getpwnam(PG_USER)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
            "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": user.pw_dir, "LANG": "C.UTF-8"}}


def stop_postgres(pid: int) -> None:
    """Fast shutdown (SIGINT: clients are disconnected, no waiting for them), then immediate
    (SIGQUIT) after 30 s."""
    if pid <= 0:
        return
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGQUIT, 10)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
                if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                    return
            except (ProcessLookupError, FileNotFoundError):
                return
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# The guardian: workshop's, with the replica and the hba line


class Guardian(ws.Guardian):
    def __init__(self, record: Path):
        super().__init__(record, ws.DEV_ADMIN_TOKEN, script=__file__)

    def replica(self, pid: int, directory: Path) -> None:
        self._tell(f"replica {pid} {directory}")

    def hba(self, path: Path, pg_url: str, marker_pid: int) -> None:
        self._tell(f"hba {marker_pid} {pg_url} {path}")

    def scratch(self, directory: Path) -> None:
        self._tell(f"scratch {directory}")

    def amqp(self, keel: Path, prefix: str, database_url: str) -> None:
        """The run's RabbitMQ queues and exchange (`keel jobs delete-topology`)."""
        self._tell(f"amqp {keel} {prefix} {database_url}")


def guard_extra(lines: list[str]) -> None:
    """The runner died: stop the replica and delete its directory (and the scratch directory),
    delete the RabbitMQ names, then take the hba line out."""
    replicas = [line.split(" ", 2)[1:] for line in lines if line.startswith("replica ")]
    for pid, _ in replicas:  # every process first: the directory goes once nothing runs in it
        stop_postgres(int(pid))
    for _, directory in replicas:
        if Path(directory).exists():
            shutil.rmtree(directory, ignore_errors=True)
            note(f"guardian: stopped the replica and removed {directory}")
    for line in lines:
        kind, rest = line.split(" ", 1)
        if kind == "scratch":
            shutil.rmtree(rest, ignore_errors=True)
        elif kind == "amqp":
            keel, prefix, database_url = rest.split(" ", 2)
            env = {**os.environ, "KEEL_ENV": "dev", "KEEL_AMQP_PREFIX": prefix, "DATABASE_URL": database_url}
            try:
                subprocess.run([keel, "jobs", "delete-topology"], env=env, timeout=60, check=True,
                               stdout=subprocess.DEVNULL)
            except (OSError, subprocess.SubprocessError) as e:
                note(f"guardian: could not delete the RabbitMQ names under {prefix}: {e}")
    for line in lines:
        kind, rest = line.split(" ", 1)
        if kind == "hba":
            pid, pg_url, path = rest.split(" ", 2)
            try:
                remove_hba_line(Path(path), pg_url, hba_marker(int(pid)))
            except (OSError, subprocess.SubprocessError) as e:
                note(f"guardian: could not remove the hba line from {path}: {e}")


# ---------------------------------------------------------------------------------------------
# CPU from /proc


def _proc_ticks(pid: int) -> int | None:
    try:
        return ws.stat_ticks(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, IndexError, ValueError):
        return None


def _pids_by_exe(names: tuple[str, ...]) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.path.basename(os.readlink(entry / "exe")) in names:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def cpu_sample(groups: dict[str, list[int]]) -> dict:
    busy, total = ws.cpu_busy(Path("/proc/stat").read_text())
    return {
        "t": time.monotonic(),
        "wall": time.time(),
        "stat_total": total,
        "stat_idle": total - busy,
        "ncpu": os.cpu_count() or 1,
        "groups": {g: {p: t for p in pids if (t := _proc_ticks(p)) is not None} for g, pids in groups.items()},
    }


# ---------------------------------------------------------------------------------------------
# The deployment: nginx, serve instances, workers


@dataclass
class Instance:
    name: str
    http_port: int
    admin_port: int
    proc: subprocess.Popen | None = None
    up: bool = True  # in nginx's upstream
    env: dict = field(default_factory=dict)  # its own variables (--instance-env, --variant)


@dataclass
class Deployment:
    stack: ws.Stack
    keel: Path
    nginx_dir: Path
    nginx_port: int
    serves: list[Instance]
    workers: list[Instance]
    logdir: Path
    shutdown_delay: float
    guardian: Guardian
    nginx: subprocess.Popen | None = None
    events: list = field(default_factory=list)
    t0: float = 0.0
    client_keepalive: bool = False  # see render_nginx_conf

    def event(self, what: str) -> None:
        t = round(time.time() - self.t0, 2) if self.t0 else 0.0
        self.events.append((t, what))
        note(f"{t:6.1f}s {what}")

    # nginx -----------------------------------------------------------------------------------
    def nginx_argv(self, *extra: str) -> list[str]:
        return ["nginx", "-p", str(self.nginx_dir), "-c", str(self.nginx_dir / "nginx.conf"), *extra]

    def write_nginx_conf(self) -> None:
        conf = render_nginx_conf(self.nginx_dir, self.nginx_port,
                                 [(i.http_port, i.up) for i in self.serves], self.client_keepalive)
        tmp = self.nginx_dir / "nginx.conf.tmp"
        tmp.write_text(conf)
        tmp.replace(self.nginx_dir / "nginx.conf")
        subprocess.run(self.nginx_argv("-t", "-q"), check=True, timeout=30, capture_output=True)

    def start_nginx(self) -> None:
        # nginx creates the temporary directories under it, owned by its worker's user.
        (self.nginx_dir / "tmp").mkdir(exist_ok=True)
        self.write_nginx_conf()
        with open(self.logdir / "nginx.log", "ab") as log:
            self.nginx = subprocess.Popen(self.nginx_argv("-g", "daemon off;"), stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        self.guardian.watch(self.nginx.pid)
        deadline = time.monotonic() + 20
        while not port_open(self.nginx_port):
            if self.nginx.poll() is not None or time.monotonic() > deadline:
                raise RunError("nginx did not start: see nginx.log and nginx/error.log")
            time.sleep(0.1)

    def reload_nginx(self) -> None:
        """New configuration: the master starts new workers with it and lets the old ones finish
        the requests they hold. From here on no new request goes to an instance marked down."""
        self.write_nginx_conf()
        subprocess.run(self.nginx_argv("-s", "reload"), check=True, timeout=30, capture_output=True)
        time.sleep(0.5)  # the new worker is up within milliseconds; this is margin
        if self.nginx is None or self.nginx.poll() is not None:
            raise RunError("nginx died on reload")

    def set_up(self, which: list[bool]) -> None:
        for inst, up in zip(self.serves, which):
            inst.up = up
        self.reload_nginx()

    def stop_nginx(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.terminate()
            try:
                self.nginx.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
        self.nginx = None

    # Keel ------------------------------------------------------------------------------------
    def start_instance(self, inst: Instance, role: str) -> None:
        env = {"KEEL_HTTP_ADDR": f"127.0.0.1:{inst.http_port}",
               "KEEL_ADMIN_ADDR": f"127.0.0.1:{inst.admin_port}",
               # The primary is shared (max_connections 100 for everyone): 3 × 8 + 2 × 4 at most.
               "KEEL_DB_MAX_CONNECTIONS": "8" if role == "serve" else "4",
               **inst.env}
        inst.proc = self.stack.start_process(
            inst.name, [str(self.keel), role], f"http://127.0.0.1:{inst.admin_port}/readyz", env)

    def stop_instance(self, inst: Instance, timeout: float = 60) -> float:
        """SIGTERM and wait for the exit; returns how long the exit took."""
        assert inst.proc is not None
        started = time.monotonic()
        inst.proc.terminate()
        try:
            code = inst.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            inst.proc.kill()
            inst.proc.wait(timeout=10)
            raise RunError(f"{inst.name} did not exit within {timeout:.0f} s of SIGTERM") from None
        if inst.proc in self.stack.processes:
            self.stack.processes.remove(inst.proc)
        if code != 0:
            raise RunError(f"{inst.name} exited with {code} after SIGTERM (see {inst.name}.log)")
        return time.monotonic() - started

    def restart_serve(self, inst: Instance) -> dict:
        """One step of a rolling restart, as Kubernetes does it, with the runner as the endpoints
        controller (open-source nginx has no active health checks to notice by itself):

        1. the instance leaves the load balancer: marked `down`, nginx reloaded (Kubernetes:
           the pod is Terminating, so the endpoints controller takes it out of the Service,
           and the proxies follow);
        2. SIGTERM (Kubernetes sends it at the same time as step 1, not after: that race is why
           Keel keeps serving for KEEL_SHUTDOWN_DELAY, with /readyz at 503, before it closes
           its listeners — requests already routed to it, or routed by a proxy that has not
           caught up yet, are still answered);
        3. the listeners close, in-flight requests finish, the process exits;
        4. a new instance starts on the same ports, and once /readyz answers 200 (Kubernetes:
           the readiness probe passes) it goes back into the upstream; nginx reloaded.
        """
        t = time.time() - self.t0
        inst.up = False
        self.reload_nginx()
        self.event(f"{inst.name}: marked down in nginx, SIGTERM")
        took = self.stop_instance(inst)
        self.event(f"{inst.name}: exited after {took:.1f} s; starting again")
        started = time.monotonic()
        self.start_instance(inst, "serve")
        ready = time.monotonic() - started
        inst.up = True
        self.reload_nginx()
        self.event(f"{inst.name}: ready after {ready:.1f} s, back in nginx")
        return {"instance": inst.name, "at_s": round(t, 2), "exit_s": round(took, 2), "ready_s": round(ready, 2)}

    def restart_worker(self, inst: Instance) -> dict:
        """A worker has no traffic to drain: SIGTERM stops its consumers (unacknowledged
        messages go back to the queue for the other worker), the relay and the mailer, within
        KEEL_SHUTDOWN_TIMEOUT; then it starts again."""
        t = time.time() - self.t0
        self.event(f"{inst.name}: SIGTERM")
        took = self.stop_instance(inst)
        started = time.monotonic()
        self.start_instance(inst, "worker")
        ready = time.monotonic() - started
        self.event(f"{inst.name}: exited after {took:.1f} s, ready again after {ready:.1f} s")
        return {"instance": inst.name, "at_s": round(t, 2), "exit_s": round(took, 2), "ready_s": round(ready, 2)}

    def configure_serve(self, inst: Instance, env: dict) -> None:
        """Restart a serve instance with `env` as its own variables, if it has others (between
        runs: nothing is routed to it while it restarts that matters to a measurement)."""
        if inst.env == env and inst.proc is not None and inst.proc.poll() is None:
            return
        self.stop_instance(inst)
        inst.env = dict(env)
        self.start_instance(inst, "serve")
        note(f"{inst.name} restarted with {env or 'no variables of its own'}")

    def metrics_sum(self, name: str, labels: dict | None = None) -> float | None:
        total, seen = 0.0, False
        for inst in self.serves:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{inst.admin_port}/metrics", timeout=5) as r:
                    value = metric_sum(r.read().decode(), name, labels)
            except OSError:
                continue
            if value is not None:
                total, seen = total + value, True
        return total if seen else None


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---------------------------------------------------------------------------------------------
# The run


class Monitor:
    """Once a second: the replica's lag (max kept) while the run goes on."""

    def __init__(self, replica: Replica):
        self.replica = replica
        self.max_lag_s = 0.0
        self.max_lag_bytes = 0
        self.states: set = set()
        self.samples = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            lag = self.replica.lag()
            if lag is None:
                continue
            self.samples += 1
            self.states.add(lag["state"])
            if lag["lag_s"] is not None:
                self.max_lag_s = max(self.max_lag_s, lag["lag_s"])
                self.max_lag_bytes = max(self.max_lag_bytes, lag["lag_bytes"])

    def stop(self) -> dict:
        self._stop.set()
        self.thread.join(timeout=10)
        return {"samples": self.samples, "max_replay_lag_s": round(self.max_lag_s, 3),
                "max_lag_bytes": self.max_lag_bytes, "states": sorted(self.states)}


def wait_for_emails(stack: ws.Stack, sink_log: Path, timeout: float) -> tuple[list, list]:
    """Until the sink has every email the outbox holds (or `timeout`): (due ids, received ids)."""
    db = stack.env["DATABASE_URL"]
    deadline = time.monotonic() + timeout
    while True:
        due = sql(db, f"select id from outbox where kind = '{EMAIL_KIND}' order by id").split()
        received = sink_ids(sink_log.read_text() if sink_log.exists() else "")
        if set(due) <= set(received) or time.monotonic() > deadline:
            return due, received
        time.sleep(1)


class GoosePids:
    """The Goose process of the run in progress: run_goose keeps its own handle, so it is found
    by its executable among this runner's children (another person's Goose may be running)."""

    def __init__(self, goose: Path):
        self.name = goose.name

    def __call__(self) -> list[int]:
        return [p for p in _pids_by_exe((self.name,)) if _ppid(p) == os.getpid()]


def measured_cpu(dep: Deployment, goose: Path, start_at: float, end_at: float, out: dict,
                 raw: dict | None = None) -> threading.Thread:
    """Samples CPU at `start_at` and `end_at` (time.time()) in a thread; fills `out` (cores
    busy) and `raw` (the two samples, when given)."""

    def groups() -> dict[str, list[int]]:
        nginx = [dep.nginx.pid] if dep.nginx else []
        nginx += [p for p in _pids_by_exe(("nginx",)) if _ppid(p) in nginx]
        return {
            "keel serve": [i.proc.pid for i in dep.serves if i.proc and i.proc.poll() is None],
            "keel worker": [i.proc.pid for i in dep.workers if i.proc and i.proc.poll() is None],
            "nginx": nginx,
            "goose": GoosePids(goose)(),
            "postgres (all)": _pids_by_exe(("postgres",)),
            # Redis (its executable is redis-check-rdb on Debian: redis-server is a link to it)
            # and RabbitMQ's Erlang VM: shared services, so any other user's use counts too.
            "redis + rabbitmq": _pids_by_exe(("redis-server", "redis-check-rdb", "beam.smp")),
        }

    def body() -> None:
        time.sleep(max(0.0, start_at - time.time()))
        g = groups()
        before = cpu_sample(g)
        time.sleep(max(0.0, end_at - time.time()))
        after = cpu_sample(g)
        out.update(cpu_cores(before, after, os.sysconf("SC_CLK_TCK")))
        if raw is not None:
            raw.update(before=before, after=after)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(prog="loadtests/scale-out", description=(
        "The scale-out proof: a streaming replica, 3 keel serve + 2 keel worker behind nginx, the "
        "peak-hour load with a rolling restart, then 1 instance against 3. Report in --out."))
    p.add_argument("--out", type=Path, help="report directory (default target/scale-out)")
    p.add_argument("--tasks", type=int, default=30_000, help="tasks seeded (default 30000)")
    p.add_argument("--tokens", type=int, default=200, help="pre-issued tokens (default 200)")
    # 60: while one instance restarts, two hold the load, and each hashes one password at a
    # time (KEEL_PASSWORD_HASH_CONCURRENCY = cores / 2) and sheds a sign-in that waited 100 ms
    # for it; at 100 req/s (5 sign-ins/s) 2 of 9 081 requests were such 503s, on a machine
    # whose cores other work was also using.
    p.add_argument("--rate", type=int, default=60, help="req/s of the rolling-restart run (default 60)")
    p.add_argument("--duration", default="75s", help="the rolling-restart run, measured part (default 75s)")
    p.add_argument("--compare-duration", default="20s", help="each 1-vs-3 run, measured (default 20s)")
    p.add_argument("--compare-users", type=int, default=32,
                   help="closed-loop Goose users of the 1-vs-3 runs (default 32)")
    p.add_argument("--shutdown-delay", default="3s", help="KEEL_SHUTDOWN_DELAY (default 3s)")
    p.add_argument("--smtp-delay", default="20ms", help="the SMTP sink's answer delay (default 20ms)")
    p.add_argument("--drain-timeout", default="120s", help="wait for the email backlog, at most (default 120s)")
    p.add_argument("--require-replica-reads", action="store_true",
                   help="fail when no read reached the replica even if this keel cannot route reads")
    p.add_argument("--skip-compare", action="store_true", help="no closed-loop 1-vs-3 runs")
    p.add_argument("--skip-rolling", action="store_true",
                   help="no rolling-restart run (its checks SKIP): the comparisons only")
    p.add_argument("--cost-at", type=int, default=0, metavar="RATE",
                   help="also run peak-hour at a fixed RATE req/s against 1 instance and 3 (and each "
                        "--variant) and report CPU-ms per request per group of processes (default off)")
    p.add_argument("--cost-duration", default="20s", help="each fixed-rate run, measured (default 20s)")
    p.add_argument("--three-first", action="store_true",
                   help="run the 3-instance baseline before the 1-instance one (order check)")
    p.add_argument("--instance-env", action="append", default=[], metavar="KEY=VALUE",
                   help="a variable for every serve instance whenever the three are up (the rolling "
                        "restart and the 3-instance runs); repeatable")
    p.add_argument("--variant", action="append", default=[], metavar="[N:]KEY=VALUE[,KEY=VALUE]",
                   help="one more configuration to compare, after the baselines: N (1 or 3, default 3) "
                        "serve instances up, restarted with these variables (3: on top of --instance-env); "
                        "a bare 1 or 3 repeats that baseline; repeatable")
    p.add_argument("--pg-server", default=os.environ.get("PG_SERVER", "postgres://postgres@127.0.0.1:5432"))
    args = p.parse_args(argv)
    try:
        args.instance_env = parse_env(args.instance_env)
        args.variant = [parse_variant(v) for v in args.variant]
    except ValueError as e:
        p.error(str(e))
    if args.cost_at < 0:
        p.error("--cost-at: a rate in req/s")
    ws.check_loopback(args.pg_server)
    if not args.pg_server.rstrip("/").endswith(":5432"):
        raise RunError("--pg-server: the replica is made of the local cluster on 127.0.0.1:5432")
    return args


class Run(ws.Interruptible):
    """Everything the run starts, and its clean-up in reverse order, on every exit path."""

    _note = staticmethod(note)

    def __init__(self, args):
        self.args = args
        self.out = (args.out or ws.ROOT / "target" / "scale-out").resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in [*self.out.glob("*.log"), *self.out.glob("requests-*.jsonl"), self.out / "accepted.tsv"]:
            stale.unlink(missing_ok=True)
        self.scratch: Path | None = None
        self.stack: ws.Stack | None = None
        self.dep: Deployment | None = None
        self.replica: Replica | None = None
        self.hba: HbaLine | None = None
        self.guardian: Guardian | None = None
        self._handle_signals()

    def _close(self) -> None:
        steps = [
            ("nginx", lambda: self.dep and self.dep.stop_nginx()),
            ("keel processes, scratch database, RabbitMQ names, Redis keys", lambda: self.stack and self.stack.stop()),
            ("replica", lambda: self.replica and self.replica.stop()),
            ("pg_hba.conf line", lambda: self.hba and self.hba.remove()),
            ("nginx logs", self._keep_nginx_logs),
            ("scratch directory", lambda: self.scratch and shutil.rmtree(self.scratch, ignore_errors=True)),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as e:  # every step runs, whatever the previous one did
                note(f"clean-up of {what} failed: {e}")
        if self.guardian is not None:
            self.guardian.close()

    def _keep_nginx_logs(self) -> None:
        if self.dep:
            for name in ("access.log", "error.log", "nginx.conf"):
                src = self.dep.nginx_dir / name
                if src.exists():
                    shutil.copy(src, self.out / f"nginx-{name}")

    # -----------------------------------------------------------------------------------------
    def go(self) -> int:
        args = self.args
        keel, sink, goose = ws.build()
        pg = args.pg_server.rstrip("/")
        pg_admin = f"{pg}/postgres"
        tag = f"keel_scaleout_{os.getpid()}"
        self.guardian = Guardian(self.out / "switches.json")  # no switches: its record never exists
        self.scratch = Path(tempfile.mkdtemp(prefix="keel-scaleout-"))
        os.chmod(self.scratch, 0o711)  # postgres (the replica) and www-data (nginx) pass through
        self.guardian.scratch(self.scratch)
        slots_before = int(sql(pg_admin, "select count(*) from pg_replication_slots"))

        # 1. The replica.
        self.hba = HbaLine(pg_admin, hba_marker(os.getpid()))
        self.guardian.hba(self.hba.path, pg_admin, os.getpid())
        self.hba.add()
        note(f"added a replication line to {self.hba.path} (removed at the end) and reloaded")
        self.replica = Replica(pg_admin, self.scratch, self.out, tag)
        self.guardian.replica(0, self.replica.dir)  # the directory, before there is a process
        self.replica.create()
        self.replica.start()
        assert self.replica.proc is not None
        self.guardian.replica(self.replica.proc.pid, self.replica.dir)
        monitor = Monitor(self.replica)

        # 2. Keel: the scratch database (created on the primary after the base backup, so it
        # reaches the replica by streaming), seeded; the sink; workers; serve instances.
        smtp_port = ws.free_port()
        sink_log = self.out / "accepted.tsv"
        self.stack = ws.Stack(
            api="", admin="", token=ws.DEV_ADMIN_TOKEN, seed_report=self.out / "seed.json", own=True,
            keel=keel, database=tag, pg_server=pg, workdir=self.out, guardian=self.guardian,
            env={
                "KEEL_ENV": "dev",
                "RUST_LOG": "warn",
                "DATABASE_URL": f"{pg}/{tag}",
                "DATABASE_READ_URL": f"{self.replica.url}/{tag}",
                "KEEL_REDIS_PREFIX": f"{tag}:",
                "KEEL_AMQP_PREFIX": f"{tag}.",
                "KEEL_TRUSTED_PROXIES": "127.0.0.1",
                "SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
                "KEEL_JWT_TTL": "12h",
                "KEEL_FLAGS_POLL_INTERVAL": "1s",
                "KEEL_SHUTDOWN_DELAY": args.shutdown_delay,
                "KEEL_SHUTDOWN_TIMEOUT": "20s",
                # Keep every published outbox row for the email check.
                "KEEL_OUTBOX_RETENTION": "6h",
            },
        )
        self.guardian.drop(pg, tag, f"{tag}:")
        self.guardian.amqp(keel, f"{tag}.", f"{pg}/postgres")
        ws.psql(pg_admin, f'create database "{tag}"')
        self.stack.keel_cmd("migrate")
        note(f"seeding {args.tasks} tasks into {tag}")
        self.stack.keel_cmd("seed", "--tasks", str(args.tasks), "--tokens", str(args.tokens),
                            "--seed", "42", "--out", str(self.stack.seed_report), timeout=900)
        self.stack.start_process("smtp_sink", [str(sink), f"127.0.0.1:{smtp_port}", args.smtp_delay,
                                               str(sink_log), "2h"], None)
        time.sleep(0.3)
        nginx_dir = self.scratch / "nginx"
        nginx_dir.mkdir(mode=0o755)
        serves = [Instance(f"serve-{i + 1}", ws.free_port(), ws.free_port(), env=dict(args.instance_env))
                  for i in range(3)]
        workers = [Instance(f"worker-{i + 1}", 0, ws.free_port()) for i in range(2)]
        dep = self.dep = Deployment(self.stack, keel, nginx_dir, ws.free_port(), serves, workers, self.out,
                                    ws.seconds(args.shutdown_delay), self.guardian)
        for w in workers:
            dep.start_instance(w, "worker")
        for s in serves:
            dep.start_instance(s, "serve")
        dep.start_nginx()
        self.stack.api = f"http://127.0.0.1:{dep.nginx_port}"
        self.stack.admin = f"http://127.0.0.1:{serves[0].admin_port}"
        note(f"nginx on {self.stack.api} → serve on ports {[s.http_port for s in serves]}; "
             f"{len(workers)} workers")
        supports_read_url = b"DATABASE_READ_URL" in keel.read_bytes()
        xact_before = self.replica.xact_commit(tag)

        # 3. The peak-hour load through nginx, with the rolling restart in the middle.
        rolling_report = None
        if not args.skip_rolling:
            duration = ws.seconds(args.duration)
            ramp = min(10.0, duration / 3)
            shape = ws.Shape("peak-hour", args.rate, duration, 5.0, ramp)
            restarts: list = []
            restart_errors: list = []

            def rolling() -> None:
                try:
                    time.sleep(ramp + 5.0 + 5.0)  # into the measured part
                    for inst in serves:
                        restarts.append(dep.restart_serve(inst))
                        time.sleep(2.0)
                    for inst in workers:
                        restarts.append(dep.restart_worker(inst))
                        time.sleep(2.0)
                except Exception as e:  # reported, and the proof fails
                    restart_errors.append(f"{type(e).__name__}: {e}")
                    dep.event(f"rolling restart failed: {e}")

            dep.t0 = time.time()
            roller = threading.Thread(target=rolling, daemon=True)
            roller.start()
            run = ws.run_goose(goose, self.stack, shape, self.out, "rolling-restart", None, [])
            roller.join(timeout=120)
            if roller.is_alive():
                restart_errors.append("the rolling restart did not finish within the run + 120 s")
            failures = request_failures(self.out / "requests-rolling-restart.jsonl")
            summary = ws.summarise(run)
            access = parse_access_log((nginx_dir / "access.log").read_text(), run.started, time.time())
            rolling_report = {
                "rate": shape.rate, "users": shape.goose_users(), "pace_ms": shape.pace_ms,
                "duration_s": shape.total(), "summary": {k: v for k, v in summary.items() if k != "by_request"},
                "failures": failures, "restarts": restarts, "expected_restarts": len(serves) + len(workers),
                "restart_errors": restart_errors, "events": dep.events, "nginx": access,
            }

        # 4. One instance against three: the same closed-loop load (users with no pause, so
        # each one sends its next request as soon as the previous is answered), and, with
        # --cost-at, the same mix at a fixed rate (open loop) with the CPU each group of
        # processes spent per request. Then the same for each --variant.
        compare: list = []
        cost: list = []
        configs = [{"label": "1 instance", "instances": 1, "env": {}},
                   {"label": "3 instances" + (", " + " ".join(f"{k}={v}" for k, v in args.instance_env.items())
                                              if args.instance_env else ""),
                    "instances": 3, "env": dict(args.instance_env)}]
        if args.three_first:
            configs.reverse()
        configs += [{**v, "env": v["env"] if v["instances"] == 1 else {**args.instance_env, **v["env"]}}
                    for v in args.variant]
        for config, label in zip(configs, numbered([c["label"] for c in configs])):
            config["label"] = label
        if not args.skip_compare or args.cost_at:
            # Capacity is what the service serves, so the guardrails that refuse work are off
            # for these runs (as in guardrails-bench.sh's capacity run): with them on, a closed
            # loop measures how fast Keel says 503 or 429. Flags live in the scratch database,
            # which the run drops, so there is nothing to put back.
            admin = ws.Admin(self.stack.admin, self.stack.token)
            for flag in ("load_shedding", "rate_limit"):
                admin.set_flag(flag, False)
            dep.client_keepalive = True
            for config in configs:
                n = config["instances"]
                for inst in serves[:n]:
                    dep.configure_serve(inst, config["env"])
                dep.set_up([i < n for i in range(len(serves))])
                time.sleep(1.0)
                if not args.skip_compare:
                    compare.append(self.closed_loop(config, goose, tag, nginx_dir))
                if args.cost_at:
                    cost.append(self.fixed_rate(config, goose, nginx_dir))
            for inst in serves:
                dep.configure_serve(inst, dict(args.instance_env))
            dep.set_up([True, True, True])
            self.stack.admin = f"http://127.0.0.1:{serves[0].admin_port}"

        # 5. The checks: emails, replica reads, then the report.
        due, received = wait_for_emails(self.stack, sink_log, ws.seconds(args.drain_timeout))
        emails = reconcile_emails(due, received)
        emails["sent_records"] = int(sql(self.stack.env["DATABASE_URL"],
                                         "select count(*) from email_deliveries where state = 'sent'"))
        read_route = dep.metrics_sum("keel_db_read_route_total", {"target": "replica"})
        lag = monitor.stop()
        replica_facts = {
            **self.replica.facts, "port": self.replica.port, **lag,
            "reads": {"replica_xact_commit": self.replica.xact_commit(tag) - xact_before,
                      "keel_read_route_replica": read_route,
                      "keel_supports_read_url": supports_read_url,
                      "required": args.require_replica_reads},
        }
        slots_after = int(sql(pg_admin, "select count(*) from pg_replication_slots"))
        report = {
            "title": "Keel scale-out proof",
            "generated_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": ws.machine(),
            "seed": ws.seed_facts(self.stack),
            "topology": {"serve": len(serves), "worker": len(workers), "nginx_port": dep.nginx_port,
                         "shutdown_delay": args.shutdown_delay},
            "rolling_restart": rolling_report,
            "instance_env": args.instance_env,
            "emails": emails,
            "replica": replica_facts,
            "replication_slots": {"before": slots_before, "after": slots_after},
            "throughput": compare,
            "cost": cost,
        }
        report["verdicts"] = [{"check": c, "result": r, "detail": d} for c, r, d in verdicts(report)]
        (self.out / "scale-out.json").write_text(json.dumps(report, indent=2) + "\n")
        print(render_summary(report))
        note(f"report: {self.out / 'scale-out.json'}")
        return 1 if any(v["result"] == "FAIL" for v in report["verdicts"]) else 0


    def closed_loop(self, config: dict, goose: Path, tag: str, nginx_dir: Path) -> dict:
        args, dep = self.args, self.dep
        assert dep is not None and self.replica is not None
        label = config["label"]
        cshape = ws.Shape("peak-hour", 0, ws.seconds(args.compare_duration), 5.0, 0.0,
                          pace_ms=1, users=args.compare_users, co_mitigation="disabled")
        xact0 = self.replica.xact_commit(tag)
        cpu: dict = {}
        start = time.time()
        sampler = measured_cpu(dep, goose, start + cshape.warmup, start + cshape.total() - 0.5, cpu)
        crun = ws.run_goose(goose, self.stack, cshape, self.out, file_label(label), None, [])
        sampler.join(timeout=30)
        s = ws.summarise(crun)
        sign_in = s["by_request"].get("POST sign-in", {"requests": 0, "non_2xx": 0})
        note(f"{label}: {s['requests_per_second']} req/s, p50 {s['p50_ms']} ms, "
             f"p99 {s['p99_ms']} ms, CPU {cpu}")
        return {
            "label": label, "instances": config["instances"], "env": config["env"],
            "users": cshape.goose_users(),
            "requests_per_second": s["requests_per_second"], "ok_per_second": s["ok_per_second"],
            "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
            "failures": request_failures(self.out / f"requests-{file_label(label)}.jsonl"),
            "cpu_cores": cpu,
            # Each instance hashes one password at a time and sheds the sign-ins that
            # waited 100 ms: three instances hash up to three times as many, and that
            # CPU is taken from the other requests on a 2-core machine.
            "sign_in_ok_per_second": round((sign_in["requests"] - sign_in["non_2xx"]) / cshape.duration, 1),
            "replica_xact_commit": self.replica.xact_commit(tag) - xact0,
            "nginx": parse_access_log((nginx_dir / "access.log").read_text(), crun.started, time.time()),
        }

    def fixed_rate(self, config: dict, goose: Path, nginx_dir: Path) -> dict:
        """peak-hour at --cost-at req/s (open loop: users paced as workshop's Shape does), the
        CPU of each group over the measured part, divided by the requests Goose sent in it."""
        args, dep = self.args, self.dep
        assert dep is not None
        label = f"{config['label']} at {args.cost_at} req-s"
        shape = ws.Shape("peak-hour", args.cost_at, ws.seconds(args.cost_duration), 5.0, 0.0,
                         co_mitigation="disabled")
        cpu: dict = {}
        raw: dict = {}
        start = time.time()
        sampler = measured_cpu(dep, goose, start + shape.warmup, start + shape.total() - 0.5, cpu, raw)
        run = ws.run_goose(goose, self.stack, shape, self.out, file_label(label), None, [])
        sampler.join(timeout=30)
        if "before" not in raw:
            raise RunError(f"{label}: no CPU samples")
        t0, t1 = raw["before"]["wall"], raw["after"]["wall"]
        requests, ok = requests_between(run.rows, run.started, t0, t1)
        sign_ins, sign_ins_ok = requests_between([r for r in run.rows if r[4] == "POST sign-in"],
                                                 run.started, t0, t1)
        per_request = cpu_ms_per_request(raw["before"], raw["after"], os.sysconf("SC_CLK_TCK"), requests)
        s = ws.summarise(run)
        note(f"{label}: {requests / (t1 - t0):.1f} req/s, CPU ms per request {per_request}")
        return {
            "label": config["label"], "instances": config["instances"], "env": config["env"],
            "rate": args.cost_at, "users": shape.goose_users(), "seconds": round(t1 - t0, 2),
            "requests": requests, "requests_per_second": round(requests / (t1 - t0), 1),
            "ok_share": round(ok / requests, 4) if requests else 0.0,
            "sign_in_ok_per_second": round(sign_ins_ok / (t1 - t0), 1), "sign_ins": sign_ins,
            "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
            "cpu_cores": cpu, "cpu_ms_per_request": per_request,
            "nginx": parse_access_log((nginx_dir / "access.log").read_text(), run.started, time.time()),
        }


def render_summary(report: dict) -> str:
    """The printed summary: the run, the 1-vs-3 table, the CPU per request, the checks."""
    r = report["rolling_restart"]
    rep = report["replica"]
    e = report["emails"]
    lines = [
        f"Keel scale-out proof — {report['machine']['commit']}, {report['machine']['cpus']} CPUs "
        f"({report['machine']['cpu_model']}); {report['seed']['tasks']} tasks seeded",
        "",
        f"replica: pg_basebackup {rep.get('basebackup_bytes', 0) / 1e6:.1f} MB in {rep.get('basebackup_s', 0):.1f} s "
        f"(the whole shared cluster, {rep.get('primary_databases', '?')} databases); streaming on port "
        f"{rep.get('port')}; max replay lag {rep.get('max_replay_lag_s', 0):.3f} s, "
        f"{rep.get('max_lag_bytes', 0):,} bytes",
    ]
    if report.get("instance_env"):
        lines.append(f"serve instances (3 up) run with {report['instance_env']}")
    if r is None:
        lines.append("rolling restart: skipped (--skip-rolling)")
    else:
        s = r["summary"]
        lines.append(
            f"rolling restart: peak-hour at {r['rate']} req/s ({r['users']} users, {r['duration_s']:.0f} s) through nginx "
            f"(client keep-alive off); {len(r['restarts'])} restarts")
        for x in r["restarts"]:
            lines.append(f"  {x['at_s']:6.1f}s {x['instance']}: exit {x['exit_s']:.1f} s, ready again {x['ready_s']:.1f} s")
        f = r["failures"]
        lines += [
            f"  measured: {s['requests_per_second']} req/s, p50 {s['p50_ms']} ms, p99 {s['p99_ms_uncorrected']} ms; "
            f"all requests: {f['requests']}, failed {f['failed']}"
            + (f" {f['by_request']}" if f["failed"] else ""),
            f"  nginx: {r['nginx']['requests']} requests, per instance {r['nginx']['per_upstream']}, "
            f"retried on another {r['nginx']['retried']}, 502/504 {r['nginx']['gateway_errors']}",
        ]
    lines += [
        f"emails: {e['due']} due (outbox), {e['received']} received by the sink, {e['duplicates']} duplicates, "
        f"{e['missing']} missing; {e['sent_records']} delivery records 'sent'",
        f"replica reads: {rep['reads']['replica_xact_commit']} transactions on the replica; "
        f"keel_db_read_route_total{{target=\"replica\"}}: {rep['reads']['keel_read_route_replica']}",
        "",
    ]
    if report["throughput"]:
        lines += render_throughput(report["throughput"], report["machine"]["cpus"])
    if report.get("cost"):
        lines += render_cost(report["cost"])
    for v in report["verdicts"]:
        lines.append(f"CHECK {v['check']:50} {v['result']}  ({v['detail']})")
    return "\n".join(lines)


def render_throughput(rows: list, cpus) -> list[str]:
    """The closed-loop table, and each row's req/s against the first (one instance)."""
    width = max(24, *(len(f"{t['label']}, {t['users']} users") for t in rows))
    lines = ["1 vs 3 instances: peak-hour as a closed loop through nginx, load_shedding and rate_limit off",
             f"{'closed loop, peak-hour':{width}} {'req/s':>8} {'2xx/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'failed':>7} {'sign-in 2xx/s':>13}  CPU cores busy: machine = keel serve + postgres + goose + nginx + workers + redis/rabbitmq + other"]
    for t in rows:
        c = t["cpu_cores"]
        lines.append(
            f"{t['label'] + ', ' + str(t['users']) + ' users':{width}} {t['requests_per_second']:>8} "
            f"{t['ok_per_second']:>8} {t['p50_ms']:>8} {t['p99_ms']:>8} {t['failures']['failed']:>7} "
            f"{t.get('sign_in_ok_per_second', 0):>13}  "
            f"{c.get('machine', 0)} = {c.get('keel serve', 0)} + {c.get('postgres (all)', 0)} + "
            f"{c.get('goose', 0)} + {c.get('nginx', 0)} + {c.get('keel worker', 0)} + "
            f"{c.get('redis + rabbitmq', 0)} + {c.get('other', 0)}")
    base = rows[0]
    for t in rows[1:]:
        if base["requests_per_second"]:
            lines.append(f"{t['label']} / {base['label']}: {t['requests_per_second'] / base['requests_per_second']:.2f}× "
                         f"(on {cpus} cores shared with Postgres, the load generator and nginx)")
    lines.append("")
    return lines


COST_GROUPS = (("keel serve", "serve"), ("postgres (all)", "postgres"), ("keel worker", "workers"),
               ("nginx", "nginx"), ("goose", "goose"), ("redis + rabbitmq", "redis+mq"), ("other", "other"))


def render_cost(rows: list) -> list[str]:
    """The fixed-rate table: CPU milliseconds per request, the machine's and each group's."""
    width = max(24, *(len(t["label"]) for t in rows))
    head = " ".join(f"{short:>8}" for _, short in COST_GROUPS)
    lines = [f"CPU per request: peak-hour at a fixed {rows[0]['rate']} req/s (open loop) through nginx, "
             f"{rows[0]['seconds']:.0f} s measured; CPU-ms per request (machine = the groups + other)",
             f"{'fixed rate':{width}} {'req/s':>7} {'2xx %':>6} {'p50 ms':>7} {'p99 ms':>7} {'sign-in/s':>9} "
             f"{'machine':>8} {head}"]
    for t in rows:
        c = t["cpu_ms_per_request"]
        lines.append(f"{t['label']:{width}} {t['requests_per_second']:>7} {t['ok_share'] * 100:>6.1f} "
                     f"{t['p50_ms']:>7} {t['p99_ms']:>7} {t['sign_in_ok_per_second']:>9} {c.get('machine', 0):>8} "
                     + " ".join(f"{c.get(g, 0):>8}" for g, _ in COST_GROUPS))
    base = rows[0]["cpu_ms_per_request"]
    for t in rows[1:]:
        c = t["cpu_ms_per_request"]
        if base.get("machine"):
            lines.append(f"{t['label']} / {rows[0]['label']}: machine {c.get('machine', 0) / base['machine']:.2f}× "
                         f"CPU per request; keel serve {c.get('keel serve', 0) - base.get('keel serve', 0):+.2f} ms, "
                         f"postgres {c.get('postgres (all)', 0) - base.get('postgres (all)', 0):+.2f} ms")
    lines.append("")
    return lines


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "--guard":
        ws.guard(Path(sys.argv[2]), guard_extra)
        return 0
    run = None
    try:
        run = Run(parse_args(sys.argv[1:]))
        return run.go()
    except RunError as e:
        note(str(e))
        return 1
    except subprocess.CalledProcessError as e:
        err = (e.stderr or b"")[-1500:]
        note(f"{' '.join(map(str, e.cmd))} failed ({e.returncode}) {err.decode(errors='replace') if isinstance(err, bytes) else err}")
        return 1
    finally:
        if run is not None:
            run.close()


if __name__ == "__main__":
    sys.exit(main())
