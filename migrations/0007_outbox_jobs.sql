-- Background work (the jobs issue): the transactional outbox, the records that make the
-- worker's handlers idempotent, and the per-project stats the worker computes.

-- A job, written in the same transaction as the write that caused it, so that the job
-- exists exactly when the write does. The relay publishes committed rows to RabbitMQ and
-- marks them; published rows are pruned after KEEL_OUTBOX_RETENTION.
create table outbox (
    -- UUIDv7: the relay publishes in id order, which is about the order of the writes.
    id            uuid        primary key,
    kind          text        not null check (char_length(kind) between 1 and 100),
    payload       jsonb       not null,
    -- The W3C trace context of the request that wrote the job (`traceparent`,
    -- `tracestate`), so that the publish, the consume and the send join its trace.
    trace_context jsonb       not null default '{}',
    -- The writer's transaction id. `stats.recompute` skips a job whose transaction the
    -- last computation's snapshot already saw (see jobs/kinds/stats.rs).
    writer_xid    xid8        not null default pg_current_xact_id(),
    -- Publish attempts that failed (a nack, an unroutable message, Redis down for an
    -- invalidation), the last reason, and when the row may be tried again: a failing row
    -- backs off instead of being claimed first on every pass, ahead of the healthy ones.
    attempts      integer     not null default 0,
    last_error    text,
    available_at  timestamptz not null default now(),
    created_at    timestamptz not null default now(),
    published_at  timestamptz
);

-- Serves the relay's claim: `where published_at is null and available_at <= now() order
-- by id limit $1 for update skip locked`. Partial, so it holds only the backlog, however big the table grows.
create index outbox_unpublished_idx on outbox (id) where published_at is null;

-- Serves the pruner: `delete ... where published_at < $1`.
create index outbox_published_at_idx on outbox (published_at) where published_at is not null;

-- A committed outbox row wakes the relays at once (NOTIFY is delivered on commit, and
-- not at all on rollback). One notification per statement, not per row: the relay reads
-- the whole backlog whenever it wakes.
create function outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('keel_outbox', '');
    return null;
end;
$$;

create trigger outbox_notify
    after insert on outbox
    for each statement execute function outbox_notify();

-- Jobs whose database effect has been applied, written in the effect's own transaction:
-- a redelivered job finds its id here and does nothing. Pruned after
-- KEEL_JOBS_RECORD_RETENTION.
create table processed_jobs (
    job_id       uuid        primary key,
    kind         text        not null,
    processed_at timestamptz not null default now()
);

-- Serves the pruner.
create index processed_jobs_processed_at_idx on processed_jobs (processed_at);

-- The assignment emails, by the job that sends each. A handler claims its job's row
-- ('sending') before it talks to SMTP and marks it 'sent' after: a redelivery finds 'sent'
-- and sends nothing, and a redelivery that races a send still in flight (the broker hands
-- a message to a new consumer as soon as the old one's connection drops) finds 'sending'
-- and backs off. A claim older than KEEL_JOBS_TIMEOUT belongs to a worker that died, and
-- may be taken over.
create table email_deliveries (
    job_id     uuid        primary key,
    state      text        not null check (state in ('sending', 'sent')),
    recipient  text        not null,
    message_id text        not null,
    claimed_at timestamptz not null default now(),
    sent_at    timestamptz
);

-- Serves the pruner.
create index email_deliveries_claimed_at_idx on email_deliveries (claimed_at);

-- A project's task counts, computed by the worker off the request path.
create table project_stats (
    project_id    uuid        primary key references projects (id) on delete cascade,
    total         bigint      not null,
    todo          bigint      not null,
    doing         bigint      not null,
    done          bigint      not null,
    overdue       bigint      not null,
    computed_at   timestamptz not null,
    -- Every transaction below this id had ended when the counts were taken, so the counts
    -- include its writes (pg_snapshot_xmin of the computation's snapshot).
    computed_xmin xid8        not null
);
