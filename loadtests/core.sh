#!/usr/bin/env bash
# Load test of Keel's core read endpoints: GET /v1/me and GET /v1/projects/{id}.
#
# Needs a running Keel (see loadtests/README.md). Logs in, finds a project, warms up, then
# drives each endpoint with oha for DURATION at CONNECTIONS concurrent connections and
# prints one table. Traffic goes only to the loopback host named in KEEL_API.
#
# Knobs (environment):
#   KEEL_API            base URL of the public API      (default http://127.0.0.1:8080)
#   KEEL_LOAD_EMAIL     login email                     (default demo@keel.dev)
#   KEEL_LOAD_PASSWORD  login password                  (default keel-demo-password)
#   DURATION            measured run per endpoint       (default 15s)
#   CONNECTIONS         concurrent connections          (default 32)
#   WARMUP              warm-up per endpoint, 0 = none  (default 3s)
#   OUT_DIR             keep oha's raw JSON here        (default: a temp dir, deleted)
set -euo pipefail

KEEL_API="${KEEL_API:-http://127.0.0.1:8080}"
KEEL_LOAD_EMAIL="${KEEL_LOAD_EMAIL:-demo@keel.dev}"
KEEL_LOAD_PASSWORD="${KEEL_LOAD_PASSWORD:-keel-demo-password}"
DURATION="${DURATION:-15s}"
CONNECTIONS="${CONNECTIONS:-32}"
WARMUP="${WARMUP:-3s}"

die() {
    echo "core.sh: $*" >&2
    exit 1
}

command -v python3 >/dev/null || die "python3 is required (it parses the JSON)"
command -v curl >/dev/null || die "curl is required"

# --- Knobs -------------------------------------------------------------------------------
# oha takes durations such as 500ms, 15s, 2m; bound them so that a typo cannot run for hours.
duration_secs() {
    python3 - "$1" "$2" <<'PY'
import re, sys
name, value = sys.argv[1], sys.argv[2]
m = re.fullmatch(r"(\d+)(ms|s|m)", value)
if not m:
    sys.exit(f"core.sh: {name}={value!r}: expected a duration such as 15s, 500ms or 2m")
secs = int(m[1]) * {"ms": 0.001, "s": 1, "m": 60}[m[2]]
if secs > 600:
    sys.exit(f"core.sh: {name}={value!r}: at most 10m")
print(secs)
PY
}
duration_secs DURATION "$DURATION" >/dev/null
[[ "$DURATION" != 0* ]] || die "DURATION must be positive"
if [[ "$WARMUP" != "0" ]]; then
    duration_secs WARMUP "$WARMUP" >/dev/null
fi
[[ "$CONNECTIONS" =~ ^[1-9][0-9]{0,3}$ ]] || die "CONNECTIONS=$CONNECTIONS: expected 1..9999"

# --- Target: loopback only ---------------------------------------------------------------
# Accept http(s)://HOST[:PORT][/] where HOST is localhost, 127.x.y.z or [::1]; nothing else
# (no user-info, no path), so that the load can never leave this machine.
KEEL_API="${KEEL_API%/}"
loopback_re='^https?://(localhost|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[::1\])(:[0-9]{1,5})?$'
if [[ ! "$KEEL_API" =~ $loopback_re ]]; then
    die "refusing KEEL_API=$KEEL_API: this harness sends load only to this machine.
Give a loopback base URL with no path: http://127.0.0.1:PORT, http://localhost:PORT or http://[::1]:PORT."
fi

# --- Load generator ----------------------------------------------------------------------
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! command -v oha >/dev/null; then
    command -v cargo >/dev/null || die "oha is not installed and cargo is not available to install it"
    echo "core.sh: oha not found; installing it with 'cargo install oha --locked' (a few minutes)" >&2
    cargo install oha --locked >&2
    command -v oha >/dev/null || die "oha still not on PATH after cargo install"
fi
# oha >= 1.5 writes JSON with --output-format json; older releases had --json.
if oha --help 2>/dev/null | grep -q -- '--output-format'; then
    oha_json=(--output-format json)
else
    oha_json=(--json)
fi

if [[ -n "${OUT_DIR:-}" ]]; then
    mkdir -p "$OUT_DIR"
    work="$OUT_DIR"
else
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
fi

# --- Token and project -------------------------------------------------------------------
# A short, bounded request; prints the body, fails with the status and body otherwise.
call() {
    local method="$1" path="$2" body_file="$work/response.json" status
    shift 2
    status="$(curl -sS --max-time 10 -o "$body_file" -w '%{http_code}' -X "$method" \
        "$@" "$KEEL_API$path")" || die "$method $KEEL_API$path failed (is Keel running?)"
    if [[ "$status" != 2* ]]; then
        die "$method $path answered $status: $(head -c 500 "$body_file")"
    fi
    cat "$body_file"
}

login_body="$(python3 -c 'import json, sys; print(json.dumps({"email": sys.argv[1], "password": sys.argv[2]}))' \
    "$KEEL_LOAD_EMAIL" "$KEEL_LOAD_PASSWORD")"
token_json="$(call POST /v1/auth/token -H 'content-type: application/json' --data-binary "$login_body")"
token="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["access_token"])' "$token_json")" ||
    die "no access_token in the response of POST /v1/auth/token"
auth=(-H "authorization: Bearer $token")

projects_json="$(call GET '/v1/projects?limit=1' "${auth[@]}")"
project_id="$(python3 -c '
import json, sys
items = json.loads(sys.argv[1]).get("items") or []
if not items:
    sys.exit("core.sh: GET /v1/projects listed no project for this user; log in as a member of one")
print(items[0]["id"])' "$projects_json")"
[[ "$project_id" =~ ^[0-9a-fA-F-]{36}$ ]] || die "unexpected project id: $project_id"

endpoints=("/v1/me" "/v1/projects/$project_id")
labels=("GET /v1/me" "GET /v1/projects/{id}")

# Each endpoint must answer 200 once before it is loaded.
for path in "${endpoints[@]}"; do
    call GET "$path" "${auth[@]}" >/dev/null
done

# --- Warm-up and measurement -------------------------------------------------------------
run_oha() {
    local duration="$1" path="$2" out="$3"
    oha -z "$duration" -c "$CONNECTIONS" --no-tui "${oha_json[@]}" \
        "${auth[@]}" "$KEEL_API$path" >"$out"
}

echo "Keel at $KEEL_API; $CONNECTIONS connections, $DURATION per endpoint, warm-up $WARMUP; $(oha --version)" >&2
for i in "${!endpoints[@]}"; do
    if [[ "$WARMUP" != "0" ]]; then
        echo "  warm-up   ${labels[$i]}" >&2
        run_oha "$WARMUP" "${endpoints[$i]}" "$work/warmup-$i.json"
    fi
    echo "  measuring ${labels[$i]}" >&2
    run_oha "$DURATION" "${endpoints[$i]}" "$work/result-$i.json"
done

# --- Table -------------------------------------------------------------------------------
# requests/s counts responses received (any status) over the run; oha's own requestsPerSec
# also counts the requests it aborts at the deadline. Latencies are over all responses.
# "errors" are transport errors (refused, reset, timed out), not counting those aborts.
python3 - "$work" "${labels[@]}" <<'PY'
import json, sys

work, labels = sys.argv[1], sys.argv[2:]
rows = []
for i, label in enumerate(labels):
    with open(f"{work}/result-{i}.json") as f:
        r = json.load(f)
    codes = {int(k): v for k, v in r.get("statusCodeDistribution", {}).items()}
    responses = sum(codes.values())
    non_2xx = sum(v for k, v in codes.items() if not 200 <= k < 300)
    errors = sum(v for k, v in r.get("errorDistribution", {}).items()
                 if k != "aborted due to deadline")
    secs = r["summary"]["total"]
    pct = r.get("latencyPercentiles", {})
    ms = lambda p: f"{pct[p] * 1000:.2f}" if pct.get(p) is not None else "-"
    rows.append((label, f"{responses / secs:.0f}", ms("p50"), ms("p99"),
                 str(non_2xx), str(errors)))
    for k, v in sorted(r.get("errorDistribution", {}).items()):
        if k != "aborted due to deadline":
            print(f"core.sh: {label}: {v} x {k}", file=sys.stderr)

head = ("endpoint", "requests/s", "p50 ms", "p99 ms", "non-2xx", "errors")
widths = [max(len(row[c]) for row in rows + [head]) for c in range(len(head))]
fmt = lambda row: "  ".join(
    cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
print(fmt(head))
for row in rows:
    print(fmt(row))
PY
