-- Secondary indexes and foreign keys that were dropped on purpose, with the exact DDL
-- that recreates them (pg_get_indexdef / pg_get_constraintdef at the time of the drop):
--   * `keel workshop drop-indexes` drops the non-key indexes for the "missing index"
--     exercise; `keel workshop restore-indexes` recreates them from here;
--   * `keel seed` drops indexes and foreign keys before a bulk load and restores them
--     after it (building an index once is several times faster than maintaining it row
--     by row). Should a seed die half-way, `keel workshop restore-indexes` restores
--     whatever it left here.
create table dropped_schema_objects (
    name       text        primary key,
    kind       text        not null check (kind in ('index', 'foreign_key')),
    table_name text        not null,
    definition text        not null,
    dropped_at timestamptz not null default now()
);
