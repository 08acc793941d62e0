//! Dropping and restoring secondary indexes and foreign keys, with their exact DDL kept in
//! `dropped_schema_objects` (migration 0005) so that a restore rebuilds precisely what was
//! dropped — the migrations stay the one place where an index is defined.
//!
//! Two users: the workshop's "missing index" exercise (`keel workshop drop-indexes` /
//! `restore-indexes`), and the seeder, which loads data with the indexes and foreign keys
//! out of the way and builds them once afterwards. Both operations are idempotent: what is
//! already dropped is not dropped again, and a restore with nothing recorded does nothing.

use sqlx::{Acquire, PgConnection};

/// The tables whose secondary indexes and foreign keys these operations touch. Primary
/// keys and unique indexes are never dropped: they are correctness, not performance.
pub const DATA_TABLES: [&str; 5] = ["users", "projects", "project_members", "tasks", "comments"];

/// How a restored index is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `CREATE INDEX CONCURRENTLY`: slower, but writes to the table continue meanwhile
    /// (the workshop restores indexes under load).
    Concurrently,
    /// A plain `CREATE INDEX`: faster, blocks writes (the seeder, with no other traffic).
    Blocking,
}

/// Quotes an identifier that came from the catalog.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Records and drops the non-key indexes of the data tables. Returns the dropped names.
pub async fn drop_secondary_indexes(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    let tables: Vec<String> = DATA_TABLES.iter().map(|t| t.to_string()).collect();
    let mut tx = conn.begin().await?;
    let names = sqlx::query_scalar!(
        r#"insert into dropped_schema_objects (name, kind, table_name, definition)
           select i.relname, 'index', t.relname, pg_get_indexdef(x.indexrelid)
           from pg_index x
           join pg_class i on i.oid = x.indexrelid
           join pg_class t on t.oid = x.indrelid
           join pg_namespace n on n.oid = t.relnamespace
           where n.nspname = current_schema()
             and t.relname = any($1)
             and not x.indisprimary
             and not x.indisunique
           on conflict (name) do nothing
           returning name"#,
        &tables
    )
    .fetch_all(&mut *tx)
    .await?;
    for name in &names {
        // Identifiers cannot be bound; these come from the catalog and are quoted.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop index if exists {}",
            quote(name)
        )))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(names)
}

/// Records and drops the foreign keys of the data tables. Returns the dropped names.
pub async fn drop_foreign_keys(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    let tables: Vec<String> = DATA_TABLES.iter().map(|t| t.to_string()).collect();
    let mut tx = conn.begin().await?;
    let dropped = sqlx::query!(
        r#"insert into dropped_schema_objects (name, kind, table_name, definition)
           select c.conname, 'foreign_key', t.relname, pg_get_constraintdef(c.oid)
           from pg_constraint c
           join pg_class t on t.oid = c.conrelid
           join pg_namespace n on n.oid = t.relnamespace
           where n.nspname = current_schema()
             and c.contype = 'f'
             and t.relname = any($1)
           on conflict (name) do nothing
           returning name, table_name"#,
        &tables
    )
    .fetch_all(&mut *tx)
    .await?;
    for row in &dropped {
        let statement = format!(
            "alter table {} drop constraint if exists {}",
            quote(&row.table_name),
            quote(&row.name)
        );
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(dropped.into_iter().map(|row| row.name).collect())
}

/// Recreates everything recorded — indexes first (a foreign key's validation is faster
/// with them), then foreign keys — each in its own step, so that an interrupted restore
/// keeps what it finished and resumes where it stopped. Returns the restored names.
pub async fn restore(conn: &mut PgConnection, build: Build) -> Result<Vec<String>, sqlx::Error> {
    let recorded = sqlx::query!(
        "select name, kind, table_name, definition from dropped_schema_objects
         order by kind = 'foreign_key', name"
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut restored = Vec::with_capacity(recorded.len());
    for object in recorded {
        // A failed `CREATE INDEX CONCURRENTLY` leaves an invalid index behind: it does not
        // count as restored, and is dropped before the index is built again.
        let state = sqlx::query!(
            r#"select x.indisvalid as "valid!"
               from pg_class c join pg_index x on x.indexrelid = c.oid
               where c.relname = $1
               union all
               select true from pg_constraint where conname = $1"#,
            object.name
        )
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| row.valid);
        if state != Some(true) {
            let statement = if object.kind == "index" {
                if state == Some(false) {
                    let leftover = format!("drop index {}", quote(&object.name));
                    sqlx::query(sqlx::AssertSqlSafe(leftover))
                        .execute(&mut *conn)
                        .await?;
                }
                match build {
                    Build::Concurrently => {
                        object
                            .definition
                            .replacen("CREATE INDEX ", "CREATE INDEX CONCURRENTLY ", 1)
                    }
                    Build::Blocking => object.definition.clone(),
                }
            } else {
                format!(
                    "alter table {} add constraint {} {}",
                    quote(&object.table_name),
                    quote(&object.name),
                    object.definition
                )
            };
            // The DDL was written by Postgres itself (pg_get_indexdef/pg_get_constraintdef).
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query!(
            "delete from dropped_schema_objects where name = $1",
            object.name
        )
        .execute(&mut *conn)
        .await?;
        restored.push(object.name);
    }
    Ok(restored)
}
