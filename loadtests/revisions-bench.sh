#!/usr/bin/env bash
# "No regression" figures: GET /v1/me and GET /v1/tasks/{id} served by two builds of Keel,
# BASE (before a change) and HEAD (after it), measured side by side in one run:
#
#   loadtests/revisions-bench.sh BASE [HEAD]
#
# BASE and HEAD are git revisions (anything `git rev-parse` takes: ad8381a, main~1, v1.2);
# HEAD defaults to the HEAD commit, and `.` means the working tree as it is, uncommitted
# changes included. Instead of a revision, a side can be a binary already built:
# BASE_BIN=path and/or HEAD_BIN=path; the arguments then name only the other sides, BASE
# first (with both knobs set, none).
#
# Each revision is built in release in a git worktree of its own (outside the repository, so
# that the working tree's .cargo/config.toml cannot leak into it), with a target directory
# shared by all revisions (target/revisions/target: after the first build only what differs
# is compiled); the binary is kept as target/revisions/keel-<sha> and reused by later runs,
# and the worktree removed. `.` with uncommitted changes is built in place (cargo build
# --release, target/). The script then seeds ONE small scratch database with BASE's `keel
# seed` (BASE's migrations), applies HEAD's migrations with HEAD's `keel migrate` (`keel
# serve` does not migrate), and ROUNDS times, for BASE and HEAD in turn (BASE first in odd
# rounds, HEAD first in even ones), starts `keel serve` on loopback ports, logs in as the
# largest project's owner, warms each endpoint up and measures it with oha, and stops the
# server. It prints a table per endpoint (every run), the medians per build and HEAD/BASE
# ratios of the median req/s and p99; the same results go to $OUT_DIR as JSON and Markdown.
# On exit, even on an error or Ctrl-C, it stops the server, removes a worktree it was
# building in and drops the database (unless KEEP=1). See loadtests/README.md.
#
# Knobs (environment):
#   BASE_BIN     a keel binary to use as BASE instead of building a revision   (default none)
#   HEAD_BIN     a keel binary to use as HEAD instead of building a revision   (default none)
#   ROUNDS       rounds of the two builds (1..20)                (default 3)
#   DURATION     measured run per endpoint, at most 10m          (default 10s)
#   WARMUP       warm-up per endpoint, 0 = none                  (default 3s)
#   CONNECTIONS  concurrent connections                          (default 16)
#   TASKS        tasks to seed                                   (default 20000)
#   SEED         the seed's random seed                          (default 42)
#   DATABASE     scratch database, DROPPED at start and at exit  (default keel_rev_bench)
#   HTTP_PORT    loopback port of the public API                 (default 18580)
#   ADMIN_PORT   loopback port of the admin listener             (default 19590)
#   PG_SERVER    Postgres, loopback only, without a database     (default postgres://postgres@127.0.0.1:5432)
#   KEEP         1 = keep the database afterwards                (default 0)
#   OUT_DIR      results (revisions-bench.json/.md) and raw files (default target/bench)
#
# Exits non-zero on an error, including any non-2xx response or transport error during a
# measured run (the results are still written). It judges nothing: the ratios are figures.
set -euo pipefail
# A failing command inside $(...) fails the substitution too (bash >= 4.4).
shopt -s inherit_errexit

PROG="revisions-bench.sh"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=loadtests/lib.sh
source "$here/lib.sh"

BASE_BIN="${BASE_BIN:-}"
HEAD_BIN="${HEAD_BIN:-}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-16}"
TASKS="${TASKS:-20000}"
SEED="${SEED:-42}"
DATABASE="${DATABASE:-keel_rev_bench}"
HTTP_PORT="${HTTP_PORT:-18580}"
ADMIN_PORT="${ADMIN_PORT:-19590}"
PG_SERVER="${PG_SERVER:-postgres://postgres@127.0.0.1:5432}"
KEEP="${KEEP:-0}"
OUT_DIR="${OUT_DIR:-$root/target/bench}"

# Bounds on the steps that are not oha runs (seconds).
READY_TIMEOUT=60
SEED_TIMEOUT=1800
MIGRATE_TIMEOUT=300
STOP_TIMEOUT=30
# Statement timeout of pg (lib.sh): the VACUUM (ANALYZE) after the seed.
PG_STATEMENT_TIMEOUT=300s

# The built revisions: their binaries (keel-<sha>) and the target directory they share.
revisions="$root/target/revisions"
# The worktrees, while they build: outside the repository, because cargo also reads the
# .cargo/config.toml of every parent directory (profiles, rustflags), and the working tree's
# must not shape another revision's build.
worktrees="${TMPDIR:-/tmp}/keel-revisions"

usage="usage: [BASE_BIN=path] [HEAD_BIN=path] loadtests/revisions-bench.sh BASE [HEAD]
  BASE, HEAD: git revisions (HEAD defaults to HEAD; '.' is the working tree, uncommitted
  changes included); a side given by BASE_BIN or HEAD_BIN takes no argument"

require_tools python3 curl psql git timeout sha256sum

# --- Arguments: what BASE and HEAD are ---------------------------------------------------
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    echo "$usage"
    exit 0
fi
args=("$@")
sides=(BASE HEAD)
specs=("" "")
bins=("$BASE_BIN" "$HEAD_BIN")
for i in 0 1; do
    [[ -z "${bins[$i]}" ]] || continue
    if ((${#args[@]})); then
        specs[i]="${args[0]}"
        args=("${args[@]:1}")
    elif ((i == 1)); then
        specs[i]=HEAD
    else
        die "no BASE given
$usage"
    fi
done
((${#args[@]} == 0)) || die "unexpected argument(s): ${args[*]}
$usage"

# resolve_side I: from specs[I] or bins[I], what side I is: kinds[I] (revision, working-tree,
# binary), commits[I] (the full sha; for the working tree, its HEAD's), labels[I].
kinds=("" "")
commits=("" "")
labels=("" "")
resolve_side() {
    local i="$1" side="${sides[$1]}" spec="${specs[$1]}" bin="${bins[$1]}" sha
    if [[ -n "$bin" ]]; then
        [[ -f "$bin" && -x "$bin" ]] || die "${side}_BIN=$bin: not an executable file"
        bins[i]="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
        kinds[i]=binary
        labels[i]="binary ${bins[$i]}"
        return 0
    fi
    [[ -n "$spec" && "$spec" != -* ]] || die "$side=$spec: expected a git revision or '.'"
    if [[ "$spec" == . ]]; then
        sha="$(git -C "$root" rev-parse --verify --quiet 'HEAD^{commit}')" ||
            die "$side=.: $root has no HEAD commit"
        # Untracked files count too: a new module is a change.
        if [[ -n "$(git -C "$root" status --porcelain)" ]]; then
            kinds[i]=working-tree
            commits[i]="$sha"
            labels[i]="working tree (${sha:0:7} + uncommitted changes)"
            return 0
        fi
    else
        sha="$(git -C "$root" rev-parse --verify --quiet "$spec^{commit}")" ||
            die "$side=$spec: not a commit of $root"
    fi
    kinds[i]=revision
    commits[i]="$sha"
    labels[i]="${sha:0:7}"
    if [[ "$spec" == . ]]; then
        labels[i]+=" (the working tree, without changes)"
    elif [[ "$spec" != "${sha:0:${#spec}}" ]]; then
        labels[i]+=" ($spec)"
    fi
}

# --- Knobs -------------------------------------------------------------------------------
check_rounds ROUNDS "$ROUNDS"
check_bench_knobs HTTP_PORT ADMIN_PORT

resolve_side 0
resolve_side 1

prepare_out_dir revisions-bench '*.json' '*.log'
cd "$root"

# --- Clean-up, whatever happens (lib.sh: the server, the database, $scratch) -------------
worktree=""

remove_worktree() {
    git -C "$root" worktree remove --force "$1" 2>/dev/null || rm -rf "$1"
    git -C "$root" worktree prune
}

# After keel serve stops: a worktree still building, a binary half copied.
remove_build_at_exit() {
    if [[ -n "$worktree" ]]; then
        remove_worktree "$worktree" && note "removed the worktree $worktree"
    fi
    rm -f "$revisions"/keel-*.partial.$$
}
on_exit remove_build_at_exit
install_cleanup

# --- The two binaries --------------------------------------------------------------------
# build_revision SHA: sets $keel to the release binary of commit SHA, built once and kept.
build_revision() {
    local sha="$1" kept="$revisions/keel-$1"
    if [[ -x "$kept" ]]; then
        note "${sha:0:7}: the release binary built earlier, $kept"
        keel="$kept"
        return 0
    fi
    command -v cargo >/dev/null || die "cargo is required to build ${sha:0:7}"
    mkdir -p "$worktrees" "$revisions"
    worktree="$worktrees/$sha"
    [[ ! -e "$worktree" ]] || remove_worktree "$worktree"
    git -C "$root" worktree add --quiet --detach "$worktree" "$sha"
    note "${sha:0:7}: building in a worktree; the first revision built compiles every dependency (3-4 minutes on 2 cores)"
    CARGO_TARGET_DIR="$revisions/target" build_keel_in "$worktree"
    cp "$keel" "$kept.partial.$$"
    mv "$kept.partial.$$" "$kept"
    keel="$kept"
    remove_worktree "$worktree"
    worktree=""
}

ensure_oha
check_ports_free HTTP_PORT ADMIN_PORT

# built[I]: where side I's binary is (kept, built or given); binaries[I]: what runs.
built=("" "")
binaries=("" "")
for i in 0 1; do
    case "${kinds[$i]}" in
        revision) build_revision "${commits[$i]}" ;;
        working-tree) build_keel ;;
        binary) keel="${bins[$i]}" ;;
    esac
    built[i]="$keel"
    binaries[i]="$keel"
    if [[ "${kinds[$i]}" != revision ]]; then
        # A private copy: a `cargo build` elsewhere must not swap the binary mid-run.
        binaries[i]="$scratch/keel-${sides[$i]}"
        cp "$keel" "${binaries[$i]}"
    fi
done
digests=("$(sha256sum <"${binaries[0]}" | cut -c1-64)" "$(sha256sum <"${binaries[1]}" | cut -c1-64)")
for i in 0 1; do
    note "${sides[$i]} = ${labels[$i]}: $("${binaries[$i]}" --version), sha256 ${digests[$i]:0:16}"
done
[[ "${digests[0]}" != "${digests[1]}" ]] ||
    note "BASE and HEAD are the same binary: the differences measured are noise"

# --- Database: seeded by BASE, migrated by HEAD ------------------------------------------
applied_migrations() {
    pg "$DB_URL" -c 'select count(*) from _sqlx_migrations where success'
}
seed_scratch_database "${binaries[0]}" "$raw/seed.json"
base_migrations="$(applied_migrations)"
note "applying HEAD's migrations (keel migrate)"
timeout --foreground --kill-after=10 "$MIGRATE_TIMEOUT" \
    env DATABASE_URL="$DB_URL" RUST_LOG=warn "${binaries[1]}" migrate >"$raw/migrate.log" 2>&1 ||
    die "HEAD's keel migrate failed on the database BASE seeded: HEAD lacks a migration BASE has (is HEAD older than BASE?), or one was edited; $(tail -n 5 "$raw/migrate.log")"
head_migrations="$(applied_migrations)"
note "migrations applied: $base_migrations by BASE's seed, $((head_migrations - base_migrations)) more by HEAD"
read_seed_report "$raw/seed.json"
vacuum_scratch_database

# --- Runs --------------------------------------------------------------------------------
endpoint_names=("GET /v1/me" "GET /v1/tasks/{id}")
endpoint_keys=(me task)
task_id=""
records=()
record_endpoints=()
warmup_words="after a $WARMUP warm-up"
[[ "$WARMUP" != 0 ]] || warmup_words="without warm-up"
echo "$PROG: $CONNECTIONS connections, $DURATION per endpoint $warmup_words," \
    "$ROUNDS round(s); $(oha --version)" >&2
for ((round = 1; round <= ROUNDS; round++)); do
    # BASE first in odd rounds, HEAD first in even ones: a drift within a round (the
    # machine's other load, Postgres's caches) does not always favour the same build.
    for position in 0 1; do
        i=$(((position + round - 1) % 2))
        side="${sides[$i]}"
        note "round $round: starting ${side}'s keel serve (${labels[$i]})"
        serve_keel "${binaries[$i]}" "$raw/server-$round-$side.log"

        login_auth "$owner_email" "$password"
        if [[ -z "$task_id" ]]; then
            task_id="$(first_task_id "$project_id" "${auth[@]}")"
            note "GET /v1/tasks/{id} reads the task $task_id (project $project_id)"
        fi
        urls=("$API/v1/me" "$API/v1/tasks/$task_id")
        # One checked request each first: 200 with the caller, 200 with the task.
        [[ "$(json 'd["email"]' "$(http GET "${urls[0]}" "${auth[@]}")")" == "$owner_email" ]] ||
            die "$side: GET /v1/me did not return $owner_email"
        [[ "$(json 'd["id"]' "$(http GET "${urls[1]}" "${auth[@]}")")" == "$task_id" ]] ||
            die "$side: GET /v1/tasks/$task_id did not return the task"

        for e in 0 1; do
            tag="$round-$side-${endpoint_keys[$e]}"
            label="round $round, $side"
            warm_up "$label: ${endpoint_names[$e]}" "$raw/warmup-$tag.json" "${auth[@]}" "${urls[$e]}"
            note "measuring $label: ${endpoint_names[$e]}"
            run_oha "$DURATION" "$raw/result-$tag.json" "${auth[@]}" "${urls[$e]}"
            alive "$server_pid" || die "${side}'s keel serve died during $label; see $raw/server-$round-$side.log"
            summary="$(oha_summary "$raw/result-$tag.json" "$label")"
            records+=("$(json "dict(d, round=$round, side='$side', position=$((position + 1)),
                endpoint='${endpoint_keys[$e]}')" "$summary")")
            record_endpoints+=("$e")
        done
        stop_server || note "${side}'s keel serve had to be killed"
    done
done

# --- Results -----------------------------------------------------------------------------
echo
for i in 0 1; do
    echo "${sides[$i]}: ${labels[$i]}"
done
bad=""
for e in 0 1; do
    rows=()
    for j in "${!records[@]}"; do
        if [[ "${record_endpoints[$j]}" == "$e" ]]; then
            rows+=("${records[$j]}")
        fi
    done
    echo
    print_table "${endpoint_names[$e]}" "${rows[@]}"
    invalid="$(invalid_runs "${rows[@]}" | sed "s|^|${endpoint_names[$e]}, |")"
    [[ -z "$invalid" ]] || bad+="$invalid"$'\n'
done

side_json() {
    python3 -c '
import json, sys
keys = ["side", "kind", "given", "commit", "label", "binary", "sha256", "version"]
print(json.dumps({k: (v or None) for k, v in zip(keys, sys.argv[1:])}))' \
        "${sides[$1]}" "${kinds[$1]}" "${specs[$1]:-${bins[$1]}}" "${commits[$1]}" "${labels[$1]}" \
        "${built[$1]}" "${digests[$1]}" "$("${binaries[$1]}" --version)"
}
invocation=""
for i in 0 1; do
    [[ -z "${bins[$i]}" ]] || invocation+="${sides[$i]}_BIN=$(printf '%q' "${bins[$i]}") "
done
invocation+="loadtests/revisions-bench.sh"
for i in 0 1; do
    [[ -z "${specs[$i]}" ]] || invocation+=" $(printf '%q' "${specs[$i]}")"
done

bench_facts
BENCH_BASE="$(side_json 0)" BENCH_HEAD="$(side_json 1)" BENCH_INVOCATION="$invocation" \
    BENCH_TASKS="$TASKS" BENCH_SEED="$SEED" BENCH_DURATION="$DURATION" BENCH_WARMUP="$WARMUP" \
    BENCH_CONNECTIONS="$CONNECTIONS" BENCH_ROUNDS="$ROUNDS" BENCH_TASK_ID="$task_id" \
    BENCH_MIGRATIONS="$base_migrations $head_migrations" BENCH_WARMUP_WORDS="$warmup_words" \
    BENCH_OUT="$OUT_DIR" \
    python3 - "${records[@]}" <<'PY'
import datetime, json, os, statistics, sys

env = os.environ
runs = [json.loads(line) for line in sys.argv[1:]]
builds = {"BASE": json.loads(env["BENCH_BASE"]), "HEAD": json.loads(env["BENCH_HEAD"])}
endpoints = {"me": "GET /v1/me", "task": "GET /v1/tasks/{id}"}
rounds = int(env["BENCH_ROUNDS"])


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(head, base):
    return head / base if head is not None and base else None


summary = {}
for key, name in endpoints.items():
    per = {side: [r for r in runs if r["endpoint"] == key and r["side"] == side]
           for side in builds}
    med = {side: {m: median(r[m] for r in rs) for m in ("requests_per_second", "p50_ms", "p99_ms")}
           for side, rs in per.items()}
    for side, rs in per.items():
        rps = [r["requests_per_second"] for r in rs]
        med[side].update(min_requests_per_second=min(rps), max_requests_per_second=max(rps))
    by_round = {side: {r["round"]: r for r in rs} for side, rs in per.items()}
    summary[key] = {
        "endpoint": name,
        "median": med,
        "head_over_base": {
            "requests_per_second": ratio(med["HEAD"]["requests_per_second"],
                                         med["BASE"]["requests_per_second"]),
            "p99_ms": ratio(med["HEAD"]["p99_ms"], med["BASE"]["p99_ms"]),
        },
        "head_over_base_requests_per_second_by_round": [
            ratio(by_round["HEAD"][n]["requests_per_second"],
                  by_round["BASE"][n]["requests_per_second"])
            for n in range(1, rounds + 1)],
    }

ms = lambda v: "-" if v is None else f"{v:.2f}"
times = lambda v: "n/a" if v is None else f"{v:.3f}"
pct = lambda v: "" if v is None else f"({(v - 1) * 100:+.1f} %)"

# The medians and the ratios, aligned.
rows = [("median of %d round%s" % (rounds, "" if rounds == 1 else "s"), "build", "requests/s",
         "p50 ms", "p99 ms")]
for key, s in summary.items():
    for n, side in enumerate(builds):
        m = s["median"][side]
        rows.append((s["endpoint"] if n == 0 else "", side, f"{m['requests_per_second']:.0f}",
                     ms(m["p50_ms"]), ms(m["p99_ms"])))
    h = s["head_over_base"]
    rows.append(("", "HEAD/BASE", f"{times(h['requests_per_second'])} {pct(h['requests_per_second'])}",
                 "", f"{times(h['p99_ms'])} {pct(h['p99_ms'])}"))
widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
print()
for r in rows:
    print("  ".join(cell.ljust(w) if c < 2 else cell.rjust(w)
                    for c, (cell, w) in enumerate(zip(r, widths))).rstrip())
if rounds > 1:
    print()
    for s in summary.values():
        print(f"HEAD/BASE req/s by round, {s['endpoint']}: " + ", ".join(
            times(v) for v in s["head_over_base_requests_per_second_by_round"]))
base_migrations, head_migrations = map(int, env["BENCH_MIGRATIONS"].split())
same_binary = builds["BASE"]["sha256"] == builds["HEAD"]["sha256"]
conditions = (f"{env['BENCH_CPUS']} CPUs ({env['BENCH_CPU_MODEL']}) shared by keel, Postgres "
              f"{env['BENCH_PG']} and the load generator ({env['BENCH_OHA']})")
print()
if same_binary:
    print("note: BASE and HEAD are the same binary; the differences are noise")
print("conditions: " + conditions)

knobs = {k: env[f"BENCH_{k.upper()}"]
         for k in ("tasks", "seed", "duration", "warmup", "connections", "rounds")}
for k in ("tasks", "seed", "connections", "rounds"):
    knobs[k] = int(knobs[k])
r1 = lambda v: None if v is None else round(v, 1)
r3 = lambda v: None if v is None else round(v, 3)
result = {
    "benchmark": "loadtests/revisions-bench.sh",
    "invocation": env["BENCH_INVOCATION"],
    "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "harness_commit": env["BENCH_COMMIT"],
    "base": builds["BASE"],
    "head": builds["HEAD"],
    "same_binary": same_binary,
    "migrations": {"applied_by_base_seed": base_migrations,
                   "added_by_head": head_migrations - base_migrations},
    "host": {"cpus": env["BENCH_CPUS"], "cpu_model": env["BENCH_CPU_MODEL"],
             "postgres": env["BENCH_PG"], "load_generator": env["BENCH_OHA"]},
    "knobs": knobs,
    "task_id": env["BENCH_TASK_ID"],
    "endpoints": [
        {
            "endpoint": s["endpoint"],
            "median": {side: {k: (r1(v) if "requests" in k else r3(v)) for k, v in m.items()}
                       for side, m in s["median"].items()},
            "head_over_base": {k: r3(v) for k, v in s["head_over_base"].items()},
            "head_over_base_requests_per_second_by_round":
                [r3(v) for v in s["head_over_base_requests_per_second_by_round"]],
        }
        for s in summary.values()
    ],
    "runs": [
        {"round": r["round"], "position": r["position"], "build": r["side"],
         "endpoint": endpoints[r["endpoint"]],
         "requests_per_second": r1(r["requests_per_second"]),
         "p50_ms": r3(r["p50_ms"]), "p99_ms": r3(r["p99_ms"]),
         "non_2xx": r["non_2xx"], "errors": r["errors"], "responses": r["responses"],
         "seconds": round(r["seconds"], 3)}
        for r in runs
    ],
}
out = env["BENCH_OUT"]
with open(f"{out}/revisions-bench.json", "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

md = [
    "| endpoint | BASE req/s | HEAD req/s | HEAD/BASE req/s | BASE p99 ms | HEAD p99 ms | HEAD/BASE p99 |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
]
for s in summary.values():
    b, h, q = s["median"]["BASE"], s["median"]["HEAD"], s["head_over_base"]
    md.append(f"| {s['endpoint']} | {b['requests_per_second']:,.0f} | {h['requests_per_second']:,.0f} "
              f"| {times(q['requests_per_second'])} | {ms(b['p99_ms'])} | {ms(h['p99_ms'])} "
              f"| {times(q['p99_ms'])} |")
md += ["", f"BASE: {builds['BASE']['label']}. HEAD: {builds['HEAD']['label']}."
       + (" The same binary: the differences are noise." if same_binary else ""), "",
       "| endpoint | round | build | req/s | p50 ms | p99 ms | non-2xx | errors |",
       "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
for key in endpoints:
    for r in (r for r in runs if r["endpoint"] == key):
        md.append(f"| {endpoints[key]} | {r['round']} | {r['side']} | {r['requests_per_second']:,.0f} "
                  f"| {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | {r['non_2xx']} | {r['errors']} |")
md += [
    "",
    f"`{env['BENCH_INVOCATION']}`, TASKS={knobs['tasks']}: medians of {rounds} round(s), the builds "
    f"alternating (BASE first in odd rounds), a fresh `keel serve` per build and round, "
    f"{knobs['connections']} connections, {knobs['duration']} per endpoint "
    f"{env['BENCH_WARMUP_WORDS']}; {conditions}; {result['generated_at']}.",
]
with open(f"{out}/revisions-bench.md", "w") as f:
    f.write("\n".join(md) + "\n")
print()
print(f"results: {out}/revisions-bench.json, {out}/revisions-bench.md "
      f"(raw oha JSON and server logs: {out}/revisions-bench/)")
PY

# Figures taken on an error path are no figures: fail the run (after writing them).
die_if_invalid "$bad"
