#!/usr/bin/env bash
# Benchmark of a project's task list, GET /v1/projects/{id}/tasks?limit=N, with and without
# two of Keel's fixes: batch loading (the batch_loading flag; off = N+1 queries) and the
# secondary indexes (keel workshop drop-indexes / restore-indexes). One command:
#
#   loadtests/tasks-bench.sh
#
# builds the release binary, seeds a scratch database (keel seed), starts `keel serve` on
# loopback ports of its own, measures eight scenarios on the largest project one after the
# other with oha, restores the indexes, and prints one table, the seeding throughput and
# three goal lines (PASS/FAIL). The same results go to $OUT_DIR as JSON and Markdown. On
# exit, even on an error or Ctrl-C, it stops the server, puts the flag back and drops the
# database (unless KEEP=1). See loadtests/README.md.
#
# Knobs (environment):
#   TASKS        tasks to seed                                    (default 1000000)
#   SEED         the seed's random seed                           (default 42)
#   DURATION     measured run per scenario, at most 10m           (default 10s)
#   WARMUP       warm-up per scenario, 0 = none                   (default 2s)
#   CONNECTIONS  concurrent connections                           (default 16)
#   DATABASE     scratch database, DROPPED at start and at exit   (default keel_bench)
#   HTTP_PORT    loopback port of the public API                  (default 18380)
#   ADMIN_PORT   loopback port of the admin listener              (default 19390)
#   PG_SERVER    Postgres, loopback only, without a database      (default postgres://postgres@127.0.0.1:5432)
#   KEEP         1 = keep the database afterwards                 (default 0)
#   OUT_DIR      results (tasks-bench.json, tasks-bench.md) and raw files (default target/bench)
#
# Exits non-zero on an error (including any non-2xx response or transport error during a
# measured run), not on a FAIL goal.
set -euo pipefail
# A failing command inside $(...) fails the substitution too (bash >= 4.4).
shopt -s inherit_errexit

PROG=tasks-bench.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=loadtests/lib.sh
source "$here/lib.sh"

TASKS="${TASKS:-1000000}"
SEED="${SEED:-42}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-16}"
DATABASE="${DATABASE:-keel_bench}"
HTTP_PORT="${HTTP_PORT:-18380}"
ADMIN_PORT="${ADMIN_PORT:-19390}"
PG_SERVER="${PG_SERVER:-postgres://postgres@127.0.0.1:5432}"
KEEP="${KEEP:-0}"
OUT_DIR="${OUT_DIR:-$root/target/bench}"
# What `keel serve` expects: KEEL_ADMIN_TOKEN if set, else the dev token (KEEL_ENV=dev).
ADMIN_TOKEN="${KEEL_ADMIN_TOKEN:-keel-dev-admin-token}"

# The largest project's list, 1000 rows deep: 20 pages of 50.
DEEP_PAGES=20
DEEP_PAGE_LIMIT=50
# Bounds on the steps that are not oha runs (seconds).
READY_TIMEOUT=60
SEED_TIMEOUT=3600
INDEX_TIMEOUT=1800
STOP_TIMEOUT=30

require_tools python3 curl psql cargo timeout

# --- Knobs -------------------------------------------------------------------------------
check_bench_knobs HTTP_PORT ADMIN_PORT

prepare_out_dir tasks-bench '*.json' server.log
cd "$root"

# --- Helpers -----------------------------------------------------------------------------
urlencode() {
    python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"
}

admin_auth=(-H "authorization: Bearer $ADMIN_TOKEN")

# Keel's secondary indexes on the data tables that are valid (what drop-indexes drops).
count_indexes() {
    pg "$DB_URL" -c "
        select count(*) from pg_index x
        join pg_class t on t.oid = x.indrelid
        join pg_namespace n on n.oid = t.relnamespace
        where n.nspname = current_schema()
          and t.relname in ('users', 'projects', 'project_members', 'tasks', 'comments')
          and not x.indisprimary and not x.indisunique and x.indisvalid"
}

workshop() {
    timeout --foreground --kill-after=10 "$INDEX_TIMEOUT" \
        env DATABASE_URL="$DB_URL" RUST_LOG=warn "$keel" workshop "$1"
}

# set_batch_loading true|false: through the admin API, which applies it at once.
set_batch_loading() {
    local response
    flag_changed=1
    response="$(http PUT "$ADMIN/admin/flags/batch_loading" "${admin_auth[@]}" \
        -H 'content-type: application/json' --data-binary "{\"enabled\": $1}")"
    [[ "$(json 'd["enabled"]' "$response")" == "$1" ]] ||
        die "PUT /admin/flags/batch_loading {\"enabled\": $1} answered $response"
    flag_now="$1"
    note "batch_loading = $1"
}

# --- Clean-up, whatever happens (lib.sh: the server, the database, $scratch) -------------
indexes_dropped=0
flag_changed=0
flag_initial=""
flag_now=""

# While keel serve may still run: the flag back through the admin API, or (KEEP=1) in the
# database.
restore_flag_at_exit() {
    if [[ "$flag_changed" == 1 && -n "$flag_initial" && "$flag_now" != "$flag_initial" ]]; then
        if alive "$server_pid" &&
            curl -s -f --max-time 10 -o /dev/null -X PUT "${admin_auth[@]}" \
                -H 'content-type: application/json' --data-binary "{\"enabled\": $flag_initial}" \
                "$ADMIN/admin/flags/batch_loading"; then
            note "batch_loading restored to $flag_initial"
        elif [[ "$KEEP" == 1 ]]; then
            pg "$DB_URL" -c "update fix_flags set enabled = $flag_initial where name = 'batch_loading'" &&
                note "batch_loading restored to $flag_initial (in the database)"
        fi
    fi
}

# After keel serve stops: the indexes back if the database is kept.
restore_indexes_at_exit() {
    if [[ "$indexes_dropped" == 1 ]]; then
        if [[ "$KEEP" == 1 ]]; then
            note "restoring the indexes"
            workshop restore-indexes >&2 || note "restore failed: run 'DATABASE_URL=$DB_URL keel workshop restore-indexes'"
        else
            note "indexes left dropped: the database is dropped anyway"
        fi
    fi
}
on_exit_before_stop restore_flag_at_exit
on_exit restore_indexes_at_exit
install_cleanup

# --- Build, load generator ---------------------------------------------------------------
ensure_oha
build_keel

# Before the seed, which takes a while at the default TASKS (serve_keel checks them again).
check_ports_free HTTP_PORT ADMIN_PORT

# --- Database and seed -------------------------------------------------------------------
seed_scratch_database "$keel" "$raw/seed.json"
read_seed_report "$raw/seed.json"
min_tasks=$((DEEP_PAGES * DEEP_PAGE_LIMIT + 100))
((project_tasks >= min_tasks)) ||
    die "the largest project has $project_tasks tasks; the deep page needs $min_tasks: raise TASKS"
note "largest project $project_id: $project_tasks tasks, owner $owner_email"

# --- Server ------------------------------------------------------------------------------
note "starting keel serve on $API (admin $ADMIN)"
serve_keel "$keel" "$raw/server.log"

flags_json="$(http GET "$ADMIN/admin/flags" "${admin_auth[@]}")"
flag_initial="$(json '[f["enabled"] for f in d["items"] if f["name"] == "batch_loading"][0]' "$flags_json")"
flag_now="$flag_initial"
[[ "$flag_initial" == true || "$flag_initial" == false ]] || die "no batch_loading flag in GET /admin/flags"
[[ "$flag_now" == true ]] || set_batch_loading true

# --- The deep cursor ---------------------------------------------------------------------
login_auth "$owner_email" "$password"
tasks_url="$API/v1/projects/$project_id/tasks"
cursor=""
for ((page = 1; page <= DEEP_PAGES; page++)); do
    url="$tasks_url?limit=$DEEP_PAGE_LIMIT"
    [[ -z "$cursor" ]] || url+="&cursor=$(urlencode "$cursor")"
    response="$(http GET "$url" "${auth[@]}")"
    cursor="$(json "
(d['next_cursor'] if len(d['items']) == $DEEP_PAGE_LIMIT and d['next_cursor'] else '')" "$response")"
    [[ -n "$cursor" ]] || die "page $page of the project's tasks is short or has no next_cursor"
done
deep_cursor="$(urlencode "$cursor")"
note "cursor $((DEEP_PAGES * DEEP_PAGE_LIMIT)) rows deep: $DEEP_PAGES pages of $DEEP_PAGE_LIMIT"

# --- Scenarios ---------------------------------------------------------------------------
names=("batched, first page" "batched, deep page" "N+1, first page" "N+1, deep page"
    "batched, limit 100" "N+1, limit 100" "no indexes, first page" "no indexes, deep page")
limits=(50 50 50 50 100 100 50 50)
pages=(first deep first deep first first first deep)
batching=(true true false false true false true true)
indexes=(present present present present present present dropped dropped)

indexes_present="$(count_indexes)"
((indexes_present > 0)) || die "no secondary indexes found after the seed"
restore_seconds=""

restore_indexes() {
    local started=$SECONDS now
    note "restoring the indexes (CREATE INDEX CONCURRENTLY)"
    workshop restore-indexes >&2
    indexes_dropped=0
    restore_seconds=$((SECONDS - started))
    now="$(count_indexes)"
    [[ "$now" == "$indexes_present" ]] ||
        die "after restore-indexes: $now valid secondary indexes, expected $indexes_present"
    note "secondary indexes: $now, restored in ${restore_seconds}s"
}

echo "$PROG: $CONNECTIONS connections, $DURATION per scenario, warm-up $WARMUP; $(oha --version)" >&2
records=()
for i in "${!names[@]}"; do
    name="${names[$i]}"
    if [[ "${indexes[$i]}" == dropped && "$indexes_dropped" == 0 ]]; then
        note "dropping the secondary indexes"
        indexes_dropped=1
        workshop drop-indexes >&2
        now="$(count_indexes)"
        [[ "$now" == 0 ]] || die "after drop-indexes: $now secondary indexes remain"
        note "secondary indexes: $indexes_present -> 0"
    elif [[ "${indexes[$i]}" == present && "$indexes_dropped" == 1 ]]; then
        restore_indexes
    fi
    [[ "$flag_now" == "${batching[$i]}" ]] || set_batch_loading "${batching[$i]}"

    login_auth "$owner_email" "$password"
    url="$tasks_url?limit=${limits[$i]}"
    [[ "${pages[$i]}" == first ]] || url+="&cursor=$deep_cursor"
    # One checked request first: a full page, answered 200.
    response="$(http GET "$url" "${auth[@]}")"
    [[ "$(json 'len(d["items"])' "$response")" == "${limits[$i]}" ]] ||
        die "$name: the page does not have ${limits[$i]} items"

    warm_up "$name" "$raw/warmup-$i.json" "${auth[@]}" "$url"
    note "measuring $name"
    run_oha "$DURATION" "$raw/result-$i.json" "${auth[@]}" "$url"
    alive "$server_pid" || die "keel serve died during \"$name\"; see $raw/server.log"

    summary="$(oha_summary "$raw/result-$i.json" "$name")"
    records+=("$(python3 -c '
import json, sys
s = json.loads(sys.argv[1])
s.update(limit=int(sys.argv[2]), page=sys.argv[3], batch_loading=sys.argv[4] == "true",
         indexes=sys.argv[5])
print(json.dumps(s))' "$summary" "${limits[$i]}" "${pages[$i]}" "${batching[$i]}" "${indexes[$i]}")")
done

[[ "$indexes_dropped" == 0 ]] || restore_indexes
[[ "$flag_now" == "$flag_initial" ]] || set_batch_loading "$flag_initial"
# Killed after STOP_TIMEOUT (stop_process says so): the figures are taken by then.
stop_server || true

# --- Results -----------------------------------------------------------------------------
echo
print_table scenario "${records[@]}"
echo

bench_facts
BENCH_TASKS="$TASKS" BENCH_SEED="$SEED" BENCH_DURATION="$DURATION" BENCH_WARMUP="$WARMUP" \
    BENCH_CONNECTIONS="$CONNECTIONS" BENCH_PROJECT_ID="$project_id" \
    BENCH_PROJECT_TASKS="$project_tasks" BENCH_RESTORE_SECONDS="$restore_seconds" \
    BENCH_INDEXES="$indexes_present" BENCH_OUT="$OUT_DIR" \
    python3 - "$raw/seed.json" "${records[@]}" <<'PY'
import datetime, json, os, sys

env = os.environ
with open(sys.argv[1]) as f:
    seed = json.load(f)
scenarios = [json.loads(line) for line in sys.argv[2:]]
by_name = {s["label"]: s for s in scenarios}
rows = sum(seed["counts"].values())


def ratio(a, b):
    num, den = by_name[a]["requests_per_second"], by_name[b]["requests_per_second"]
    return num / den if den else None


goals = [
    {
        "name": "batching",
        "description": "batched vs N+1 req/s at limit=100",
        "ratio": ratio("batched, limit 100", "N+1, limit 100"),
        "target": 5.0,
        "unit": "x",
    },
    {
        "name": "indexes",
        "description": "indexed vs unindexed req/s, deep page",
        "ratio": ratio("batched, deep page", "no indexes, deep page"),
        "target": 20.0,
        "unit": "x",
    },
    {
        "name": "seeding",
        "description": "seeding throughput",
        "ratio": seed["rows_per_second"],
        "target": 100_000.0,
        "unit": "rows/s",
    },
]
for g in goals:
    g["pass"] = g["ratio"] is not None and g["ratio"] >= g["target"]


def measured(g):
    if g["ratio"] is None:
        return "n/a"
    return f"{g['ratio']:.1f}×" if g["unit"] == "x" else f"{g['ratio']:,.0f} rows/s"


def target(g):
    return f"≥ {g['target']:.0f}×" if g["unit"] == "x" else f"≥ {g['target']:,.0f} rows/s"


verdict = lambda g: "PASS" if g["pass"] else "FAIL"
counts = ", ".join(f"{v:,} {k}" for k, v in seed["counts"].items())
seeding = (f"seeding: {rows:,} rows ({counts}) in {seed['elapsed_seconds']:.1f} s = "
           f"{seed['rows_per_second']:,.0f} rows/s")
print(seeding)
if env["BENCH_RESTORE_SECONDS"]:
    print(f"index restore (CREATE INDEX CONCURRENTLY, {env['BENCH_INDEXES']} indexes): "
          f"{env['BENCH_RESTORE_SECONDS']} s")
print()
width = max(len(g["description"]) for g in goals)
for g in goals:
    print(f"GOAL {g['description'].ljust(width)}  {measured(g):>16}  (target {target(g)})  {verdict(g)}")

knobs = {k: env[f"BENCH_{k.upper()}"] for k in ("tasks", "seed", "duration", "warmup", "connections")}
knobs["tasks"], knobs["seed"], knobs["connections"] = (
    int(knobs["tasks"]), int(knobs["seed"]), int(knobs["connections"]))
result = {
    "benchmark": "loadtests/tasks-bench.sh",
    "endpoint": "GET /v1/projects/{id}/tasks?limit=N",
    "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "commit": env["BENCH_COMMIT"],
    "host": {"cpus": env["BENCH_CPUS"], "cpu_model": env["BENCH_CPU_MODEL"],
             "postgres": env["BENCH_PG"], "load_generator": env["BENCH_OHA"]},
    "knobs": knobs,
    "project": {"id": env["BENCH_PROJECT_ID"], "tasks": int(env["BENCH_PROJECT_TASKS"])},
    "seed": {"counts": seed["counts"], "rows": rows,
             "elapsed_seconds": seed["elapsed_seconds"],
             "rows_per_second": seed["rows_per_second"]},
    "index_restore_seconds": (int(env["BENCH_RESTORE_SECONDS"])
                              if env["BENCH_RESTORE_SECONDS"] else None),
    "scenarios": [
        {
            "scenario": s["label"],
            "limit": s["limit"],
            "page": s["page"],
            "batch_loading": s["batch_loading"],
            "indexes": s["indexes"],
            "requests_per_second": round(s["requests_per_second"], 1),
            "p50_ms": None if s["p50_ms"] is None else round(s["p50_ms"], 3),
            "p99_ms": None if s["p99_ms"] is None else round(s["p99_ms"], 3),
            "non_2xx": s["non_2xx"],
            "errors": s["errors"],
            "responses": s["responses"],
            "seconds": round(s["seconds"], 3),
        }
        for s in scenarios
    ],
    "goals": [
        {"name": g["name"], "description": g["description"],
         "measured": None if g["ratio"] is None else round(g["ratio"], 2),
         "target": g["target"], "unit": g["unit"], "pass": g["pass"]}
        for g in goals
    ],
}
out = env["BENCH_OUT"]
with open(f"{out}/tasks-bench.json", "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

ms = lambda v: "-" if v is None else f"{v:.2f}"
md = [
    "| scenario | limit | page | batch_loading | indexes | req/s | p50 ms | p99 ms | non-2xx | errors |",
    "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
]
for s in scenarios:
    page = "first" if s["page"] == "first" else "1000 rows deep"
    md.append(f"| {s['label']} | {s['limit']} | {page} | {'on' if s['batch_loading'] else 'off'} "
              f"| {s['indexes']} | {s['requests_per_second']:,.0f} | {ms(s['p50_ms'])} "
              f"| {ms(s['p99_ms'])} | {s['non_2xx']} | {s['errors']} |")
md += [
    "",
    "| goal | measured | target | result |",
    "| --- | ---: | ---: | --- |",
]
md += [f"| {g['description']} | {measured(g)} | {target(g)} | {verdict(g)} |" for g in goals]
md += [
    "",
    f"Seeding: {rows:,} rows ({counts}) in {seed['elapsed_seconds']:.1f} s, "
    f"{seed['rows_per_second']:,.0f} rows/s.",
    "",
    f"`loadtests/tasks-bench.sh`, TASKS={knobs['tasks']}, SEED={knobs['seed']}: "
    f"the largest project ({result['project']['tasks']:,} tasks), "
    f"{knobs['connections']} connections, {knobs['duration']} per scenario after a "
    f"{knobs['warmup']} warm-up; {env['BENCH_CPUS']} CPUs ({env['BENCH_CPU_MODEL']}), "
    f"Postgres {env['BENCH_PG']} on the same machine, {env['BENCH_OHA']}; "
    f"commit {env['BENCH_COMMIT']}, {result['generated_at']}.",
]
with open(f"{out}/tasks-bench.md", "w") as f:
    f.write("\n".join(md) + "\n")
print()
print(f"results: {out}/tasks-bench.json, {out}/tasks-bench.md (raw oha JSON: {out}/tasks-bench/)")
PY

# Figures taken on an error path are no figures: fail the run (after writing them).
die_if_invalid "$(invalid_runs "${records[@]}")"
