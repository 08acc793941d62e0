//! Proof that every list query is served by an index: on a seeded database of 200 000 tasks,
//! `EXPLAIN (FORMAT JSON)` of each list query the contract serves — each filter, first page
//! and a deep page — shows no sequential scan of tasks, comments or members, and no sort
//! over more rows than the page.
//!
//! The queries explained are the repository functions' own: [`ExplainConn`] is an sqlx
//! executor that, handed a query, runs `EXPLAIN` of exactly that SQL with exactly those
//! bound arguments instead of the query itself. Each statement is explained twice: with its
//! arguments (the custom plan Postgres uses for a prepared statement's first runs) and as a
//! generic plan (`plan_cache_mode = force_generic_plan`, what a prepared statement settles on
//! after five runs, which cannot use the values).

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt as _};
use keel::db::{self, Keyset};
use keel::domain::TaskStatus;
use serde_json::Value;
use sqlx::postgres::{
    PgArguments, PgConnection, PgQueryResult, PgRow, PgStatement, PgTypeInfo, Postgres,
};
use sqlx::{AssertSqlSafe, Connection as _, Describe, Either, Execute, Executor, SqlStr};
use uuid::Uuid;

use crate::helpers::{TestDb, spawn_app_with_pool};

/// One explained statement.
pub struct Plan {
    pub sql: String,
    pub custom: Value,
    pub generic: Value,
}

/// An executor that explains instead of executing (see the module docs). Queries run
/// through it return no rows.
pub struct ExplainConn {
    conn: PgConnection,
    pub plans: Vec<Plan>,
}

impl std::fmt::Debug for ExplainConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExplainConn")
            .field("plans", &self.plans.len())
            .finish()
    }
}

impl ExplainConn {
    pub async fn connect(test_db: &TestDb) -> Self {
        let conn = PgConnection::connect_with(&test_db.options)
            .await
            .expect("connect");
        Self {
            conn,
            plans: Vec::new(),
        }
    }

    async fn explain(
        &mut self,
        sql: SqlStr,
        arguments: Option<PgArguments>,
    ) -> Result<(), sqlx::Error> {
        let sql = sql.as_str().to_owned();
        let custom: Value = sqlx::query_scalar_with(
            AssertSqlSafe(format!("explain (format json) {sql}")),
            arguments.unwrap_or_default(),
        )
        .fetch_one(&mut self.conn)
        .await?;
        // A generic plan does not depend on the values, so any value of the right type
        // will do for EXECUTE.
        sqlx::query(AssertSqlSafe(format!("prepare keel_explain as {sql}")))
            .execute(&mut self.conn)
            .await?;
        let types: Vec<String> = sqlx::query_scalar(
            "select unnest(parameter_types)::text from pg_prepared_statements where name = 'keel_explain'",
        )
        .fetch_all(&mut self.conn)
        .await?;
        let values: Vec<String> = types
            .iter()
            .map(|t| format!("{}::{t}", placeholder(t)))
            .collect();
        sqlx::query("set plan_cache_mode = force_generic_plan")
            .execute(&mut self.conn)
            .await?;
        let generic: Value = sqlx::query_scalar(AssertSqlSafe(format!(
            "explain (format json) execute keel_explain({})",
            values.join(", ")
        )))
        .fetch_one(&mut self.conn)
        .await?;
        for cleanup in ["reset plan_cache_mode", "deallocate keel_explain"] {
            sqlx::query(cleanup).execute(&mut self.conn).await?;
        }
        self.plans.push(Plan {
            sql,
            custom,
            generic,
        });
        Ok(())
    }
}

fn placeholder(sql_type: &str) -> &'static str {
    match sql_type {
        "uuid" => "'00000000-0000-0000-0000-000000000000'",
        "uuid[]" => "'{}'",
        "text" => "'todo'",
        "timestamp with time zone" => "now()",
        "bigint" | "integer" => "51",
        other => panic!("no placeholder for parameter type {other}"),
    }
}

impl<'c> Executor<'c> for &'c mut ExplainConn {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        mut query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let arguments = query.take_arguments();
        let sql = query.sql();
        futures_util::stream::once(async move {
            let arguments = arguments.map_err(sqlx::Error::Encode)?;
            self.explain(sql, arguments).await
        })
        .filter_map(|result| async move { result.err().map(Err) })
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        mut query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let arguments = query.take_arguments();
        let sql = query.sql();
        Box::pin(async move {
            let arguments = arguments.map_err(sqlx::Error::Encode)?;
            self.explain(sql, arguments).await.map(|()| None)
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        (&mut self.conn).prepare_with(sql, parameters)
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        (&mut self.conn).describe(sql)
    }
}

const BIG_TABLES: [&str; 3] = ["tasks", "comments", "project_members"];

/// Every plan node, depth first.
fn nodes(plan: &Value) -> Vec<&Value> {
    let mut out = vec![plan];
    for child in plan["Plans"].as_array().into_iter().flatten() {
        out.extend(nodes(child));
    }
    out
}

/// Asserts the plan reads no big table sequentially and sorts no more than `max_sorted`;
/// for a keyset list (`keyset`), also that the position is an index bound — the scan seeks
/// to it instead of reading and discarding every row before it, which is what makes a
/// deep page cost what the first one costs.
fn assert_indexed(plan: &Plan, mode: &str, max_sorted: f64, keyset: bool) {
    let root = match mode {
        "custom" => &plan.custom,
        _ => &plan.generic,
    };
    let root = &root[0]["Plan"];
    for node in nodes(root) {
        let kind = node["Node Type"].as_str().unwrap_or_default();
        let relation = node["Relation Name"].as_str().unwrap_or_default();
        assert!(
            !(kind == "Seq Scan" && BIG_TABLES.contains(&relation)),
            "{mode} plan scans {relation} sequentially:\n{}\n{root:#}",
            plan.sql
        );
        if keyset && BIG_TABLES.contains(&relation) {
            // An index scan seeks with its `Index Cond`; a bitmap heap scan's conditions
            // were the bitmap index scan's, and show as its `Recheck Cond` (the planner
            // picks one for a short list, then sorts it: the sort check below bounds that).
            let bound = node["Index Cond"]
                .as_str()
                .or_else(|| node["Recheck Cond"].as_str())
                .unwrap_or_default();
            assert!(
                bound.contains("ROW("),
                "{mode} plan does not seek to the keyset position in {relation}:\n{}\n{root:#}",
                plan.sql
            );
        }
        if kind == "Sort" || kind == "Incremental Sort" {
            let input = node["Plans"][0]["Plan Rows"].as_f64().unwrap_or(f64::MAX);
            assert!(
                input <= max_sorted,
                "{mode} plan sorts {input} rows (page: {max_sorted}):\n{}\n{root:#}",
                plan.sql
            );
        }
    }
}

async fn seeded() -> (TestDb, keel::seed::SeedReport) {
    let test_db = TestDb::create().await;
    let config = keel::config::Config::from_map(
        &crate::helpers::base_vars(),
        keel::config::Environment::Dev,
    )
    .unwrap();
    let options = keel::seed::SeedOptions {
        sizes: keel::seed::generate::Sizes::for_tasks(200_000, None, None, None),
        seed: 7,
        anchor: chrono::NaiveDate::from_ymd_opt(2026, 6, 1).unwrap(),
        password: "seeded-password".into(),
        reset: false,
        tokens: 10,
    };
    let passwords = keel::auth::PasswordHasher::new(2, std::time::Duration::from_secs(10));
    let tokens = keel::auth::Keyring::new(&config.auth.jwt);
    let report = keel::seed::run(&test_db.pool, &options, &passwords, &tokens)
        .await
        .expect("seed 200 000 tasks");
    (test_db, report)
}

/// The position after the `depth`-th row of a list: where a deep page starts.
fn deep(rows: &[db::tasks::Task], depth: usize) -> Keyset {
    rows.get(depth - 1)
        .or(rows.last())
        .map(|t| t.keyset())
        .unwrap_or(Keyset::NEWEST)
}

#[tokio::test]
async fn every_list_query_is_an_index_range_scan_on_200_000_tasks() {
    let (test_db, report) = seeded().await;
    assert!(report.counts.tasks >= 200_000);
    let pool = &test_db.pool.clone();
    let project = report.largest_projects[0].id;
    let owner = report.largest_projects[0].owner.id;
    let busiest = report.busiest_assignee.as_ref().unwrap().id;
    const PAGE: i64 = 51; // a page of 50, plus the row that tells whether more follow

    // Where the deep pages start: 1 000 rows in, found with the real queries.
    let filters = [
        db::tasks::TaskFilter::default(),
        db::tasks::TaskFilter {
            status: Some(TaskStatus::Done),
            assignee_id: None,
        },
        db::tasks::TaskFilter {
            status: None,
            assignee_id: Some(busiest),
        },
        db::tasks::TaskFilter {
            status: Some(TaskStatus::Todo),
            assignee_id: Some(busiest),
        },
    ];
    let mut task_lists = Vec::new();
    for filter in filters {
        let rows = db::tasks::list_for_project(pool, project, filter, Keyset::NEWEST, 1000)
            .await
            .unwrap();
        task_lists.push((filter, deep(&rows, 1000)));
    }
    let mut mine = Vec::new();
    for status in [None, Some(TaskStatus::Doing)] {
        let rows = db::tasks::list_for_assignee(pool, busiest, status, Keyset::NEWEST, 1000)
            .await
            .unwrap();
        mine.push((status, deep(&rows, 1000)));
    }
    let page_of_tasks = db::tasks::list_for_project(pool, project, filters[0], Keyset::NEWEST, 100)
        .await
        .unwrap();
    let task_ids: Vec<Uuid> = page_of_tasks.iter().map(|t| t.id).collect();
    let user_ids: Vec<Uuid> = page_of_tasks.iter().filter_map(|t| t.assignee_id).collect();
    let (commented, comment_count): (Uuid, i64) = sqlx::query_as(
        "select task_id, count(*) from comments group by task_id order by count(*) desc limit 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let comments = db::comments::list_for_task(pool, commented, Keyset::OLDEST, 1000)
        .await
        .unwrap();
    let comments_deep = comments[comments.len() / 2].keyset();
    let projects = db::projects::list_for_member(pool, busiest, Keyset::NEWEST, 1000)
        .await
        .unwrap();
    let projects_deep = projects[projects.len() / 2].keyset();

    // Explain each, through the repository functions themselves.
    let mut explain = ExplainConn::connect(&test_db).await;
    // (rows a sort may hold, whether the query is a keyset list)
    let mut expected = Vec::new();
    for (filter, deep) in &task_lists {
        for after in [Keyset::NEWEST, *deep] {
            db::tasks::list_for_project(&mut explain, project, *filter, after, PAGE)
                .await
                .unwrap();
            expected.push((PAGE as f64, true));
        }
    }
    for (status, deep) in &mine {
        for after in [Keyset::NEWEST, *deep] {
            db::tasks::list_for_assignee(&mut explain, busiest, *status, after, PAGE)
                .await
                .unwrap();
            expected.push((PAGE as f64, true));
        }
    }
    for after in [Keyset::OLDEST, comments_deep] {
        db::comments::list_for_task(&mut explain, commented, after, PAGE)
            .await
            .unwrap();
        expected.push((PAGE as f64, true));
    }
    for after in [Keyset::NEWEST, projects_deep] {
        db::projects::list_for_member(&mut explain, busiest, after, 21)
            .await
            .unwrap();
        expected.push((21.0, true));
    }
    // The members list is not paginated: the whole list is the page.
    db::members::list(&mut explain, project).await.unwrap();
    expected.push((100.0, false));
    // What a page embeds (batched, and per row with batch_loading off), and the
    // authorization checks in front of every request.
    db::users::summaries(&mut explain, &user_ids).await.unwrap();
    db::comments::counts(&mut explain, &task_ids).await.unwrap();
    db::users::summary(&mut explain, owner).await.unwrap();
    // `fetch_one` finds no row in an executor that only explains; the plan is recorded.
    let counted = db::comments::count(&mut explain, commented).await;
    assert!(
        matches!(counted, Err(sqlx::Error::RowNotFound)),
        "{counted:?}"
    );
    db::members::role_of(&mut explain, project, owner)
        .await
        .unwrap();
    db::tasks::read(&mut explain, task_ids[0], owner)
        .await
        .unwrap();
    // The cache's by-id loads, and what a write reads to know what it made stale.
    db::users::by_ids(&mut explain, &user_ids).await.unwrap();
    db::tasks::assigned_in_project(&mut explain, project, owner)
        .await
        .unwrap();
    db::members::user_ids(&mut explain, project).await.unwrap();
    db::projects::lock(&mut explain, project).await.unwrap();
    expected.extend([
        (100.0, false),
        (100.0, false),
        (1.0, false),
        (1.0, false),
        (1.0, false),
        (1.0, false),
        (100.0, false),
        (100.0, false),
        (100.0, false),
        (1.0, false),
    ]);

    assert_eq!(
        explain.plans.len(),
        expected.len(),
        "every query was explained"
    );
    assert!(comment_count > 1);
    for (plan, (max_sorted, keyset)) in explain.plans.iter().zip(expected) {
        assert_indexed(plan, "custom", max_sorted, keyset);
        assert_indexed(plan, "generic", max_sorted, keyset);
    }
    // The same holds through the HTTP layer: the app serves these pages from this data.
    let app = spawn_app_with_pool(std::sync::Arc::new(test_db), pool.clone(), |_| {}).await;
    let token = &report.largest_projects[0].owner.token;
    let response = app
        .get(&format!("/v1/projects/{project}/tasks?limit=50"), token)
        .await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
}
