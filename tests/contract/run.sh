#!/usr/bin/env bash
# Contract fuzzing: starts Keel against a database of its own and fuzzes the live
# /openapi.json with schemathesis — every check, signed in as two users so that the
# object-level authorization check runs too. Exits non-zero on any failure: a 5xx, a
# response that breaks the documented schema, an undocumented status, …
#
#   tests/contract/run.sh [seconds]     (default 120; CONTRACT_FUZZ_SECONDS also works)
#
# Needs Postgres (KEEL_TEST_DATABASE_URL, default the local maintenance database),
# python3 and psql. schemathesis is installed, pinned, by .ci/python-tools.
set -euo pipefail

cd "$(dirname "$0")/../.."
max_time=${1:-${CONTRACT_FUZZ_SECONDS:-120}}
tools=$(.ci/python-tools)
maintenance=${KEEL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
database=keel_contract_$(date +%s)_$$
log=target/contract-fuzz-server.log

cargo build --quiet --bin keel
read -r http_port admin_port < <(python3 -c '
import socket
ports = []
for _ in range(2):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); ports.append(s.getsockname()[1]); s.close()
print(*ports)')
api=http://127.0.0.1:$http_port

server=
# The run's own names on the shared Redis and RabbitMQ, and its own mailbox.
redis_prefix="keel-contract:$database:"
amqp_prefix="keel-contract.$database."
root=$(pwd)
mailbox=$root/target/contract-mailbox
cleanup() {
    if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    psql -q "$maintenance" -c "drop database if exists \"$database\" with (force)" || true
    KEEL_ENV=dev KEEL_AMQP_PREFIX="$amqp_prefix" "$root/target/debug/keel" jobs delete-topology >/dev/null 2>&1 || true
    if command -v redis-cli >/dev/null; then
        redis-cli --scan --pattern "$redis_prefix*" | xargs -r redis-cli del >/dev/null || true
    fi
    rm -rf "$mailbox"
}
trap cleanup EXIT

DATABASE_URL="${maintenance%/*}/$database" \
KEEL_ENV=dev \
KEEL_REDIS_PREFIX="$redis_prefix" \
KEEL_AMQP_PREFIX="$amqp_prefix" \
KEEL_MAILBOX_DIR="$mailbox" \
KEEL_RATE_LIMIT_TOKEN_IP=100000/1s \
KEEL_RATE_LIMIT_TOKEN_EMAIL=100000/1s \
KEEL_RATE_LIMIT_SIGNUP_IP=100000/1s \
KEEL_RATE_LIMIT_USER=100000/1s \
KEEL_RATE_LIMIT_ANON=100000/1s \
KEEL_HTTP_ADDR=127.0.0.1:$http_port \
KEEL_ADMIN_ADDR=127.0.0.1:$admin_port \
RUST_LOG=${RUST_LOG:-warn} \
    ./target/debug/keel all >"$log" 2>&1 &
server=$!

for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$admin_port/readyz" >/dev/null && break
    kill -0 "$server" 2>/dev/null || { echo "keel exited; see $log" >&2; cat "$log" >&2; exit 1; }
    sleep 0.5
done
curl -sf "http://127.0.0.1:$admin_port/readyz" >/dev/null || { echo "keel not ready after 60 s" >&2; exit 1; }

# The two identities of tests/contract/auth.yaml.
for who in alice bob; do
    status=$(curl -s -o /dev/null -w '%{http_code}' "$api/v1/users" -H 'content-type: application/json' \
        -d "{\"email\":\"fuzz-$who@keel.dev\",\"name\":\"Fuzz $who\",\"password\":\"contract-fuzzing-password\"}")
    [ "$status" = 201 ] || { echo "could not sign up fuzz-$who: HTTP $status" >&2; exit 1; }
done

cd tests/contract
# The budgets above are far past what a fuzzing run sends: it checks the contract of
# every operation, and a spent budget would answer all of them with 429 (and the sign-in
# of its two identities too). The limits' own contract is tested in
# tests/api/rate_limit.rs. hooks.py gives each well-formed Idempotency-Key a fresh value.
SCHEMATHESIS_HOOKS="$root/tests/contract/hooks.py" "$tools/schemathesis" --config-file schemathesis.toml run "$api/openapi.json" \
    --max-time "$max_time" \
    --phases examples,coverage,fuzzing,stateful \
    --seed "${CONTRACT_FUZZ_SEED:-$RANDOM}" \
    --report junit --report-dir ../../target/contract-fuzz-report
