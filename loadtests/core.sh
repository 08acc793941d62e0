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

PROG=core.sh
# shellcheck source=loadtests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v python3 >/dev/null || die "python3 is required (it parses the JSON)"
command -v curl >/dev/null || die "curl is required"

# --- Knobs -------------------------------------------------------------------------------
check_duration DURATION "$DURATION"
check_warmup WARMUP "$WARMUP"
check_connections CONNECTIONS "$CONNECTIONS"

# --- Target: loopback only ---------------------------------------------------------------
KEEL_API="${KEEL_API%/}"
check_loopback_url KEEL_API "$KEEL_API"

# --- Load generator ----------------------------------------------------------------------
ensure_oha

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
echo "Keel at $KEEL_API; $CONNECTIONS connections, $DURATION per endpoint, warm-up $WARMUP; $(oha --version)" >&2
for i in "${!endpoints[@]}"; do
    if [[ "$WARMUP" != "0" ]]; then
        echo "  warm-up   ${labels[$i]}" >&2
        run_oha "$WARMUP" "$work/warmup-$i.json" "${auth[@]}" "$KEEL_API${endpoints[$i]}"
    fi
    echo "  measuring ${labels[$i]}" >&2
    run_oha "$DURATION" "$work/result-$i.json" "${auth[@]}" "$KEEL_API${endpoints[$i]}"
done

# --- Table -------------------------------------------------------------------------------
# (lib.sh: requests/s counts responses received over the run; "errors" are transport errors.)
summaries=()
for i in "${!endpoints[@]}"; do
    summaries+=("$(oha_summary "$work/result-$i.json" "${labels[$i]}")")
done
print_table endpoint "${summaries[@]}"
