# shellcheck shell=bash
# Shared by the load-test scripts (core.sh, tasks-bench.sh, observability-bench.sh,
# revisions-bench.sh, cache-bench.sh, jobs-bench.sh); source it, do not run it.
#
#   PROG=core.sh                 # the prefix of every message (default: the script's name)
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# A bench (tasks-bench.sh, observability-bench.sh, revisions-bench.sh) sets its knobs, then:
#
#   require_tools python3 curl psql ...
#   check_bench_knobs HTTP_PORT ADMIN_PORT [PORT_VAR...]    # sets API, ADMIN, DB_URL
#   prepare_out_dir NAME '*.json' ...                       # sets raw=$OUT_DIR/NAME
#   my_var=""; on_exit my_step                              # its own clean-up steps, if any
#   install_cleanup                                         # traps; $scratch
#   build_keel
#   seed_scratch_database "$keel" "$raw/seed.json"; read_seed_report "$raw/seed.json"
#   serve_keel "$keel" LOG; login_auth "$owner_email" "$password"; warm_up ...; run_oha ...
#
# What it gives:
#   die MESSAGE                        print "PROG: MESSAGE" on stderr and exit 1
#   duration_secs NAME VALUE           check an oha duration (500ms, 15s, 2m; at most 10m),
#                                      print it in seconds; exits on a bad one
#   check_duration NAME VALUE          a positive duration (DURATION)
#   check_warmup NAME VALUE            a duration, or 0 for none (WARMUP)
#   check_connections NAME VALUE       1..9999 (CONNECTIONS)
#   check_loopback_url NAME URL        http(s)://loopback[:port], nothing else
#   check_ports VAR...                 each a port from 1024 to 65535, all different
#   check_scratch_database             KEEP is 0 or 1; DATABASE a lower-case identifier
#                                      with "bench" in it (it is dropped)
#   check_pg_server                    PG_SERVER: loopback Postgres without a database
#                                      (drops a trailing slash)
#   check_seed_knobs                   TASKS 1..999999999, SEED a whole number
#   check_rounds NAME VALUE            1..20 (ROUNDS)
#   ensure_oha                         install oha if missing; sets OHA_JSON (its JSON flag)
#   run_oha DURATION OUT ARGS...       oha for DURATION at $CONNECTIONS, JSON into OUT;
#                                      ARGS are oha's (headers, then the URL)
#   oha_summary FILE LABEL             one JSON line: requests/s, p50/p99 ms, non-2xx, errors
#   print_table FIRST_HEADER LINE...   oha_summary lines as an aligned table
#   invalid_runs LINE...               one line per oha_summary line with non-2xx or errors
#   bench_facts                        exports BENCH_COMMIT, BENCH_PG, BENCH_CPUS,
#                                      BENCH_CPU_MODEL, BENCH_OHA (where the figures come from)
#   note MESSAGE                       print "PROG: MESSAGE" on stderr
#   pg URL PSQL_ARGS...                bounded, quiet psql (statement timeout
#                                      $PG_STATEMENT_TIMEOUT, default 120s)
#   json EXPR JSON                     EXPR evaluated on the parsed JSON `d`
#   http METHOD URL CURL_ARGS...       one bounded request; the body of a 2xx, else dies
#                                      (needs $scratch, a temporary directory)
#   port_in_use PORT                   something listens on 127.0.0.1:PORT
#   check_ports_free VAR...            nothing listens on 127.0.0.1 at these ports; exits if so
#   build_keel                         cargo build --release; sets $keel (needs $root)
#   build_keel_in DIR                  the same for the crate in DIR (a git worktree)
#   seed_scratch_database BIN REPORT   drops $DATABASE, then `BIN seed` into it ($TASKS, $SEED),
#                                      its report into REPORT; sets db_touched=1
#   serve_keel BIN LOG [NAME=VALUE...] `BIN serve` on $HTTP_PORT/$ADMIN_PORT against $DB_URL
#                                      (KEEL_ENV=dev, RUST_LOG=warn, plus the settings given);
#                                      sets $server_pid, waits for /readyz
#   wait_ready NAME PID URL LOG SECS   until URL answers 2xx, at most SECS s; dies with the
#                                      end of LOG if PID exits first
#   stop_server                        stops $server_pid (stop_process), if any, and clears it
#   stop_pid_var VAR NAME              the same for the process whose id is in the variable VAR
#   drop_scratch_database              drops $DATABASE on $PG_SERVER, or keeps it when
#                                      KEEP=1 (prints $DB_URL)
#   login EMAIL PASSWORD               a fresh access token from $API
#   login_auth EMAIL PASSWORD          the same as curl/oha arguments: sets the array auth
#                                      (-H "authorization: Bearer TOKEN")
#   require_tools TOOL...              each on PATH, or die "TOOL is required"
#   check_bench_knobs PORT_VAR...      check_seed_knobs, DURATION, WARMUP, CONNECTIONS,
#                                      check_scratch_database, check_ports PORT_VAR...,
#                                      check_pg_server; sets API and ADMIN (loopback URLs of
#                                      HTTP_PORT, ADMIN_PORT) and DB_URL ($PG_SERVER/$DATABASE)
#   prepare_out_dir NAME PATTERN...    OUT_DIR made absolute; raw=$OUT_DIR/NAME; removes the
#                                      previous NAME.json, NAME.md and raw files matching PATTERN
#   on_exit_before_stop STEP...        functions the clean-up runs first (keel serve may run)
#   on_exit STEP...                    functions the clean-up runs after stop_server, before
#                                      the database is dropped
#   install_cleanup                    clears server_pid, scratch, db_touched; traps EXIT (the
#                                      clean-up: the steps before, stop_server, the steps
#                                      after, drop_scratch_database if db_touched=1, rm
#                                      $scratch; keeps the exit status), INT (exit 130) and
#                                      TERM (exit 143); makes $scratch (mktemp -d)
#   read_seed_report FILE              the seed report's largest project by task count: sets
#                                      project_id, project_tasks, owner_email, password
#   vacuum_scratch_database            VACUUM (ANALYZE) of $DB_URL (after the seed)
#   first_task_id PROJECT CURL_ARGS... prints the id of the first task of PROJECT's list
#   warm_up LABEL OUT ARGS...          unless WARMUP=0: note "warm-up   LABEL", run_oha $WARMUP
#   die_if_invalid RUNS                dies with invalid_runs' lines RUNS, if any
#   alive PID                          PID is set and the process runs
#   stop_process PID NAME              SIGTERM, at most $STOP_TIMEOUT s, then SIGKILL;
#                                      returns 1 if it had to be killed
#
# Needs python3 (it parses the JSON). Leaves `set -euo pipefail` to the caller.

PROG="${PROG:-$(basename "$0")}"

die() {
    echo "$PROG: $*" >&2
    exit 1
}

note() {
    echo "$PROG: $*" >&2
}

# --- Processes, Postgres, HTTP (the bench scripts) ---------------------------------------
pg() {
    local url="$1"
    shift
    PGCONNECT_TIMEOUT=10 PGOPTIONS="-c statement_timeout=${PG_STATEMENT_TIMEOUT:-120s} -c client_min_messages=warning" \
        psql "$url" -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

# json EXPR JSON: evaluates EXPR on the parsed JSON `d`; strings as they are, the rest as JSON.
json() {
    python3 -c '
import json, sys
d = json.loads(sys.argv[2])
v = eval(sys.argv[1], {"d": d})
print(v if isinstance(v, str) else json.dumps(v))' "$1" "$2"
}

# http METHOD URL [CURL_ARGS...]: one bounded request; prints the body of a 2xx answer,
# dies with the status and body otherwise.
http() {
    # shellcheck disable=SC2154 # $scratch is the caller's
    local method="$1" url="$2" body="$scratch/response.json" status
    shift 2
    status="$(curl -sS --max-time 30 -o "$body" -w '%{http_code}' -X "$method" "$@" "$url")" ||
        die "$method $url failed"
    [[ "$status" == 2* ]] || die "$method $url answered $status: $(head -c 500 "$body")"
    cat "$body"
}

port_in_use() {
    local rc=0
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1/" || rc=$?
    [[ "$rc" != 7 ]] # 7: connection refused
}

build_keel() {
    build_keel_in "${root:?}"
}

# build_keel_in DIR: the release binary of the crate in DIR, built in $CARGO_TARGET_DIR if
# set, else in DIR/target.
build_keel_in() {
    local dir="$1" where=""
    [[ "$dir" == "$root" ]] || where=" in $dir"
    note "building the release binary$where"
    (cd "$dir" && cargo build --release --quiet)
    keel="${CARGO_TARGET_DIR:-$dir/target}/release/keel"
    [[ -x "$keel" ]] || die "no binary at $keel after cargo build --release"
}

check_ports_free() {
    local var
    for var in "$@"; do
        ! port_in_use "${!var}" || die "something already listens on 127.0.0.1:${!var}; choose another $var"
    done
}

# seed_scratch_database BIN REPORT: a fresh $DATABASE seeded by `BIN seed` (which creates and
# migrates it with BIN's migrations), at most $SEED_TIMEOUT s. db_touched=1 tells the
# caller's clean-up to drop it.
seed_scratch_database() {
    local bin="$1" report="$2"
    # shellcheck disable=SC2034 # read by the caller's clean-up
    db_touched=1
    pg "$PG_SERVER/postgres" -c "drop database if exists \"$DATABASE\" with (force)"
    note "seeding $TASKS tasks (seed $SEED) into $DATABASE"
    timeout --foreground --kill-after=10 "$SEED_TIMEOUT" \
        env KEEL_ENV=dev DATABASE_URL="$DB_URL" KEEL_REDIS_PREFIX="$REDIS_PREFIX" RUST_LOG=warn \
        "$bin" seed --tasks "$TASKS" --seed "$SEED" --out "$report" >&2
}

# serve_keel BIN LOG [NAME=VALUE...]: `BIN serve` (which does not migrate) on loopback,
# without per-request logs, its output into LOG; ready when /readyz answers 200 (Postgres
# reachable), within $READY_TIMEOUT s. The ports are checked first: a server left over on
# them would answer the readiness probe in this one's stead.
serve_keel() {
    local bin="$1" log="$2"
    shift 2
    check_ports_free HTTP_PORT ADMIN_PORT
    env KEEL_ENV=dev DATABASE_URL="$DB_URL" KEEL_REDIS_PREFIX="$REDIS_PREFIX" \
        KEEL_HTTP_ADDR="127.0.0.1:$HTTP_PORT" KEEL_ADMIN_ADDR="127.0.0.1:$ADMIN_PORT" RUST_LOG=warn "$@" \
        "$bin" serve >"$log" 2>&1 &
    server_pid=$!
    wait_ready "keel serve" "$server_pid" "http://127.0.0.1:$ADMIN_PORT/readyz" "$log" "$READY_TIMEOUT"
}

# wait_ready NAME PID URL LOG SECS: a process just started in the background (keel serve, a
# sink) is ready when URL answers 2xx; dies if it exits first (with the end of its LOG) or is
# not ready within SECS s.
wait_ready() {
    local name="$1" pid="$2" url="$3" log="$4" secs="$5"
    local deadline=$((SECONDS + secs))
    until curl -sf --max-time 2 -o /dev/null "$url"; do
        alive "$pid" || die "$name exited; the end of its log:
$(tail -n 20 "$log")"
        ((SECONDS < deadline)) || die "$name not ready after ${secs}s"
        sleep 0.2
    done
}

# The scratch database of a bench, at exit: dropped, or kept with KEEP=1.
drop_scratch_database() {
    if [[ "$KEEP" == 1 ]]; then
        note "kept the database: $DB_URL"
    elif pg "$PG_SERVER/postgres" -c "drop database if exists \"$DATABASE\" with (force)"; then
        note "dropped the database $DATABASE"
    else
        note "could not drop the database $DATABASE"
    fi
}

# login EMAIL PASSWORD: a fresh access token (a seeded token lives an hour, and a run can
# last longer than that).
login() {
    local body response
    body="$(python3 -c 'import json, sys; print(json.dumps({"email": sys.argv[1], "password": sys.argv[2]}))' \
        "$1" "$2")"
    response="$(http POST "$API/v1/auth/token" -H 'content-type: application/json' --data-binary "$body")"
    json 'd["access_token"]' "$response"
}

# login_auth EMAIL PASSWORD: sets auth to the curl/oha arguments of a fresh access token.
login_auth() {
    local token
    token="$(login "$1" "$2")"
    # shellcheck disable=SC2034 # the caller's
    auth=(-H "authorization: Bearer $token")
}

# --- The benches' skeleton ----------------------------------------------------------------
# require_tools TOOL...: each on PATH, or die.
require_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool is required"
    done
}

# check_bench_knobs PORT_VAR...: the knobs every bench takes (TASKS, SEED, DURATION, WARMUP,
# CONNECTIONS, DATABASE, KEEP, PG_SERVER) and its loopback ports (HTTP_PORT, ADMIN_PORT and
# any other given); sets API, ADMIN (the two listeners' base URLs), DB_URL and REDIS_PREFIX
# (the Redis key prefix of the scratch database's cache entries).
check_bench_knobs() {
    check_seed_knobs
    # shellcheck disable=SC2153 # DURATION is the caller's knob
    check_duration DURATION "$DURATION"
    check_warmup WARMUP "$WARMUP"
    check_connections CONNECTIONS "$CONNECTIONS"
    check_scratch_database
    check_ports "$@"
    check_pg_server
    API="http://127.0.0.1:$HTTP_PORT"
    ADMIN="http://127.0.0.1:$ADMIN_PORT"
    check_loopback_url HTTP_PORT "$API"
    check_loopback_url ADMIN_PORT "$ADMIN"
    DB_URL="$PG_SERVER/$DATABASE"
    # The scratch database's cache entries live under their own prefix, apart from those
    # of a service running beside the bench (and `keel seed` drops only these).
    REDIS_PREFIX="${REDIS_PREFIX:-keel-bench:$DATABASE:}"
}

# prepare_out_dir NAME PATTERN...: makes $OUT_DIR absolute and sets raw=$OUT_DIR/NAME (both
# created); removes the previous run's NAME.json, NAME.md and the raw files matching the
# PATTERNs (globs such as *.json): a failed run must not leave them looking current.
prepare_out_dir() {
    local name="$1" pattern
    shift
    mkdir -p "$OUT_DIR"
    OUT_DIR="$(cd "$OUT_DIR" && pwd)"
    raw="$OUT_DIR/$name"
    mkdir -p "$raw"
    rm -f "$OUT_DIR/$name.json" "$OUT_DIR/$name.md"
    for pattern in "$@"; do
        # shellcheck disable=SC2086 # PATTERN is a glob
        rm -f "$raw"/$pattern
    done
}

# Clean-up, whatever happens: install_cleanup makes the EXIT trap run, with errexit off,
#   1. the steps given to on_exit_before_stop, in order (keel serve may still run),
#   2. stop_server,
#   3. the steps given to on_exit, in order,
#   4. drop_scratch_database if db_touched=1, and removes $scratch;
# then exits with the script's status: Ctrl-C (SIGINT) exits 130, SIGTERM 143. A step is a
# function name; the variables it reads must be set before install_cleanup.
exit_steps_before_stop=()
exit_steps=()

on_exit_before_stop() {
    exit_steps_before_stop+=("$@")
}

on_exit() {
    exit_steps+=("$@")
}

# install_cleanup: clears server_pid, scratch and db_touched, installs the traps and makes
# $scratch, a temporary directory.
install_cleanup() {
    server_pid=""
    scratch=""
    db_touched=0
    trap run_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    scratch="$(mktemp -d)"
}

run_cleanup() {
    local status=$? step
    set +e
    trap - EXIT INT TERM
    for step in "${exit_steps_before_stop[@]}"; do
        "$step"
    done
    stop_server
    for step in "${exit_steps[@]}"; do
        "$step"
    done
    [[ "$db_touched" != 1 ]] || drop_scratch_database
    [[ -z "$scratch" ]] || rm -rf "$scratch"
    exit "$status"
}

# read_seed_report FILE: from `keel seed`'s report, the largest project by task count: sets
# project_id, project_tasks, owner_email (its owner) and password (every seeded user's).
read_seed_report() {
    local fields
    fields="$(python3 -c '
import json, sys
with open(sys.argv[1]) as f:
    d = json.load(f)
p = max(d["largest_projects"], key=lambda p: p["tasks"])
print(p["id"], p["tasks"], p["owner"]["email"], d["password"], sep="\n")' "$1")" ||
        die "could not read the seed report $1"
    # shellcheck disable=SC2034 # the caller's
    {
        IFS= read -r project_id
        IFS= read -r project_tasks
        IFS= read -r owner_email
        IFS= read -r password
    } <<<"$fields"
    [[ "$project_id" =~ ^[0-9a-fA-F-]{36}$ ]] || die "unexpected project id in the seed report: $project_id"
}

# vacuum_scratch_database: VACUUM (ANALYZE) of $DB_URL after the seed, for fresh statistics
# and no autovacuum waking up during the first runs (within $PG_STATEMENT_TIMEOUT).
vacuum_scratch_database() {
    pg "$DB_URL" -c 'vacuum (analyze)'
}

# first_task_id PROJECT_ID CURL_ARGS...: prints the id of the first task of the project's
# list (GET $API/v1/projects/{id}/tasks?limit=1, with CURL_ARGS such as the auth header);
# dies on anything else.
first_task_id() {
    local project="$1" response id
    shift
    response="$(http GET "$API/v1/projects/$project/tasks?limit=1" "$@")"
    id="$(json 'd["items"][0]["id"]' "$response")"
    [[ "$id" =~ ^[0-9a-fA-F-]{36}$ ]] || die "unexpected task id: $id"
    echo "$id"
}

# warm_up LABEL OUT ARGS...: unless WARMUP=0, says "warm-up   LABEL" and runs oha for
# $WARMUP (run_oha OUT ARGS...).
warm_up() {
    local label="$1"
    shift
    [[ "$WARMUP" != "0" ]] || return 0
    note "warm-up   $label"
    run_oha "$WARMUP" "$@"
}

# die_if_invalid RUNS: dies when RUNS (invalid_runs' lines) is not empty; call it after the
# results are written.
die_if_invalid() {
    [[ -z "$1" ]] || die "some responses were not 2xx or failed; the figures measure an error path:
$1"
}

# --- Processes ---------------------------------------------------------------------------
alive() {
    [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null
}

# stop_process PID NAME: SIGTERM, a bounded wait, then SIGKILL. Returns 1 if it had to be
# killed.
stop_process() {
    local pid="$1" name="$2" killed=0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + STOP_TIMEOUT))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            note "$name did not stop within ${STOP_TIMEOUT}s of SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            killed=1
        fi
    fi
    wait "$pid" 2>/dev/null || true
    ((killed == 0))
}

stop_server() {
    stop_pid_var server_pid "keel serve"
}

# stop_pid_var VAR NAME: stop_process on the process whose id is in the variable VAR, if it
# holds one, and clears VAR first (a clean-up that runs after an error stops it only once).
# Returns what stop_process returns.
stop_pid_var() {
    local var="$1" pid
    pid="${!var:-}"
    [[ -n "$pid" ]] || return 0
    printf -v "$var" '%s' ""
    stop_process "$pid" "$2"
}

# --- Knobs -------------------------------------------------------------------------------
# oha takes durations such as 500ms, 15s, 2m; bound them so that a typo cannot run for hours.
duration_secs() {
    python3 - "$PROG" "$1" "$2" <<'PY'
import re, sys
prog, name, value = sys.argv[1], sys.argv[2], sys.argv[3]
m = re.fullmatch(r"(\d+)(ms|s|m)", value)
if not m:
    sys.exit(f"{prog}: {name}={value!r}: expected a duration such as 15s, 500ms or 2m")
secs = int(m[1]) * {"ms": 0.001, "s": 1, "m": 60}[m[2]]
if secs > 600:
    sys.exit(f"{prog}: {name}={value!r}: at most 10m")
print(secs)
PY
}

check_duration() {
    duration_secs "$1" "$2" >/dev/null || exit 1
    [[ "$2" != 0* ]] || die "$1 must be positive"
}

check_warmup() {
    if [[ "$2" != "0" ]]; then
        duration_secs "$1" "$2" >/dev/null || exit 1
    fi
}

check_connections() {
    [[ "$2" =~ ^[1-9][0-9]{0,3}$ ]] || die "$1=$2: expected 1..9999"
}

check_ports() {
    local var port
    for var in "$@"; do
        port="${!var}"
        if [[ ! "$port" =~ ^[1-9][0-9]{0,4}$ ]] || ((port < 1024 || port > 65535)); then
            die "$var=$port: expected a port from 1024 to 65535"
        fi
    done
    if [[ "$(for var in "$@"; do echo "${!var}"; done | sort -u | wc -l)" != "$#" ]]; then
        local names
        names="$(printf '%s, ' "$@")"
        die "${names%, } must all differ"
    fi
}

check_seed_knobs() {
    [[ "$TASKS" =~ ^[1-9][0-9]{0,8}$ ]] || die "TASKS=$TASKS: expected a whole number from 1 to 999999999"
    [[ "$SEED" =~ ^[0-9]{1,18}$ ]] || die "SEED=$SEED: expected a whole number"
}

check_rounds() {
    if [[ ! "$2" =~ ^[1-9][0-9]?$ ]] || (($2 > 20)); then
        die "$1=$2: expected 1..20"
    fi
}

# The benches drop DATABASE with (force): a name with "bench" in it keeps a typo from
# dropping a database that matters.
check_scratch_database() {
    [[ "$KEEP" == 0 || "$KEEP" == 1 ]] || die "KEEP=$KEEP: expected 0 or 1"
    [[ "$DATABASE" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "DATABASE=$DATABASE: expected a lower-case identifier"
    [[ "$DATABASE" == *bench* ]] || die "DATABASE=$DATABASE: it is dropped at start and at exit, so its name must contain 'bench'"
}

# --- Target: loopback only ---------------------------------------------------------------
# Accept http(s)://HOST[:PORT][/] where HOST is localhost, 127.x.y.z or [::1]; nothing else
# (no user-info, no path), so that the load can never leave this machine.
check_loopback_url() {
    local name="$1" url="${2%/}"
    local loopback_re='^https?://(localhost|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[::1\])(:[0-9]{1,5})?$'
    if [[ ! "$url" =~ $loopback_re ]]; then
        die "refusing $name=$url: this harness sends load only to this machine.
Give a loopback base URL with no path: http://127.0.0.1:PORT, http://localhost:PORT or http://[::1]:PORT."
    fi
}

# PG_SERVER: postgres://USER[:PASSWORD]@loopback[:PORT], no database (the benches create
# and drop theirs on it).
check_pg_server() {
    PG_SERVER="${PG_SERVER%/}"
    local pg_re='^postgres(ql)?://[A-Za-z0-9_.-]+(:[^@/]*)?@(localhost|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[::1\])(:[0-9]{1,5})?$'
    [[ "$PG_SERVER" =~ $pg_re ]] ||
        die "refusing PG_SERVER=$PG_SERVER: expected postgres://USER[:PASSWORD]@127.0.0.1[:PORT] (loopback, no database)"
}

# --- Load generator ----------------------------------------------------------------------
ensure_oha() {
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    if ! command -v oha >/dev/null; then
        command -v cargo >/dev/null || die "oha is not installed and cargo is not available to install it"
        echo "$PROG: oha not found; installing it with 'cargo install oha --locked' (a few minutes)" >&2
        cargo install oha --locked >&2
        command -v oha >/dev/null || die "oha still not on PATH after cargo install"
    fi
    # oha >= 1.5 writes JSON with --output-format json; older releases had --json.
    if oha --help 2>/dev/null | grep -q -- '--output-format'; then
        OHA_JSON=(--output-format json)
    else
        OHA_JSON=(--json)
    fi
}

# run_oha DURATION OUT ARGS...: a closed loop of $CONNECTIONS keep-alive connections for
# DURATION. oha stops at its deadline on its own; the outer timeout (a minute more) only
# guards against a hung load generator.
run_oha() {
    local duration="$1" out="$2" secs
    shift 2
    secs="$(duration_secs DURATION "$duration")" || exit 1
    timeout --foreground --kill-after=10 "$(python3 -c 'import math, sys; print(math.ceil(float(sys.argv[1])) + 60)' "$secs")" \
        oha -z "$duration" -c "$CONNECTIONS" --no-tui "${OHA_JSON[@]}" "$@" >"$out"
}

# --- Results -----------------------------------------------------------------------------
# requests/s counts responses received (any status) over the run; oha's own requestsPerSec
# also counts the requests it aborts at the deadline. Latencies are over all responses.
# "errors" are transport errors (refused, reset, timed out), not counting those aborts; each
# kind is also printed on stderr.
oha_summary() {
    python3 - "$PROG" "$1" "$2" <<'PY'
import json, sys

prog, path, label = sys.argv[1:4]
try:
    with open(path) as f:
        r = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"{prog}: {label}: no oha JSON in {path} (interrupted?): {e}")
codes = {int(k): v for k, v in r.get("statusCodeDistribution", {}).items()}
responses = sum(codes.values())
non_2xx = sum(v for k, v in codes.items() if not 200 <= k < 300)
errors = sum(v for k, v in r.get("errorDistribution", {}).items()
             if k != "aborted due to deadline")
secs = r["summary"]["total"]
pct = r.get("latencyPercentiles", {})
ms = lambda p: pct[p] * 1000 if pct.get(p) is not None else None
for k, v in sorted(r.get("errorDistribution", {}).items()):
    if k != "aborted due to deadline":
        print(f"{prog}: {label}: {v} x {k}", file=sys.stderr)
print(json.dumps({
    "label": label,
    "requests_per_second": responses / secs if secs else 0.0,
    "p50_ms": ms("p50"),
    "p99_ms": ms("p99"),
    "non_2xx": non_2xx,
    "errors": errors,
    "responses": responses,
    "seconds": secs,
    "status_codes": {str(k): v for k, v in sorted(codes.items())},
}))
PY
}

print_table() {
    python3 - "$@" <<'PY'
import json, sys

first, lines = sys.argv[1], sys.argv[2:]
ms = lambda v: "-" if v is None else f"{v:.2f}"
rows = []
for line in lines:
    s = json.loads(line)
    rows.append((s["label"], f"{s['requests_per_second']:.0f}", ms(s["p50_ms"]),
                 ms(s["p99_ms"]), str(s["non_2xx"]), str(s["errors"])))
head = (first, "requests/s", "p50 ms", "p99 ms", "non-2xx", "errors")
widths = [max(len(row[c]) for row in rows + [head]) for c in range(len(head))]
fmt = lambda row: "  ".join(
    cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
print(fmt(head))
for row in rows:
    print(fmt(row))
PY
}

# invalid_runs LINE...: figures taken on an error path are no figures; names each oha_summary
# line with non-2xx responses or transport errors (prints nothing when there are none).
invalid_runs() {
    python3 -c '
import json, sys
for line in sys.argv[1:]:
    s = json.loads(line)
    if s["non_2xx"] or s["errors"]:
        print("%s: %d non-2xx, %d errors" % (s["label"], s["non_2xx"], s["errors"]))
' "$@"
}

# bench_facts: what the results record about where they were taken. BENCH_COMMIT is $root's
# (with "-dirty" for uncommitted changes to tracked files).
bench_facts() {
    BENCH_COMMIT="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [[ "$BENCH_COMMIT" != unknown && -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
        BENCH_COMMIT+="-dirty"
    fi
    BENCH_PG="$(pg "$PG_SERVER/postgres" -c 'show server_version' 2>/dev/null || echo unknown)"
    BENCH_CPUS="$(nproc 2>/dev/null || echo unknown)"
    BENCH_CPU_MODEL="$(sed -n '/^model name/{s/^model name[[:space:]]*: //p;q}' /proc/cpuinfo 2>/dev/null || true)"
    BENCH_CPU_MODEL="${BENCH_CPU_MODEL:-unknown}"
    BENCH_OHA="$(oha --version 2>/dev/null || echo "not installed")"
    export BENCH_COMMIT BENCH_PG BENCH_CPUS BENCH_CPU_MODEL BENCH_OHA
}
