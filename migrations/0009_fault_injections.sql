-- The workshop's fault switches (issue 14): an added latency and a share of failing calls
-- per dependency, shared by every instance like the fix flags. One row per dependency,
-- inserted here: the set of dependencies is fixed by the code that injects the faults
-- (`keel::resilience::Dependency`), so unlike the flags there is nothing to register at
-- start-up. `{0, 0}` is "no fault".
create table fault_injections (
    dependency text             primary key
                                check (dependency in ('postgres', 'redis', 'rabbitmq', 'smtp')),
    latency_ms integer          not null default 0 check (latency_ms between 0 and 10000),
    error_rate double precision not null default 0 check (error_rate >= 0 and error_rate <= 1),
    updated_at timestamptz      not null default now()
);

insert into fault_injections (dependency)
values ('postgres'), ('redis'), ('rabbitmq'), ('smtp');

-- Every change, from the admin API or from psql during a workshop, wakes each instance's
-- refresher at once. The same channel as the fix flags: one refresher (and one LISTEN
-- connection) per instance reloads both on any notification, and polls both as the
-- fallback. The payload only tells the two apart for someone listening in psql.
create function fault_injections_notify() returns trigger
language plpgsql as $$
begin
    perform pg_notify('keel_fix_flags', 'fault:' || new.dependency);
    return null;
end;
$$;

create trigger fault_injections_changed
    after insert or update on fault_injections
    for each row execute function fault_injections_notify();
