-- Idempotency keys (the guardrails issue): the first response of each create that carried
-- an `Idempotency-Key`, kept for KEEL_IDEMPOTENCY_TTL so that a retry with the same key
-- gets that response back instead of creating a second resource.
--
-- A row is written in the transaction of the create it answers, never on its own: it
-- exists exactly when the created row does. So a table of finished answers only — there
-- is no "in progress" state to clean up after a crash; a request that is still running
-- holds a transaction-scoped advisory lock on its (caller, key) instead (see
-- src/db/idempotency.rs).
create table idempotency_keys (
    -- Whose key: `user:<uuid>` for an authenticated caller, `ip:<address>` for an
    -- anonymous one (sign-up). The same key from two callers is two keys.
    caller      text        not null check (char_length(caller) between 1 and 100),
    key         text        not null check (char_length(key) between 1 and 255),
    -- SHA-256 of the request's method, path and body: the same key with another request
    -- is refused (422) rather than answered with a response to a different request.
    fingerprint bytea       not null check (octet_length(fingerprint) = 32),
    -- The first response, replayed byte for byte: its status, `Location` and JSON body.
    status      smallint    not null check (status between 200 and 299),
    location    text,
    body        bytea       not null,
    created_at  timestamptz not null default now(),
    -- Past this the row is treated as absent, and overwritten by the next use of the key.
    expires_at  timestamptz not null,
    primary key (caller, key)
);

-- Serves the pruner: `delete ... where expires_at <= now() ... limit $1`.
create index idempotency_keys_expires_at_idx on idempotency_keys (expires_at);
