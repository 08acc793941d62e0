-- The workshop fix flags, shared by every instance. The rows are registered by the
-- service at start-up (`keel::flags::Flag::ALL`), so adding a flag is a code change only.
create table fix_flags (
    name       text        primary key check (name ~ '^[a-z][a-z_]{0,62}$'),
    enabled    boolean     not null default true,
    updated_at timestamptz not null default now()
);

-- Every change, from the admin API or from psql during a workshop, wakes each
-- instance's flag refresher at once (polling is the fallback when the LISTEN
-- connection is down).
create function fix_flags_notify() returns trigger
language plpgsql as $$
begin
    perform pg_notify('keel_fix_flags', new.name);
    return null;
end;
$$;

create trigger fix_flags_changed
    after insert or update on fix_flags
    for each row execute function fix_flags_notify();
