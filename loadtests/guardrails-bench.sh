#!/usr/bin/env bash
# What the guardrails buy under overload: the capacity of a mixed workload (reads, writes,
# sign-ins), then 1x, 2x and 4x of it offered at a fixed rate, with the guardrails on and
# off, side by side. One command:
#
#   loadtests/guardrails-bench.sh
#
# builds the release binary and examples/overload_mix.rs (the load: many signed-in users,
# 80 % reads, 15 % writes, 5 % sign-ins, each user from an address of its own), seeds a
# scratch database (keel seed), and then, one `keel serve` process per run, started fresh
# with KEEL_TRUSTED_PROXIES=127.0.0.1 (the load comes through a "proxy" that names each
# client in X-Forwarded-For, as a load balancer would):
#   1. the capacity: a closed loop of CONNECTIONS workers with every guardrail off (their
#      refusals would hide what the service can serve); its goodput is "capacity";
#   2. for the guardrails on (rate_limit, load_shedding, timeouts, circuit_breaker, the
#      defaults) and off (all four switched off through the admin API), for each multiple
#      in MULTIPLES: an open loop at multiple x capacity for DURATION, after WARMUP at half
#      the capacity (a spike arrives at a service in its normal state). Latency counts from
#      the moment each request was due, so a server that stalls is charged for the wait.
# Per run: goodput (2xx per second), the p99 of the 2xx, the share of fast refusals (429 and
# 503) and their p99, other failures (timeouts after 10 s, other statuses), the process's
# peak resident memory (sampled every 0.2 s) and the cores that Keel and the load generator
# kept busy over the measured window. It prints one table and three goal lines (PASS/FAIL):
#   - goodput at 4x with the guardrails on >= 90 % of the capacity;
#   - p99 of the 2xx at 4x <= 2x its value at 1x, guardrails on;
#   - peak memory at 4x <= 1.5x its value at 1x, guardrails on (bounded: it does not grow
#     with the load).
# The same results go to $OUT_DIR as JSON and Markdown. On exit, even on an error or
# Ctrl-C, it stops the server and drops the database (the flags live in it), unless KEEP=1.
#
# Knobs (environment):
#   TASKS        tasks to seed                                     (default 200000)
#   SEED         the seed's random seed, and the load's            (default 42)
#   USERS        seeded users who sign in and send the load        (default 200)
#   DURATION     each measured run, at most 10m                    (default 20s)
#   WARMUP       the lead-in at half the capacity, 0 = none        (default 5s)
#   CONNECTIONS  closed-loop workers of the capacity run           (default 32)
#   MULTIPLES    the offered loads, in capacities                  (default "1 2 4")
#   MODES        the guardrails' settings to run                   (default "on off")
#   CAPACITY     skip the capacity run and take this figure (req/s) (default: measure it)
#   DATABASE     scratch database, DROPPED at start and at exit    (default keel_guardrails_bench)
#   HTTP_PORT    loopback port of Keel's public API                (default 18690)
#   ADMIN_PORT   loopback port of Keel's admin listener            (default 19700)
#   PG_SERVER    Postgres, loopback only, without a database       (default postgres://postgres@127.0.0.1:5432)
#   KEEP         1 = keep the database afterwards                  (default 0)
#   OUT_DIR      results (guardrails-bench.json, .md) and raw files (default target/bench)
#
# Exits non-zero on an error (a run that could not start or whose generator failed), not
# on a FAIL goal.
set -euo pipefail
shopt -s inherit_errexit

PROG="guardrails-bench.sh"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=loadtests/lib.sh
source "$here/lib.sh"

TASKS="${TASKS:-200000}"
SEED="${SEED:-42}"
USERS="${USERS:-200}"
DURATION="${DURATION:-20s}"
WARMUP="${WARMUP:-5s}"
CONNECTIONS="${CONNECTIONS:-32}"
MULTIPLES="${MULTIPLES:-1 2 4}"
MODES="${MODES:-on off}"
CAPACITY="${CAPACITY:-}"
DATABASE="${DATABASE:-keel_guardrails_bench}"
HTTP_PORT="${HTTP_PORT:-18690}"
ADMIN_PORT="${ADMIN_PORT:-19700}"
PG_SERVER="${PG_SERVER:-postgres://postgres@127.0.0.1:5432}"
KEEP="${KEEP:-0}"
OUT_DIR="${OUT_DIR:-$root/target/bench}"
ADMIN_TOKEN="${KEEL_ADMIN_TOKEN:-keel-dev-admin-token}"
REDIS_PREFIX="keel-guardrails-bench-$$:"
READY_TIMEOUT=60
SEED_TIMEOUT=3600
STOP_TIMEOUT=30
PG_STATEMENT_TIMEOUT=600s
# The guardrails' fix flags: on is the default; "off" switches these four off.
GUARDRAILS=(rate_limit load_shedding timeouts circuit_breaker)

require_tools python3 curl psql cargo timeout

check_bench_knobs HTTP_PORT ADMIN_PORT
[[ "$USERS" =~ ^[1-9][0-9]{1,3}$ ]] || die "USERS=$USERS: expected 10..9999"
[[ "$MULTIPLES" =~ ^[0-9]+(\.[0-9]+)?( [0-9]+(\.[0-9]+)?)*$ ]] ||
    die "MULTIPLES=$MULTIPLES: expected numbers separated by spaces, such as \"1 2 4\""
python3 -c 'import sys; sys.exit(0 if all(0 < float(m) <= 10 for m in sys.argv[1].split()) else 1)' "$MULTIPLES" ||
    die "MULTIPLES=$MULTIPLES: each above 0, at most 10"
[[ "$MODES" =~ ^(on|off)( (on|off))?$ ]] || die "MODES=$MODES: \"on off\", \"on\" or \"off\""
[[ -z "$CAPACITY" || "$CAPACITY" =~ ^[1-9][0-9]*(\.[0-9]+)?$ ]] || die "CAPACITY=$CAPACITY: requests per second"
duration_s="$(duration_secs DURATION "$DURATION")"
warmup_s=0
[[ "$WARMUP" == 0 ]] || warmup_s="$(duration_secs WARMUP "$WARMUP")"

prepare_out_dir guardrails-bench '*.json' '*.log' '*.rss' '*.out' '*.err' '*.time'
install_cleanup
cd "$root"

admin_auth=(-H "authorization: Bearer $ADMIN_TOKEN")

# --- Steps ---------------------------------------------------------------------------------
build_all() {
    note "building the release binary and examples/overload_mix.rs"
    cargo build --release --quiet --bin keel --example overload_mix
    local target="${CARGO_TARGET_DIR:-$root/target}/release"
    keel="$target/keel"
    mix="$target/examples/overload_mix"
    [[ -x "$keel" && -x "$mix" ]] || die "no binaries in $target after cargo build --release"
}

# set_guardrails true|false: the four flags through the admin API (applied at once here).
set_guardrails() {
    local flag response
    for flag in "${GUARDRAILS[@]}"; do
        response="$(http PUT "$ADMIN/admin/flags/$flag" "${admin_auth[@]}" \
            -H 'content-type: application/json' --data-binary "{\"enabled\": $1}")"
        [[ "$(json 'd["enabled"]' "$response")" == "$1" ]] ||
            die "PUT /admin/flags/$flag {\"enabled\": $1} answered $response"
    done
}

# With KEEP=1 the database outlives the run: its flags go back on.
restore_flags() {
    if [[ "$KEEP" == 1 ]] && alive "$server_pid"; then
        set_guardrails true || note "could not switch the guardrails back on"
    fi
}
on_exit_before_stop restore_flags

# The resident memory of the server, every 0.2 s, into a file, until stopped.
rss_pid=""
stop_rss() {
    stop_pid_var rss_pid "memory sampler"
}
on_exit stop_rss
sample_rss() {
    local pid="$1" out="$2"
    (
        while kill -0 "$pid" 2>/dev/null; do
            sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status" 2>/dev/null || true
            sleep 0.2
        done
    ) >"$out" &
    rss_pid=$!
}

# run LABEL GUARDRAILS(true|false) MODE-ARGS...: a fresh server, the flags, the generator;
# its JSON line, with the memory and CPU figures added, into $raw/LABEL.json.
run() {
    local label="$1" on="$2"
    shift 2
    serve_keel "$keel" "$raw/$label.log" KEEL_TRUSTED_PROXIES=127.0.0.1
    # The flags live in the database: every run sets them, whatever the last one left.
    set_guardrails "$on"
    sample_rss "$server_pid" "$raw/$label.rss"
    note "run       $label"
    timeout --foreground --kill-after=10 $((duration_s + warmup_s + 180)) \
        "$mix" --base "$API" --report "$raw/seed.json" --users "$USERS" --seed "$SEED" \
        --duration "$DURATION" --watch-pid "$server_pid" --clock-ticks "$(getconf CLK_TCK)" \
        "$@" >"$raw/$label.out" 2>"$raw/$label.err" ||
        die "$label: the generator failed: $(tail -n 5 "$raw/$label.err")"
    python3 - "$raw/$label.out" "$raw/$label.rss" "$label" "$on" "$server_pid" \
        >"$raw/$label.json" <<'PY'
import json, sys
out, rss, label, on, pid = sys.argv[1:6]
d = json.loads(open(out).readline())
samples = [int(x) for x in open(rss).read().split()]
cpu = d.pop("cpu_seconds")
d.update({
    "label": label, "guardrails": on == "true",
    "peak_rss_mib": round(max(samples) / 1024, 1) if samples else None,
    "cpu_seconds": {"keel": cpu.get(pid), "generator": cpu.get("self")},
})
print(json.dumps(d))
PY
    stop_rss
    stop_server
}

# --- The bench -----------------------------------------------------------------------------
build_all
bench_facts
seed_scratch_database "$keel" "$raw/seed.json"
vacuum_scratch_database

if [[ -n "$CAPACITY" ]]; then
    capacity="$CAPACITY"
    note "capacity: $capacity successful requests/s (CAPACITY, not measured)"
else
    note "capacity: a closed loop of $CONNECTIONS workers, guardrails off"
    run capacity false --closed "$CONNECTIONS"
    capacity="$(json 'd["goodput_per_second"]' "$(cat "$raw/capacity.json")")"
    note "capacity: $capacity successful requests/s"
fi

labels=()
for mode in $MODES; do
    on=true
    [[ "$mode" == on ]] || on=false
    for m in $MULTIPLES; do
        rate="$(python3 -c 'import sys; print(round(float(sys.argv[1]) * float(sys.argv[2]), 1))' "$m" "$capacity")"
        half="$(python3 -c 'import sys; print(round(float(sys.argv[1]) / 2, 1))' "$capacity")"
        label="${m}x-$mode"
        run "$label" "$on" --rate "$rate" --warmup "$WARMUP" --warmup-rate "$half"
        labels+=("$label")
    done
done

python3 - "$raw" "$OUT_DIR" "$capacity" "$DURATION" "$WARMUP" "$TASKS" "$USERS" "$CONNECTIONS" "${labels[@]}" <<'PY'
import json, os, sys
raw, out_dir, capacity, duration, warmup, tasks, users, connections = sys.argv[1:9]
labels = sys.argv[9:]
capacity = float(capacity)
measured = (["capacity"] if os.path.exists(f"{raw}/capacity.json") else []) + labels
runs = {l: json.loads(open(f"{raw}/{l}.json").readline()) for l in measured}
rows = []
for l in measured:
    r = runs[l]
    rows.append({
        "run": l,
        "offered": r["offered_per_second"],
        "goodput": round(r["goodput_per_second"], 1),
        "goodput_of_capacity": round(r["goodput_per_second"] / capacity, 3),
        "ok_p50_ms": r["ok_latency"]["p50_ms"], "ok_p99_ms": r["ok_latency"]["p99_ms"],
        "refused_share": round(r["refused_share"], 3),
        "refused_p99_ms": r["refused_latency"]["p99_ms"],
        # The load shedder's own refusals (503 overloaded), apart from 429s and the
        # password hasher's 503 after its 100 ms queue.
        "overloaded_p99_ms": r["refused_latency_by_kind"].get("Overloaded", {}).get("p99_ms"),
        "failed_share": round(r["failed_share"], 3),
        "peak_rss_mib": r["peak_rss_mib"],
        # Cores busy over the measured window: Keel's process, and the load generator's.
        "keel_cores": round(r["cpu_seconds"]["keel"] / r["seconds"], 2),
        "generator_cores": round(r["cpu_seconds"]["generator"] / r["seconds"], 2),
        "outcomes": r["outcomes"],
    })
def get(label):
    return runs.get(label)
goals = []
top = max((l for l in labels if l.endswith("-on")), key=lambda l: float(l.split("x")[0]), default=None)
low = min((l for l in labels if l.endswith("-on")), key=lambda l: float(l.split("x")[0]), default=None)
if top and low and top != low:
    t, b = runs[top], runs[low]
    share = t["goodput_per_second"] / capacity
    goals.append({"goal": f"goodput at {top} >= 90% of capacity", "value": round(share, 3),
                  "pass": share >= 0.9})
    ratio = t["ok_latency"]["p99_ms"] / b["ok_latency"]["p99_ms"]
    goals.append({"goal": f"p99 of 2xx at {top} <= 2x {low}", "value": round(ratio, 2),
                  "pass": ratio <= 2.0})
    mem = t["peak_rss_mib"] / b["peak_rss_mib"]
    goals.append({"goal": f"peak memory at {top} <= 1.5x {low}", "value": round(mem, 2),
                  "pass": mem <= 1.5})
# Where the CPU goes: Keel's CPU over a window ~ a x (2xx answered) + b x (refusals), fitted
# by least squares over the runs that queue nothing (guardrails on, and the capacity run).
fit = [runs[l] for l in measured if l == "capacity" or l.endswith("-on")]
sxx = sum(r["ok"] ** 2 for r in fit); syy = sum(r["refused"] ** 2 for r in fit)
sxy = sum(r["ok"] * r["refused"] for r in fit)
sxc = sum(r["ok"] * r["cpu_seconds"]["keel"] for r in fit)
syc = sum(r["refused"] * r["cpu_seconds"]["keel"] for r in fit)
det = sxx * syy - sxy ** 2
cost = None
if len(fit) >= 2 and det > 0:
    a = (sxc * syy - syc * sxy) / det
    b = (syc * sxx - sxc * sxy) / det
    cost = {"keel_cpu_us_per_2xx": round(a * 1e6), "keel_cpu_us_per_refusal": round(b * 1e6)}
    if top:
        t = runs[top]
        cost[f"cores_refusing_at_{top}"] = round(b * t["refused"] / t["seconds"], 2)
        cost[f"generator_cores_at_{top}"] = round(t["cpu_seconds"]["generator"] / t["seconds"], 2)
facts = {k: os.environ.get(k) for k in ["BENCH_COMMIT", "BENCH_PG", "BENCH_CPUS", "BENCH_CPU_MODEL"]}
result = {"capacity_per_second": capacity, "duration": duration, "warmup": warmup,
          "tasks": int(tasks), "users": int(users), "capacity_workers": int(connections),
          "machine": facts, "runs": rows, "goals": goals, "cpu_cost": cost}
with open(f"{out_dir}/guardrails-bench.json", "w") as f:
    json.dump(result, f, indent=2)
cols = ["run", "offered", "goodput", "goodput_of_capacity", "ok_p50_ms", "ok_p99_ms",
        "refused_share", "refused_p99_ms", "overloaded_p99_ms", "failed_share", "peak_rss_mib", "keel_cores",
        "generator_cores"]
lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
for r in rows:
    lines.append("| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |")
md = [f"# Guardrails under overload ({facts['BENCH_COMMIT']}, {facts['BENCH_CPUS']} cores, "
      f"{facts['BENCH_CPU_MODEL']}, PostgreSQL {facts['BENCH_PG']})", "",
      f"Capacity {capacity:.0f} req/s (closed loop, {connections} workers, guardrails off); "
      f"runs of {duration} after {warmup} at half of it; {tasks} tasks, {users} users.", ""]
md += lines + [""] + [f"- {'PASS' if g['pass'] else 'FAIL'} {g['goal']}: {g['value']}" for g in goals]
if cost:
    md += ["", "Where Keel's CPU goes (least squares over the runs without a queue): " +
           ", ".join(f"{k} {v}" for k, v in cost.items())]
with open(f"{out_dir}/guardrails-bench.md", "w") as f:
    f.write("\n".join(md) + "\n")
print("\n".join(lines))
for g in goals:
    print(f"{'PASS' if g['pass'] else 'FAIL'}  {g['goal']}: {g['value']}")
if cost:
    print("cpu: " + ", ".join(f"{k} {v}" for k, v in cost.items()))
PY
note "results: $OUT_DIR/guardrails-bench.json, $OUT_DIR/guardrails-bench.md"
