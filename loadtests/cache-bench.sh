#!/usr/bin/env bash
# What the Redis cache buys, and how close Keel comes to what this machine can do at all:
# Keel's reads with the `cache` flag on and off, beside the ceiling of a bare axum server
# (examples/ceiling.rs: one Redis GET, or one Postgres select, per request). One command:
#
#   loadtests/cache-bench.sh
#
# builds the release binary and two examples (ceiling, cache_mix), seeds a scratch database
# (keel seed), and measures, one process under load at a time:
#   1. the ceiling, started on a port of its own against the same database and Redis, then
#      stopped: GET /plain, /redis, /redis-ping, /pg (oha);
#   2. `keel serve`, with the cache on (each run warmed up first), then off:
#      GET /v1/tasks/{id} (one task of the largest project, read by its owner; oha), the
#      first page of that project's tasks (oha), and the read-heavy mix of many users and
#      keys (examples/cache_mix.rs, because oha cannot vary the token per request).
# Around each of Keel's measured runs it scrapes /metrics (the cache's hit ratio, Postgres
# statements per request) and reads the CPU time of the process under load, of Postgres
# and of Redis. It prints one table and four goal lines (PASS/FAIL); the same results go to
# $OUT_DIR as JSON and Markdown. On exit, even on an error or Ctrl-C, it puts the cache flag
# back on, stops the servers, deletes the run's Redis keys and drops the database (unless
# KEEP=1). See loadtests/README.md.
#
# Knobs (environment):
#   TASKS         tasks to seed                                   (default 1000000)
#   SEED          the seed's random seed, and the mix's           (default 42)
#   DURATION      measured run per scenario, at most 10m          (default 10s)
#   WARMUP        warm-up per scenario, 0 = none                  (default 3s)
#   CONNECTIONS   concurrent connections (oha and the mix)        (default 16)
#   DATABASE      scratch database, DROPPED at start and at exit  (default keel_cache_bench)
#   HTTP_PORT     loopback port of Keel's public API              (default 18680)
#   ADMIN_PORT    loopback port of Keel's admin listener          (default 19690)
#   CEILING_PORT  loopback port of the ceiling                    (default 18780)
#   PG_SERVER     Postgres, loopback only, without a database     (default postgres://postgres@127.0.0.1:5432)
#   REDIS_URL     Redis, loopback only                            (default redis://127.0.0.1:6379)
#   KEEP          1 = keep the database afterwards                (default 0)
#   OUT_DIR       results (cache-bench.json, cache-bench.md) and raw files (default target/bench)
#
# Exits non-zero on an error (including any non-2xx response or transport error during a
# measured run, a cache error with the cache on, or a cache lookup with it off), not on a
# FAIL goal.
set -euo pipefail
# A failing command inside $(...) fails the substitution too (bash >= 4.4).
shopt -s inherit_errexit

PROG="cache-bench.sh"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=loadtests/lib.sh
source "$here/lib.sh"

TASKS="${TASKS:-1000000}"
SEED="${SEED:-42}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-16}"
DATABASE="${DATABASE:-keel_cache_bench}"
HTTP_PORT="${HTTP_PORT:-18680}"
ADMIN_PORT="${ADMIN_PORT:-19690}"
CEILING_PORT="${CEILING_PORT:-18780}"
PG_SERVER="${PG_SERVER:-postgres://postgres@127.0.0.1:5432}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
KEEP="${KEEP:-0}"
OUT_DIR="${OUT_DIR:-$root/target/bench}"
# What `keel serve` expects: KEEL_ADMIN_TOKEN if set, else the dev token (KEEL_ENV=dev).
ADMIN_TOKEN="${KEEL_ADMIN_TOKEN:-keel-dev-admin-token}"

# The run's own key prefix, for Keel and the ceiling alike: a run starts from an empty
# cache whatever an earlier one left, shares nothing with a dev instance on the same
# Redis, and deletes exactly its own keys at exit.
REDIS_PREFIX="keel-cache-bench-$$:"
# The mix reads with the seed report's tokens, which must outlive the run: at the largest
# DURATION and WARMUP (10m each) the ten scenarios take more than three hours.
SEED_TOKEN_TTL=6h
# Bounds on the steps that are not measured runs (seconds).
READY_TIMEOUT=60
SEED_TIMEOUT=3600
STOP_TIMEOUT=30
# The mix's start-up (a request per user and per project listed) before its deadline.
MIX_STARTUP_TIMEOUT=60
# Statement timeout of pg (lib.sh): the VACUUM (ANALYZE) after the seed.
PG_STATEMENT_TIMEOUT=600s

require_tools python3 curl psql cargo timeout redis-cli

# --- Knobs -------------------------------------------------------------------------------
check_bench_knobs HTTP_PORT ADMIN_PORT CEILING_PORT
CEILING="http://127.0.0.1:$CEILING_PORT"
redis_re='^redis://(localhost|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[::1\])(:[0-9]{1,5})?(/[0-9]{1,2})?$'
[[ "$REDIS_URL" =~ $redis_re ]] ||
    die "refusing REDIS_URL=$REDIS_URL: expected redis://127.0.0.1[:PORT][/DB] (loopback, no password)"

prepare_out_dir cache-bench '*.json' '*.log' '*.prom'
cd "$root"

# --- Helpers -----------------------------------------------------------------------------
admin_auth=(-H "authorization: Bearer $ADMIN_TOKEN")

redis() {
    timeout --kill-after=5 30 redis-cli -u "$REDIS_URL" "$@"
}

# build_all: the release binary and the two examples, in $CARGO_TARGET_DIR if set.
build_all() {
    note "building the release binary and the examples ceiling, cache_mix"
    cargo build --release --quiet --bin keel --example ceiling --example cache_mix
    local target="${CARGO_TARGET_DIR:-$root/target}/release"
    keel="$target/keel"
    ceiling="$target/examples/ceiling"
    cache_mix="$target/examples/cache_mix"
    local bin
    for bin in "$keel" "$ceiling" "$cache_mix"; do
        [[ -x "$bin" ]] || die "no binary at $bin after cargo build --release"
    done
}

# cpu_ticks PID...: user + system CPU of the processes (all their threads), in clock ticks;
# empty when none can be read (not running, or in another PID namespace).
cpu_ticks() {
    local pid stat rest fields total="" ticks
    for pid in "$@"; do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
        rest="${stat##*) }" # the fields after the command name; utime and stime are 12th, 13th
        read -r -a fields <<<"$rest"
        ticks=$((fields[11] + fields[12]))
        total=$((${total:-0} + ticks))
    done
    echo "$total"
}
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"

# The servers behind the process under load, on this machine: Postgres (the postmaster and
# its backends, as they are when a run starts) and Redis.
pg_pids=()
redis_pid=""
find_backends() {
    local pids
    pids="$(pgrep -x postgres 2>/dev/null || true)"
    read -r -a pg_pids <<<"$(echo "$pids" | tr '\n' ' ')"
    redis_pid="$(redis info server | tr -d '\r' | sed -n 's/^process_id://p')"
    [[ -r "/proc/${redis_pid:-0}/stat" ]] || redis_pid=""
}

# cpu_snapshot PID: "UNDER_LOAD POSTGRES REDIS" ticks now (a field "-" when unreadable).
cpu_snapshot() {
    local a b c
    a="$(cpu_ticks "$1")"
    b="$(cpu_ticks "${pg_pids[@]}")"
    c="$(cpu_ticks "$redis_pid")"
    echo "${a:--} ${b:--} ${c:--}"
}

scrape() {
    http GET "$ADMIN/metrics" >"$1"
}

# set_cache true|false: through the admin API, which applies it at once on this instance.
set_cache() {
    local response
    response="$(http PUT "$ADMIN/admin/flags/cache" "${admin_auth[@]}" \
        -H 'content-type: application/json' --data-binary "{\"enabled\": $1}")"
    [[ "$(json 'd["enabled"]' "$response")" == "$1" ]] ||
        die "PUT /admin/flags/cache {\"enabled\": $1} answered $response"
    cache_now="$1"
    note "cache = $1"
}

# run_mix DURATION OUT: the read-heavy mix for DURATION at $CONNECTIONS, its JSON line into
# OUT. The outer timeout only guards against a hung driver.
run_mix() {
    local secs
    secs="$(duration_secs DURATION "$1")" || exit 1
    timeout --foreground --kill-after=10 \
        "$(python3 -c 'import math, sys; print(math.ceil(float(sys.argv[1])) + 60 + int(sys.argv[2]))' "$secs" "$MIX_STARTUP_TIMEOUT")" \
        "$cache_mix" "$API" "$raw/seed.json" "$1" "$CONNECTIONS" "$SEED" >"$2"
}

# mix_summary FILE LABEL: cache_mix's line in oha_summary's shape (errors: transport only).
mix_summary() {
    python3 - "$PROG" "$1" "$2" <<'PY'
import json, sys

prog, path, label = sys.argv[1:4]
try:
    with open(path) as f:
        m = json.loads(f.readline())
except (OSError, ValueError) as e:
    sys.exit(f"{prog}: {label}: no cache_mix JSON in {path}: {e}")
print(json.dumps({
    "label": label, "requests_per_second": m["requests_per_second"], "p50_ms": m["p50_ms"],
    "p90_ms": m["p90_ms"], "p99_ms": m["p99_ms"], "max_ms": m["max_ms"],
    "non_2xx": m["non_2xx"], "errors": m["transport_errors"], "responses": m["responses"],
    "seconds": m["seconds"], "by_kind": m["by_kind"], "keys": m["keys"],
}))
PY
}

# record KEY TARGET CACHE SUMMARY CPU_BEFORE CPU_AFTER [METRICS_BEFORE METRICS_AFTER]: one
# scenario's line: the load generator's summary, the CPU per response of the process under
# load, of Postgres and of Redis, and (Keel) the /metrics deltas.
record() {
    python3 - "$@" "$CLK_TCK" <<'PY'
import json, re, sys

args = sys.argv[1:]
key, target, cache, summary, cpu_before, cpu_after = args[:6]
scrapes, tck = args[6:-1], int(args[-1])
s = json.loads(summary)


def per_response(b, a):
    if b == "-" or a == "-" or not s["responses"]:
        return None
    return (int(a) - int(b)) / tck * 1e6 / s["responses"]


cpu = [per_response(b, a) for b, a in zip(cpu_before.split(), cpu_after.split())]


def read(path):
    out = {"requests": 0.0, "statements": 0.0, "cache": {}}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            series, _, value = line.rstrip("\n").rpartition(" ")
            name, _, labels = series.partition("{")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if name == "http_server_request_duration_seconds_count":
                out["requests"] += float(value)
            elif name == "db_client_operation_duration_seconds_count":
                out["statements"] += float(value)
            elif name == "keel_cache_requests_total":
                per = out["cache"].setdefault(labels.get("cache", "?"), {})
                outcome = labels.get("outcome", "?")
                per[outcome] = per.get(outcome, 0.0) + float(value)
    return out


s.update(key=key, target=target, cache=None if cache == "-" else cache == "on",
         cpu_us_per_response=cpu[0], postgres_cpu_us_per_response=cpu[1],
         redis_cpu_us_per_response=cpu[2])
if scrapes:
    b, a = read(scrapes[0]), read(scrapes[1])
    requests = a["requests"] - b["requests"]
    by_cache = {}
    for name, outcomes in a["cache"].items():
        d = {o: v - b["cache"].get(name, {}).get(o, 0.0) for o, v in outcomes.items()}
        if any(d.values()):
            by_cache[name] = {o: int(v) for o, v in d.items()}
    totals = {o: sum(c.get(o, 0) for c in by_cache.values()) for o in ("hit", "miss", "error")}
    lookups = sum(totals.values())
    s.update(
        served=int(requests),
        statements=int(a["statements"] - b["statements"]),
        statements_per_request=(a["statements"] - b["statements"]) / requests if requests else None,
        cache_lookups=totals, cache_by_kind=by_cache,
        hit_ratio=totals["hit"] / lookups if lookups else None,
    )
print(json.dumps(s))
PY
}

# --- Clean-up, whatever happens (lib.sh: the server, the database, $scratch) -------------
ceiling_pid=""
cache_now=""
redis_touched=0

# While keel serve may still run: the cache back on through the admin API, or (KEEP=1) in
# the database.
restore_cache_at_exit() {
    [[ -n "$cache_now" && "$cache_now" != true ]] || return 0
    if alive "$server_pid" &&
        curl -s -f --max-time 10 -o /dev/null -X PUT "${admin_auth[@]}" \
            -H 'content-type: application/json' --data-binary '{"enabled": true}' \
            "$ADMIN/admin/flags/cache"; then
        note "cache restored to on"
    elif [[ "$KEEP" == 1 ]]; then
        pg "$DB_URL" -c "update fix_flags set enabled = true where name = 'cache'" &&
            note "cache restored to on (in the database)"
    fi
}

stop_ceiling() {
    stop_pid_var ceiling_pid "the ceiling"
}

# After both servers stop: the run's keys (entries, leases, generations, the ceiling's),
# which would otherwise wait for their TTL.
delete_redis_keys() {
    [[ "$redis_touched" == 1 ]] || return 0
    local keys
    keys="$(redis --scan --pattern "${REDIS_PREFIX}*" | wc -l)" || keys="?"
    if redis --scan --pattern "${REDIS_PREFIX}*" | timeout 60 xargs -r -n 500 redis-cli -u "$REDIS_URL" unlink >/dev/null; then
        note "deleted the run's $keys Redis keys (${REDIS_PREFIX}*)"
    else
        note "could not delete the Redis keys ${REDIS_PREFIX}*; they expire with their TTL"
    fi
}
on_exit_before_stop restore_cache_at_exit
on_exit stop_ceiling delete_redis_keys
install_cleanup

# --- Build, load generator, Redis --------------------------------------------------------
ensure_oha
build_all
[[ "$(redis ping 2>&1)" == PONG ]] || die "Redis does not answer PING at $REDIS_URL"

# Before the seed, which takes a while at the default TASKS (serve_keel checks them again).
check_ports_free HTTP_PORT ADMIN_PORT CEILING_PORT

# --- Database and seed -------------------------------------------------------------------
KEEL_JWT_TTL="$SEED_TOKEN_TTL" seed_scratch_database "$keel" "$raw/seed.json"
read_seed_report "$raw/seed.json"
vacuum_scratch_database
note "largest project $project_id: $project_tasks tasks, owner $owner_email"

echo "$PROG: $CONNECTIONS connections, $DURATION per scenario, warm-up $WARMUP; $(oha --version)" >&2
records=()

# --- 1. The ceiling, alone ---------------------------------------------------------------
note "starting the ceiling on $CEILING"
redis_touched=1
env DATABASE_URL="$DB_URL" REDIS_URL="$REDIS_URL" KEEL_REDIS_PREFIX="$REDIS_PREFIX" RUST_LOG=warn \
    "$ceiling" "127.0.0.1:$CEILING_PORT" >"$raw/ceiling.log" 2>&1 &
ceiling_pid=$!
wait_ready "the ceiling" "$ceiling_pid" "$CEILING/plain" "$raw/ceiling.log" "$READY_TIMEOUT"
find_backends
[[ -n "$redis_pid" ]] || note "cannot read Redis's CPU time (not in this PID namespace?)"
((${#pg_pids[@]})) || note "cannot see the Postgres processes: no Postgres CPU time"

for route in plain redis redis-ping pg; do
    http GET "$CEILING/$route" >/dev/null # one checked request: 200
    label="ceiling /$route"
    warm_up "$label" "$raw/warmup-ceiling-$route.json" "$CEILING/$route"
    note "measuring $label"
    find_backends
    before="$(cpu_snapshot "$ceiling_pid")"
    run_oha "$DURATION" "$raw/result-ceiling-$route.json" "$CEILING/$route"
    after="$(cpu_snapshot "$ceiling_pid")"
    alive "$ceiling_pid" || die "the ceiling died during \"$label\"; see $raw/ceiling.log"
    summary="$(oha_summary "$raw/result-ceiling-$route.json" "$label")"
    records+=("$(record "ceiling-$route" ceiling - "$summary" "$before" "$after")")
done
stop_ceiling

# --- 2. Keel, alone ----------------------------------------------------------------------
note "starting keel serve on $API (admin $ADMIN)"
serve_keel "$keel" "$raw/server.log" REDIS_URL="$REDIS_URL" KEEL_REDIS_PREFIX="$REDIS_PREFIX"
flags_json="$(http GET "$ADMIN/admin/flags" "${admin_auth[@]}")"
cache_now="$(json '[f["enabled"] for f in d["items"] if f["name"] == "cache"][0]' "$flags_json")"
[[ "$cache_now" == true || "$cache_now" == false ]] || die "no cache flag in GET /admin/flags"
[[ "$cache_now" == true ]] || set_cache true

login_auth "$owner_email" "$password"
task_id="$(first_task_id "$project_id" "${auth[@]}")"
task_url="$API/v1/tasks/$task_id"
page_url="$API/v1/projects/$project_id/tasks"
note "GET /v1/tasks/{id} reads the task $task_id; the first page is $page_url"

# keel_oha KEY LABEL on|off URL: a warm-up and a measured oha run on Keel, with a fresh
# token, and its record (the cache as given).
keel_oha() {
    local key="$1" label="$2" cache="$3" url="$4" before after summary
    login_auth "$owner_email" "$password"
    warm_up "$label" "$raw/warmup-$key.json" "${auth[@]}" "$url"
    note "measuring $label"
    find_backends
    scrape "$raw/metrics-$key-before.prom"
    before="$(cpu_snapshot "$server_pid")"
    run_oha "$DURATION" "$raw/result-$key.json" "${auth[@]}" "$url"
    after="$(cpu_snapshot "$server_pid")"
    scrape "$raw/metrics-$key-after.prom"
    alive "$server_pid" || die "keel serve died during \"$label\"; see $raw/server.log"
    summary="$(oha_summary "$raw/result-$key.json" "$label")"
    records+=("$(record "$key" keel "$cache" "$summary" "$before" "$after" \
        "$raw/metrics-$key-before.prom" "$raw/metrics-$key-after.prom")")
}

# keel_mix KEY LABEL on|off: the same with the read-heavy mix.
keel_mix() {
    local key="$1" label="$2" cache="$3" before after summary
    if [[ "$WARMUP" != 0 ]]; then
        note "warm-up   $label"
        run_mix "$WARMUP" "$raw/warmup-$key.json"
    fi
    note "measuring $label"
    find_backends
    scrape "$raw/metrics-$key-before.prom"
    before="$(cpu_snapshot "$server_pid")"
    run_mix "$DURATION" "$raw/result-$key.json"
    after="$(cpu_snapshot "$server_pid")"
    scrape "$raw/metrics-$key-after.prom"
    alive "$server_pid" || die "keel serve died during \"$label\"; see $raw/server.log"
    summary="$(mix_summary "$raw/result-$key.json" "$label")"
    records+=("$(record "$key" keel "$cache" "$summary" "$before" "$after" \
        "$raw/metrics-$key-before.prom" "$raw/metrics-$key-after.prom")")
}

# With the cache on first, then off: the flag changes once.
for cache in on off; do
    if [[ "$cache" == on ]]; then
        [[ "$cache_now" == true ]] || set_cache true
    else
        set_cache false
    fi
    # One checked request each first: the task, and a first page that is not empty.
    login_auth "$owner_email" "$password"
    [[ "$(json 'd["id"]' "$(http GET "$task_url" "${auth[@]}")")" == "$task_id" ]] ||
        die "GET $task_url did not return the task"
    [[ "$(json 'len(d["items"]) > 0' "$(http GET "$page_url" "${auth[@]}")")" == true ]] ||
        die "GET $page_url returned no task"
    keel_oha "task-$cache" "keel task, cache $cache" "$cache" "$task_url"
    keel_oha "page-$cache" "keel first page, cache $cache" "$cache" "$page_url"
    keel_mix "mix-$cache" "keel mix, cache $cache" "$cache"
done
set_cache true
# Killed after STOP_TIMEOUT (stop_process says so): the figures are taken by then.
stop_server || true

# --- Results -----------------------------------------------------------------------------
echo
bench_facts
BENCH_TASKS="$TASKS" BENCH_SEED="$SEED" BENCH_DURATION="$DURATION" BENCH_WARMUP="$WARMUP" \
    BENCH_CONNECTIONS="$CONNECTIONS" BENCH_PROJECT_ID="$project_id" \
    BENCH_PROJECT_TASKS="$project_tasks" BENCH_TASK_ID="$task_id" \
    BENCH_REDIS="$(redis info server | tr -d '\r' | sed -n 's/^redis_version://p')" \
    BENCH_OUT="$OUT_DIR" \
    python3 - "${records[@]}" <<'PY'
import datetime, json, os, sys

env = os.environ
runs = [json.loads(line) for line in sys.argv[1:]]
by = {r["key"]: r for r in runs}
rps = lambda k: by[k]["requests_per_second"]


def share(a, b):
    return rps(a) / rps(b) if rps(b) else None


def p99_ratio(a, b):
    x, y = by[a]["p99_ms"], by[b]["p99_ms"]
    return x / y if x is not None and y else None


goals = [
    {"name": "cached_task", "description": "cached task read, share of the /redis ceiling's req/s",
     "measured": share("task-on", "ceiling-redis"), "target": 0.5, "at_least": True, "unit": "%"},
    {"name": "uncached_task", "description": "uncached task read, share of the /pg ceiling's req/s",
     "measured": share("task-off", "ceiling-pg"), "target": 0.5, "at_least": True, "unit": "%"},
    {"name": "page_throughput", "description": "first page req/s, cache on / off",
     "measured": share("page-on", "page-off"), "target": 3.0, "at_least": True, "unit": "x"},
    {"name": "page_p99", "description": "first page p99, cache on / off",
     "measured": p99_ratio("page-on", "page-off"), "target": 1 / 3, "at_least": False, "unit": "x"},
]
for g in goals:
    m = g["measured"]
    g["pass"] = m is not None and (m >= g["target"] if g["at_least"] else m <= g["target"])


def shown(g, v):
    if v is None:
        return "n/a"
    if g["unit"] == "%":
        return f"{v * 100:.0f} %"
    return f"{v:.2f}× (1/{1 / v:.1f})" if v < 1 else f"{v:.2f}×"


def target(g):
    if g["unit"] == "%":
        return f"≥ {g['target'] * 100:.0f} %"
    return f"≥ {g['target']:.0f}×" if g["at_least"] else "≤ 1/3"


verdict = lambda g: "PASS" if g["pass"] else "FAIL"
f2 = lambda v: "-" if v is None else f"{v:.2f}"
f0 = lambda v: "-" if v is None else f"{v:.0f}"
pct = lambda v: "-" if v is None else f"{v * 100:.1f} %"

head = ("scenario", "requests/s", "p50 ms", "p99 ms", "hit ratio", "SQL/req", "CPU µs/req",
        "PG µs/req", "Redis µs/req", "non-2xx", "errors")
rows = [(r["label"], f0(r["requests_per_second"]), f2(r["p50_ms"]), f2(r["p99_ms"]),
         pct(r.get("hit_ratio")), f2(r.get("statements_per_request")),
         f0(r["cpu_us_per_response"]), f0(r["postgres_cpu_us_per_response"]),
         f0(r["redis_cpu_us_per_response"]), str(r["non_2xx"]), str(r["errors"])) for r in runs]
widths = [max(len(row[c]) for row in rows + [head]) for c in range(len(head))]
line = lambda row: "  ".join(
    cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
print(line(head))
for row in rows:
    print(line(row))
print()
for key in ("mix-on", "mix-off"):
    r = by[key]
    print(f"{r['label']}: p90 {f2(r['p90_ms'])} ms, max {f2(r['max_ms'])} ms; requests by kind "
          + ", ".join(f"{k} {v}" for k, v in r["by_kind"].items())
          + f"; keys: {r['keys']['users']} users, {r['keys']['projects']} projects, "
          f"{r['keys']['tasks']} tasks")
print()
width = max(len(g["description"]) for g in goals)
for g in goals:
    print(f"GOAL {g['description'].ljust(width)}  {shown(g, g['measured']):>16}  "
          f"(target {target(g)})  {verdict(g)}")
conditions = (f"{env['BENCH_CPUS']} CPUs ({env['BENCH_CPU_MODEL']}) shared by the server under "
              f"load, Postgres {env['BENCH_PG']}, Redis {env['BENCH_REDIS']} and the load "
              f"generator ({env['BENCH_OHA']}; cache_mix for the mix)")
print()
print("conditions: " + conditions)

knobs = {k: env[f"BENCH_{k.upper()}"] for k in ("tasks", "seed", "duration", "warmup", "connections")}
for k in ("tasks", "seed", "connections"):
    knobs[k] = int(knobs[k])
r3 = lambda v: None if v is None else round(v, 3)
result = {
    "benchmark": "loadtests/cache-bench.sh",
    "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "commit": env["BENCH_COMMIT"],
    "host": {"cpus": env["BENCH_CPUS"], "cpu_model": env["BENCH_CPU_MODEL"],
             "postgres": env["BENCH_PG"], "redis": env["BENCH_REDIS"],
             "load_generator": env["BENCH_OHA"]},
    "knobs": knobs,
    "project": {"id": env["BENCH_PROJECT_ID"], "tasks": int(env["BENCH_PROJECT_TASKS"])},
    "task_id": env["BENCH_TASK_ID"],
    "scenarios": [
        {k: (r3(v) if isinstance(v, float) else v) for k, v in r.items() if k != "label"}
        | {"scenario": r["label"]}
        for r in runs
    ],
    "goals": [
        {"name": g["name"], "description": g["description"], "measured": r3(g["measured"]),
         "target": r3(g["target"]), "at_least": g["at_least"], "pass": g["pass"]}
        for g in goals
    ],
}
out = env["BENCH_OUT"]
with open(f"{out}/cache-bench.json", "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

md = ["| scenario | req/s | p50 ms | p99 ms | hit ratio | SQL/req | CPU µs/req | PG µs/req "
      "| Redis µs/req | non-2xx | errors |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
for r in runs:
    md.append(f"| {r['label']} | {r['requests_per_second']:,.0f} | {f2(r['p50_ms'])} "
              f"| {f2(r['p99_ms'])} | {pct(r.get('hit_ratio'))} "
              f"| {f2(r.get('statements_per_request'))} | {f0(r['cpu_us_per_response'])} "
              f"| {f0(r['postgres_cpu_us_per_response'])} | {f0(r['redis_cpu_us_per_response'])} "
              f"| {r['non_2xx']} | {r['errors']} |")
md += ["", "| goal | measured | target | result |", "| --- | ---: | ---: | --- |"]
md += [f"| {g['description']} | {shown(g, g['measured'])} | {target(g)} | {verdict(g)} |"
       for g in goals]
md += [
    "",
    f"`loadtests/cache-bench.sh`, TASKS={knobs['tasks']}, SEED={knobs['seed']}: the largest "
    f"project ({result['project']['tasks']:,} tasks), {knobs['connections']} connections, "
    f"{knobs['duration']} per scenario after a {knobs['warmup']} warm-up, one process under "
    f"load at a time; {conditions}; commit {env['BENCH_COMMIT']}, {result['generated_at']}.",
]
with open(f"{out}/cache-bench.md", "w") as f:
    f.write("\n".join(md) + "\n")
print()
print(f"results: {out}/cache-bench.json, {out}/cache-bench.md (raw: {out}/cache-bench/)")
PY

# Figures taken on an error path are no figures: fail the run (after writing them). With
# the cache on, a cache error means Redis failed and Postgres served; with it off, a cache
# lookup means the flag did not take.
cache_faults() {
    python3 -c '
import json, sys
for line in sys.argv[1:]:
    r = json.loads(line)
    lookups = r.get("cache_lookups")
    if lookups is None:
        continue
    if r["cache"] and lookups["error"]:
        print("%s: %d cache errors (Redis failed; Postgres served)" % (r["label"], lookups["error"]))
    if not r["cache"] and sum(lookups.values()):
        print("%s: %d cache lookups with the cache off" % (r["label"], sum(lookups.values())))
' "$@"
}
die_if_invalid "$( (invalid_runs "${records[@]}"; cache_faults "${records[@]}") | sed '/^$/d')"
