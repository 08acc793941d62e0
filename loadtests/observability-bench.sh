#!/usr/bin/env bash
# What observability costs: requests/s and latency of GET /v1/tasks/{id} in three
# configurations of the same release binary, side by side in one run:
#
#   1. baseline          metrics off (KEEL_METRICS_ENABLED=false), no trace export
#   2. metrics           metrics on (the default), no trace export
#   3. metrics + traces  metrics on, every trace exported over OTLP/gRPC to a local sink
#                        (OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$SINK_PORT,
#                        OTEL_TRACES_SAMPLER=always_on)
#
#   loadtests/observability-bench.sh
#
# builds the release binary, installs the sink's pinned Python packages into
# target/load-venv, starts the sink (loadtests/otlp_sink.py), seeds a small scratch
# database (keel seed), and then, ROUNDS times, starts a fresh `keel serve` per
# configuration (1, 2, 3, rotated by one each round) on the same database, measures one
# task with oha after a warm-up, and stops it (which flushes its traces). It prints one
# table, the cost of metrics and of trace export in % of req/s with two goal lines
# (PASS/FAIL; the trace one is judged only at TRACES_SAMPLER=always_on, the sampling its
# goal is stated at), and how many spans the sink received in each configuration. The same results go to $OUT_DIR as JSON
# and Markdown. On exit, even on an error or Ctrl-C, it stops the server and the sink and
# drops the database (unless KEEP=1). See loadtests/README.md.
#
# Knobs (environment):
#   TASKS            tasks to seed                                 (default 20000)
#   SEED             the seed's random seed                        (default 42)
#   DURATION         measured run per configuration, at most 10m   (default 15s)
#   WARMUP           warm-up per configuration, 0 = none           (default 3s)
#   CONNECTIONS      concurrent connections                        (default 16)
#   ROUNDS           rounds of the three configurations (1..20)   (default 1)
#   DATABASE         scratch database, DROPPED at start and at exit (default keel_obs_bench)
#   HTTP_PORT        loopback port of the public API               (default 18480)
#   ADMIN_PORT       loopback port of the admin listener           (default 19490)
#   SINK_PORT        loopback port of the sink's OTLP/gRPC         (default 14317)
#   SINK_STATS_PORT  loopback port of the sink's /stats            (default 14318)
#   PG_SERVER        Postgres, loopback only, without a database   (default postgres://postgres@127.0.0.1:5432)
#   KEEP             1 = keep the database afterwards              (default 0)
#   OUT_DIR          results (observability-bench.json/.md) and raw files (default target/bench)
#
# Inherited OTEL_* variables and KEEL_METRICS_ENABLED are ignored: each configuration sets
# what it needs. Exits non-zero on an error (including any non-2xx response or transport
# error during a measured run, no spans in configuration 3, or spans in 1 or 2), not on a
# FAIL goal.
set -euo pipefail
# A failing command inside $(...) fails the substitution too (bash >= 4.4).
shopt -s inherit_errexit

PROG=observability-bench.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=loadtests/lib.sh
source "$here/lib.sh"

TASKS="${TASKS:-20000}"
SEED="${SEED:-42}"
DURATION="${DURATION:-15s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-16}"
ROUNDS="${ROUNDS:-1}"
# The sampler of configuration 3 (the goal is stated at 100 %: always_on); e.g.
# TRACES_SAMPLER=parentbased_traceidratio TRACES_SAMPLER_ARG=0.1 for a production-like ratio.
TRACES_SAMPLER="${TRACES_SAMPLER:-always_on}"
TRACES_SAMPLER_ARG="${TRACES_SAMPLER_ARG:-}"
DATABASE="${DATABASE:-keel_obs_bench}"
HTTP_PORT="${HTTP_PORT:-18480}"
ADMIN_PORT="${ADMIN_PORT:-19490}"
SINK_PORT="${SINK_PORT:-14317}"
SINK_STATS_PORT="${SINK_STATS_PORT:-14318}"
PG_SERVER="${PG_SERVER:-postgres://postgres@127.0.0.1:5432}"
KEEP="${KEEP:-0}"
OUT_DIR="${OUT_DIR:-$root/target/bench}"

# Bounds on the steps that are not oha runs (seconds).
READY_TIMEOUT=60
# Statement timeout of pg (lib.sh): the VACUUM (ANALYZE) after the seed.
PG_STATEMENT_TIMEOUT=300s
SEED_TIMEOUT=1800
STOP_TIMEOUT=30
SINK_TIMEOUT=30
PIP_TIMEOUT=900

require_tools python3 curl psql cargo timeout
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "python3 3.9 or later is required"

# --- Knobs -------------------------------------------------------------------------------
check_bench_knobs HTTP_PORT ADMIN_PORT SINK_PORT SINK_STATS_PORT
check_rounds ROUNDS "$ROUNDS"

SINK="http://127.0.0.1:$SINK_PORT"
SINK_STATS="http://127.0.0.1:$SINK_STATS_PORT/stats"
check_loopback_url SINK_PORT "$SINK"

# Each configuration sets the telemetry variables it needs; inherited ones would blur them
# (an OTEL_EXPORTER_OTLP_ENDPOINT from the shell would export traces in 1 and 2 too).
inherited=()
while IFS= read -r var; do
    inherited+=("$var")
    unset "$var"
done < <(compgen -e | grep -E '^(OTEL_|KEEL_METRICS_ENABLED$)' || true)

prepare_out_dir observability-bench '*.json' '*.log' '*.prom'
cd "$root"

# --- Configurations ----------------------------------------------------------------------
config_keys=(baseline metrics traces)
config_names=("baseline" "metrics" "metrics + traces")
config_metrics=(false true true)
config_traces=(false false true)

# --- Helpers -----------------------------------------------------------------------------
((${#inherited[@]} == 0)) || note "ignoring inherited ${inherited[*]}"

# http_status URL: the status of one bounded GET (000 when nothing answered).
http_status() {
    curl -s -o /dev/null --max-time 10 -w '%{http_code}' "$1" || true
}

# cpu_ticks PID: user + system CPU of the process (all its threads), in clock ticks.
cpu_ticks() {
    local stat rest fields
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || {
        echo ""
        return 0
    }
    rest="${stat##*) }" # the fields after the command name; utime and stime are 12th, 13th
    read -r -a fields <<<"$rest"
    echo $((fields[11] + fields[12]))
}
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"

stop_sink() {
    stop_pid_var sink_pid "the OTLP sink"
}

sink_stats() {
    alive "$sink_pid" || die "the OTLP sink exited; its log:
$(tail -n 20 "$raw/sink.log")"
    curl -sf --max-time 10 "$SINK_STATS" || die "the OTLP sink does not answer on $SINK_STATS"
}

# served FILE: from a /metrics scrape, the public API's requests counted by Keel (all
# routes) and those of GET /v1/tasks/{id}, as JSON.
served() {
    python3 - "$1" <<'PY'
import json, sys
total = route = 0
with open(sys.argv[1]) as f:
    for line in f:
        # name{label="value",...} 123 (a label value may hold braces: "/v1/tasks/{id}")
        if not line.startswith("http_server_request_duration_seconds_count"):
            continue
        series, value = line.rsplit(None, 1)
        if series.split("{", 1)[0] != "http_server_request_duration_seconds_count":
            continue
        n = int(float(value))
        total += n
        if 'http_route="/v1/tasks/{id}"' in series and 'http_request_method="GET"' in series:
            route += n
print(json.dumps({"all_routes": total, "get_task": route}))
PY
}

# --- Clean-up, whatever happens (lib.sh: the server, the database, $scratch) -------------
sink_pid=""

# After keel serve stops (its last spans flushed to the sink).
stop_sink_at_exit() {
    if [[ -n "$sink_pid" ]]; then
        stop_sink && note "stopped the OTLP sink"
    fi
}
on_exit stop_sink_at_exit
install_cleanup

# --- Build, load generator, sink's packages ----------------------------------------------
ensure_oha
build_keel

# The sink's packages, pinned, in a venv of their own; re-installed only when
# loadtests/requirements.txt changes.
venv="$root/target/load-venv"
if ! cmp -s "$here/requirements.txt" "$venv/.requirements" 2>/dev/null; then
    note "installing the sink's Python packages into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    timeout --foreground --kill-after=10 "$PIP_TIMEOUT" \
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
    cp "$here/requirements.txt" "$venv/.requirements"
fi
"$venv/bin/python" -c 'import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc' ||
    die "the sink's packages do not import from $venv; remove it and run again"

# Before the sink starts and the database is seeded: something on the sink's ports would
# keep the sink from starting, or answer its /stats; something on the server's would keep
# keel serve from starting, or answer /readyz in its stead (serve_keel checks those two
# again before each start).
check_ports_free HTTP_PORT ADMIN_PORT SINK_PORT SINK_STATS_PORT

# --- The sink ----------------------------------------------------------------------------
# One sink for the whole run, idle (and so costing nothing) in configurations 1 and 2:
# its counts, read before and after each configuration, show which one exported.
note "starting the OTLP sink on $SINK (stats $SINK_STATS)"
"$venv/bin/python" "$here/otlp_sink.py" --port "$SINK_PORT" --stats-port "$SINK_STATS_PORT" \
    --workers 16 >"$raw/sink.log" 2>&1 &
sink_pid=$!
wait_ready "the OTLP sink" "$sink_pid" "$SINK_STATS" "$raw/sink.log" "$SINK_TIMEOUT"

# --- Database and seed -------------------------------------------------------------------
seed_scratch_database "$keel" "$raw/seed.json"
read_seed_report "$raw/seed.json"
vacuum_scratch_database

# --- Runs --------------------------------------------------------------------------------
task_id=""
records=()
echo "$PROG: $CONNECTIONS connections, $DURATION per configuration after a $WARMUP warm-up," \
    "$ROUNDS round(s); $(oha --version)" >&2
# Round r starts the sequence at configuration r (1, 2, 3; then 2, 3, 1; then 3, 1, 2; ...):
# over every three rounds each configuration runs once first, once second and once last, so
# a drift within a round (the machine's other load, Postgres warming up) does not always
# favour the same one.
n_configs=${#config_keys[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for ((position = 0; position < n_configs; position++)); do
        c=$(((position + round - 1) % n_configs))
        key="${config_keys[$c]}"
        name="${config_names[$c]}"
        label="$name"
        ((ROUNDS == 1)) || label+=" (round $round)"
        tag="$round-$key"
        settings=(KEEL_METRICS_ENABLED="${config_metrics[$c]}")
        if [[ "${config_traces[$c]}" == true ]]; then
            settings+=(OTEL_EXPORTER_OTLP_ENDPOINT="$SINK" OTEL_TRACES_SAMPLER="$TRACES_SAMPLER")
            if [[ -n "$TRACES_SAMPLER_ARG" ]]; then settings+=(OTEL_TRACES_SAMPLER_ARG="$TRACES_SAMPLER_ARG"); fi
        fi
        note "round $round: starting keel serve, $name (${settings[*]})"
        sink_before="$(sink_stats)"
        serve_keel "$keel" "$raw/server-$tag.log" "${settings[@]}"

        # The configuration took: /metrics answers only with metrics on.
        metrics_status="$(http_status "$ADMIN/metrics")"
        if [[ "${config_metrics[$c]}" == true ]]; then
            [[ "$metrics_status" == 200 ]] || die "$name: GET /metrics answered $metrics_status, expected 200"
        else
            [[ "$metrics_status" == 404 ]] || die "$name: GET /metrics answered $metrics_status, expected 404"
        fi

        login_auth "$owner_email" "$password"
        if [[ -z "$task_id" ]]; then
            task_id="$(first_task_id "$project_id" "${auth[@]}")"
            note "measuring GET /v1/tasks/$task_id"
        fi
        url="$API/v1/tasks/$task_id"
        # One checked request first: the task, answered 200.
        response="$(http GET "$url" "${auth[@]}")"
        [[ "$(json 'd["id"]' "$response")" == "$task_id" ]] || die "$name: GET $url did not return the task"

        warm_up "$label" "$raw/warmup-$tag.json" "${auth[@]}" "$url"
        note "measuring $label"
        keel_cpu_before="$(cpu_ticks "$server_pid")"
        sink_cpu_before="$(cpu_ticks "$sink_pid")"
        run_oha "$DURATION" "$raw/result-$tag.json" "${auth[@]}" "$url"
        keel_cpu_after="$(cpu_ticks "$server_pid")"
        sink_cpu_after="$(cpu_ticks "$sink_pid")"
        alive "$server_pid" || die "keel serve died during \"$label\"; see $raw/server-$tag.log"

        served_json=null
        if [[ "${config_metrics[$c]}" == true ]]; then
            http GET "$ADMIN/metrics" >"$raw/metrics-$tag.prom"
            served_json="$(served "$raw/metrics-$tag.prom")"
        fi
        # SIGTERM: Keel drains, then flushes the spans still buffered to the sink.
        stopped_cleanly=true
        stop_server || stopped_cleanly=false
        sink_after="$(sink_stats)"

        summary="$(oha_summary "$raw/result-$tag.json" "$label")"
        record="$(python3 - "$summary" "$round" "$key" "$name" "${config_metrics[$c]}" \
            "${config_traces[$c]}" "$sink_before" "$sink_after" "$served_json" \
            "$keel_cpu_before" "$keel_cpu_after" "$sink_cpu_before" "$sink_cpu_after" \
            "$CLK_TCK" "$stopped_cleanly" "$raw/server-$tag.log" <<'PY'
import json, re, sys

(summary, rnd, key, name, metrics, traces, before, after, served, kb, ka, sb, sa, tck,
 clean, log) = sys.argv[1:]
s = json.loads(summary)
before, after = json.loads(before), json.loads(after)
tck = int(tck)


def cpu(b, a):
    return (int(a) - int(b)) / tck if b and a else None


names = {n: after["span_names"].get(n, 0) - before["span_names"].get(n, 0)
         for n in after["span_names"]}
keel_cpu = cpu(kb, ka)
# Spans the SDK dropped (its queue full): it logs a warning when it starts dropping, and the
# count when it shuts down ("BatchSpanProcessor.SpansDropped" ... dropped_span_count=N).
drops, dropped = [], None
with open(log, errors="replace") as f:
    for line in f:
        if "dropped" in line.lower():
            drops.append(line.strip())
            m = re.search(r"dropped_span_count=(\d+)", line)
            if m:
                dropped = (dropped or 0) + int(m[1])
if not drops:
    dropped = 0
s.update(
    round=int(rnd), configuration=key, name=name, metrics=metrics == "true",
    trace_export=traces == "true",
    sink={"exports": after["exports"] - before["exports"],
          "spans": after["spans"] - before["spans"],
          "root_spans": after["root_spans"] - before["root_spans"],
          "busy_seconds": after["busy_seconds"] - before["busy_seconds"],
          "busy_max_seconds_so_far": after["busy_max_seconds"],
          "span_names": {n: v for n, v in sorted(names.items()) if v}},
    served=json.loads(served),
    keel_cpu_seconds=keel_cpu,
    keel_cpu_us_per_request=(keel_cpu * 1e6 / s["responses"]
                             if keel_cpu is not None and s["responses"] else None),
    sink_cpu_seconds=cpu(sb, sa),
    stopped_cleanly=clean == "true",
    sdk_dropped_spans=dropped,
    log_drop_lines=drops[:5],
)
print(json.dumps(s))
PY
        )"
        records+=("$record")
        spans="$(json 'd["sink"]["spans"]' "$record")"
        note "$label: the sink received $spans spans"
    done
done

# --- Results -----------------------------------------------------------------------------
echo
print_table configuration "${records[@]}"

bench_facts
sink_versions="$("$venv/bin/python" - <<'PY'
import sys, grpc
from importlib.metadata import version
print(f"Python {sys.version.split()[0]}, grpcio {grpc.__version__}, "
      f"opentelemetry-proto {version('opentelemetry-proto')}")
PY
)"

BENCH_TASKS="$TASKS" BENCH_SEED="$SEED" BENCH_DURATION="$DURATION" BENCH_WARMUP="$WARMUP" \
    BENCH_CONNECTIONS="$CONNECTIONS" BENCH_ROUNDS="$ROUNDS" BENCH_TASK_ID="$task_id" \
    BENCH_SAMPLER="$TRACES_SAMPLER${TRACES_SAMPLER_ARG:+ $TRACES_SAMPLER_ARG}" \
    BENCH_SINK="$sink_versions" BENCH_OUT="$OUT_DIR" \
    python3 - "${records[@]}" <<'PY'
import datetime, json, os, statistics, sys

env = os.environ
runs = [json.loads(line) for line in sys.argv[1:]]
keys = ["baseline", "metrics", "traces"]
names = {r["configuration"]: r["name"] for r in runs}
rounds = int(env["BENCH_ROUNDS"])
by = {k: [r for r in runs if r["configuration"] == k] for k in keys}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


summary = {
    k: {
        "requests_per_second": median(r["requests_per_second"] for r in by[k]),
        "p50_ms": median(r["p50_ms"] for r in by[k]),
        "p99_ms": median(r["p99_ms"] for r in by[k]),
        "keel_cpu_us_per_request": median(r["keel_cpu_us_per_request"] for r in by[k]),
    }
    for k in keys
}


def cost(base, other):
    """What `other` costs relative to `base`, in % of req/s (negative: it was faster)."""
    if not base:
        return None
    return (1 - other / base) * 100


def costs(a, b):
    return {
        "median": cost(summary[a]["requests_per_second"], summary[b]["requests_per_second"]),
        "per_round": [cost(x["requests_per_second"], y["requests_per_second"])
                      for x, y in zip(by[a], by[b])],
    }


deltas = {
    "metrics_vs_baseline": costs("baseline", "metrics"),
    "traces_vs_baseline": costs("baseline", "traces"),
    "traces_vs_metrics": costs("metrics", "traces"),
}
goals = [
    {"name": "metrics", "compare": "metrics_vs_baseline",
     "description": "metrics alone cost (1 vs 2)", "target": 3.0},
]
# The trace-export goal is stated at 100 % sampling; with another sampler the line is a figure.
sampler = os.environ["BENCH_SAMPLER"]
if sampler == "always_on":
    goals.append({"name": "traces", "compare": "traces_vs_baseline",
                  "description": "metrics + trace export at 100 % sampling cost (1 vs 3)",
                  "target": 10.0})
else:
    goals.append({"name": "traces", "compare": "traces_vs_baseline",
                  "description": f"metrics + trace export ({sampler}) cost (1 vs 3)",
                  "target": None})
for g in goals:
    g["measured"] = deltas[g["compare"]]["median"]
    g["pass"] = (None if g["target"] is None
                 else g["measured"] is not None and g["measured"] < g["target"])

# The spans: those of configuration 3 against the requests Keel counted while it ran.
t = by["traces"]
spans = sum(r["sink"]["spans"] for r in t)
roots = sum(r["sink"]["root_spans"] for r in t)
served_all = sum(r["served"]["all_routes"] for r in t if r["served"])
served_task = sum(r["served"]["get_task"] for r in t if r["served"])
names_3 = {}
for r in t:
    for n, v in r["sink"]["span_names"].items():
        names_3[n] = names_3.get(n, 0) + v
span_report = {
    "spans": spans,
    "traces": roots,
    "requests_served": served_all,
    "get_task_requests_served": served_task,
    "spans_per_request": spans / served_all if served_all else None,
    "traces_per_request": roots / served_all if served_all else None,
    "span_names": dict(sorted(names_3.items(), key=lambda kv: -kv[1])),
    # None: the server's log says spans were dropped, but not how many.
    "sdk_dropped_spans": (None if any(r["sdk_dropped_spans"] is None for r in t)
                          else sum(r["sdk_dropped_spans"] for r in t)),
    "spans_without_trace_export": sum(r["sink"]["spans"] for k in ("baseline", "metrics")
                                      for r in by[k]),
    "sink_cpu_seconds": sum(r["sink_cpu_seconds"] or 0 for r in t),
    "sink_exports": sum(r["sink"]["exports"] for r in t),
    "sink_busy_seconds": sum(r["sink"]["busy_seconds"] for r in t),
    "sink_busy_max_seconds": max(r["sink"]["busy_max_seconds_so_far"] for r in t),
    "measured_seconds": sum(r["seconds"] for r in t),
}

pct = lambda v: "n/a" if v is None else f"{v:+.1f} %"
ms = lambda v: "-" if v is None else f"{v:.2f}"
verdict = lambda g: "-" if g["pass"] is None else "PASS" if g["pass"] else "FAIL"
target = lambda g: "no target at this sampler" if g["target"] is None else f"target < {g['target']:.0f} %"
out_lines = []
if rounds > 1:
    out_lines += ["", "median over the rounds:"]
    width = max(len(names[k]) for k in keys)
    for k in keys:
        s = summary[k]
        out_lines.append(f"  {names[k].ljust(width)}  {s['requests_per_second']:8.0f} req/s  "
                         f"p50 {ms(s['p50_ms'])} ms  p99 {ms(s['p99_ms'])} ms")
out_lines.append("")
cpu_line = "keel CPU per request (measured run): " + ", ".join(
    f"{names[k]} {summary[k]['keel_cpu_us_per_request']:.0f} µs"
    for k in keys if summary[k]["keel_cpu_us_per_request"] is not None)
out_lines.append(cpu_line)
out_lines.append("")
width = max(len(g["description"]) for g in goals)
for g in goals:
    per_round = ""
    if rounds > 1:
        per_round = "  rounds: " + ", ".join(pct(v) for v in deltas[g["compare"]]["per_round"])
    out_lines.append(f"{'GOAL' if g['target'] else '    '} {g['description'].ljust(width)}  "
                     f"{pct(g['measured']):>9} of req/s  ({target(g)})  {verdict(g)}{per_round}")
tm = deltas["traces_vs_metrics"]
per_round = ("  rounds: " + ", ".join(pct(v) for v in tm["per_round"])) if rounds > 1 else ""
out_lines.append(f"     {'trace export on top of metrics (2 vs 3)'.ljust(width)}  "
                 f"{pct(tm['median']):>9} of req/s  (no target){per_round}")
out_lines.append("")
sr = span_report
ratio = lambda v: "n/a" if v is None else f"{v:.2f}"
out_lines.append(
    f"spans: in configuration 3 the sink received {sr['spans']:,} spans in {sr['traces']:,} traces; "
    f"Keel served {sr['requests_served']:,} requests meanwhile (warm-up, checks and measured "
    f"run; its own count, from /metrics): {ratio(sr['spans_per_request'])} spans/request, "
    f"{ratio(sr['traces_per_request'])} traces/request. Configurations 1 and 2: "
    f"{sr['spans_without_trace_export']} spans")
dropped = sr["sdk_dropped_spans"]
if dropped != 0:
    out_lines.append(
        "  Keel's trace SDK dropped "
        + ("some (see its log)" if dropped is None else
           f"{dropped:,} ({dropped / (dropped + sr['spans']) * 100:.1f} %)")
        + " spans, its queue full (OTEL_BSP_MAX_QUEUE_SIZE, default 2048): they were never sent"
        + ("" if dropped is None or not sr["requests_served"] else
           f"; received + dropped = {(sr['spans'] + dropped) / sr['requests_served']:.2f} spans/request"))
if sr["get_task_requests_served"]:
    # The spans of one GET /v1/tasks/{id}, by name; the few of the login, probes and
    # scrapes (well under 0.01 per request) are left out here (they are in the JSON).
    per = [(n, v / sr["get_task_requests_served"]) for n, v in sr["span_names"].items()]
    out_lines.append("  spans per GET /v1/tasks/{id}, by name: " + ", ".join(
        f"{n} {v:.2f}" for n, v in per if v >= 0.01))
if sr["measured_seconds"]:
    out_lines.append(f"  the sink used {sr['sink_cpu_seconds']:.1f} s of CPU during the measured "
                     f"run(s) of configuration 3 ({sr['sink_cpu_seconds'] / sr['measured_seconds'] * 100:.0f} % "
                     f"of one core), on the cores the service uses")
if sr["sink_exports"]:
    out_lines.append(f"  the sink took {sr['sink_busy_seconds'] / sr['sink_exports'] * 1000:.2f} ms per "
                     f"Export call on average ({sr['sink_exports']:,} calls, "
                     f"{sr['spans'] / sr['sink_exports']:.0f} spans each; the longest "
                     f"{sr['sink_busy_max_seconds'] * 1000:.1f} ms), once a call's request was parsed")
for r in runs:
    if not r["stopped_cleanly"]:
        out_lines.append(f"  note: {r['label']}: keel serve had to be killed; spans still "
                         "buffered were lost")
    for line in (r["log_drop_lines"] if r["sdk_dropped_spans"] is None else []):
        out_lines.append(f"  note: {r['label']}: server log: {line[:200]}")
conditions = (
    f"{env['BENCH_CPUS']} CPUs ({env['BENCH_CPU_MODEL']}) shared by keel, Postgres "
    f"{env['BENCH_PG']}, the load generator ({env['BENCH_OHA']}) and the OTLP sink "
    f"({env['BENCH_SINK']}): the costs include the CPU they take from one another")
out_lines += ["", "conditions: " + conditions]
print("\n".join(out_lines))

knobs = {k: env[f"BENCH_{k.upper()}"]
         for k in ("tasks", "seed", "duration", "warmup", "connections", "rounds")}
for k in ("tasks", "seed", "connections", "rounds"):
    knobs[k] = int(knobs[k])
knobs["traces_sampler"] = sampler
r3 = lambda v: None if v is None else round(v, 3)
result = {
    "benchmark": "loadtests/observability-bench.sh",
    "endpoint": "GET /v1/tasks/{id}",
    "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "commit": env["BENCH_COMMIT"],
    "host": {"cpus": env["BENCH_CPUS"], "cpu_model": env["BENCH_CPU_MODEL"],
             "postgres": env["BENCH_PG"], "load_generator": env["BENCH_OHA"],
             "otlp_sink": env["BENCH_SINK"]},
    "knobs": knobs,
    "task_id": env["BENCH_TASK_ID"],
    "configurations": [
        {"configuration": k, "name": names[k],
         "metrics": by[k][0]["metrics"], "trace_export": by[k][0]["trace_export"],
         "requests_per_second": round(summary[k]["requests_per_second"], 1),
         "p50_ms": r3(summary[k]["p50_ms"]), "p99_ms": r3(summary[k]["p99_ms"]),
         "keel_cpu_us_per_request": r3(summary[k]["keel_cpu_us_per_request"])}
        for k in keys
    ],
    "runs": [
        {
            "round": r["round"], "configuration": r["configuration"], "name": r["name"],
            "metrics": r["metrics"], "trace_export": r["trace_export"],
            "requests_per_second": round(r["requests_per_second"], 1),
            "p50_ms": r3(r["p50_ms"]), "p99_ms": r3(r["p99_ms"]),
            "non_2xx": r["non_2xx"], "errors": r["errors"], "responses": r["responses"],
            "seconds": round(r["seconds"], 3),
            "keel_cpu_seconds": r3(r["keel_cpu_seconds"]),
            "keel_cpu_us_per_request": r3(r["keel_cpu_us_per_request"]),
            "sink_cpu_seconds": r3(r["sink_cpu_seconds"]),
            "requests_served": r["served"],
            "sink": r["sink"],
            "stopped_cleanly": r["stopped_cleanly"],
            "sdk_dropped_spans": r["sdk_dropped_spans"],
        }
        for r in runs
    ],
    "costs_percent_of_requests_per_second": {
        k: {"median": r3(v["median"]), "per_round": [r3(x) for x in v["per_round"]]}
        for k, v in deltas.items()
    },
    "goals": [
        {"name": g["name"], "description": g["description"], "compare": g["compare"],
         "measured_percent": r3(g["measured"]), "target_percent_below": g["target"],
         "pass": g["pass"]}
        for g in goals
    ],
    "spans": {k: (r3(v) if isinstance(v, float) else v) for k, v in span_report.items()},
}
out = env["BENCH_OUT"]
with open(f"{out}/observability-bench.json", "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

md = [
    "| configuration | round | metrics | trace export | req/s | p50 ms | p99 ms | non-2xx | errors | keel CPU µs/req |",
    "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
]
onoff = lambda v: "on" if v else "off"
for r in runs:
    cpu = "-" if r["keel_cpu_us_per_request"] is None else f"{r['keel_cpu_us_per_request']:.0f}"
    md.append(f"| {r['name']} | {r['round']} | {onoff(r['metrics'])} | "
              f"{('OTLP, ' + sampler) if r['trace_export'] else 'off'} | {r['requests_per_second']:,.0f} | "
              f"{ms(r['p50_ms'])} | {ms(r['p99_ms'])} | {r['non_2xx']} | {r['errors']} | {cpu} |")
md += ["", "| cost, in % of req/s | measured | target | result |", "| --- | ---: | ---: | --- |"]
md += [f"| {g['description']} | {pct(g['measured'])} | {target(g)} | {verdict(g)} |"
       for g in goals]
md.append(f"| trace export on top of metrics (2 vs 3) | {pct(tm['median'])} | - | - |")
md += [
    "",
    f"Spans received by the sink in configuration 3: {sr['spans']:,} in {sr['traces']:,} traces, "
    f"for {sr['requests_served']:,} requests served = {ratio(sr['spans_per_request'])} spans/request "
    f"({ratio(sr['traces_per_request'])} traces/request); in configurations 1 and 2: "
    f"{sr['spans_without_trace_export']}. Spans dropped by Keel's trace SDK (queue full): "
    f"{'unknown' if sr['sdk_dropped_spans'] is None else format(sr['sdk_dropped_spans'], ',')}.",
    "",
    f"`loadtests/observability-bench.sh`, TASKS={knobs['tasks']}: GET /v1/tasks/{{id}} of one task, "
    f"{knobs['connections']} connections, {knobs['duration']} per configuration after a "
    f"{knobs['warmup']} warm-up, {knobs['rounds']} round(s)"
    + (" (costs from the medians)" if rounds > 1 else "")
    + f"; {conditions}; commit {env['BENCH_COMMIT']}, {result['generated_at']}.",
]
with open(f"{out}/observability-bench.md", "w") as f:
    f.write("\n".join(md) + "\n")
print()
print(f"results: {out}/observability-bench.json, {out}/observability-bench.md "
      f"(raw oha JSON, server and sink logs: {out}/observability-bench/)")
PY

# Figures taken on an error path are no figures, and configuration 3 without spans measured
# no export: fail the run (after writing the results).
bad="$(
    invalid_runs "${records[@]}"
    python3 -c '
import json, sys
for line in sys.argv[1:]:
    s = json.loads(line)
    if s["trace_export"] and s["sink"]["spans"] == 0:
        print("%s: the sink received no spans" % s["label"])
    if not s["trace_export"] and s["sink"]["spans"]:
        print("%s: the sink received %d spans without trace export" % (s["label"], s["sink"]["spans"]))
' "${records[@]}"
)"
[[ -z "$bad" ]] || die "the run is not valid:
$bad"
