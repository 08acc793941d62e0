//! The Redis cache in front of the hot reads: cache-aside with leases, invalidated after
//! every write, and never in the way when Redis is not.
//!
//! The loaders (`crate::loaders`) read through it; handlers invalidate through it after
//! their writes commit. Nothing else talks to Redis for cached data, and nothing here
//! knows about HTTP. What each entry holds and what makes it stale is in [`entries`].
//!
//! # The protocol: leases ("Scaling Memcache at Facebook", NSDI 2013, §3.2.1)
//!
//! * **Read.** One script call reads the entries a request needs. For each missing one
//!   the reader takes a *lease*: a token of its own, stored beside the entry (`key~`)
//!   with a short life (`KEEL_CACHE_LEASE_TTL`), set only if no lease is there.
//! * **Load.** A reader holding the lease loads the value from Postgres.
//! * **Fill.** It stores the value only if its token is still the lease — checked and
//!   set in one script, so atomically.
//! * **Invalidate.** A write, after its transaction has committed, deletes the entries it
//!   made stale together with their leases.
//!
//! # Why a fill can never put a stale value back
//!
//! The classic race: a reader misses, loads the old row, a writer commits and deletes the
//! entry, then the reader stores the old row, which stays until its TTL. Here:
//!
//! 1. the invalidation runs strictly after the commit (the handler awaits the commit,
//!    then invalidates, then answers);
//! 2. the reader's load starts after its lease was granted, so the statement's snapshot
//!    is taken after the grant;
//! 3. so either the write committed before that snapshot — the reader loaded the new
//!    value — or the commit, and hence the delete, came after the grant: the delete
//!    removed the lease, and the fill is refused.
//!
//! A page of tasks is named by its project's *generation* (`g:{project}`), which every
//! task write advances instead of finding and deleting pages. A reader reads the
//! generation and takes its lease in one step; a page loaded before a write can only be
//! stored under a generation that nobody reads any more.
//!
//! # The hole, and how it is closed
//!
//! An invalidation that does not reach Redis (a timeout, Redis down, the breaker open).
//! Keel repairs what it can: the instance that lost a delete refuses to use the cache
//! until it has advanced the cache's *epoch*, which is part of every entry's name, so
//! every entry written before is dropped at once (`scripts::BUMP_EPOCH`). That covers
//! an outage: entries that a write during the outage made stale never come back, because
//! the first thing this instance does when Redis answers again is the bump. What that
//! leaves open is the time between the lost delete and the bump, during which *other*
//! instances can still serve the stale entry, and an instance that dies before it can
//! bump. The outbox closes both (`crate::jobs`): every write records its invalidations in
//! its own transaction, and the relay repeats them ([`Cache::try_invalidate`]) until
//! Redis confirms, from whichever worker is alive. What remains is the relay's reaction
//! time — milliseconds while Redis answers; while it does not, nothing is served from it
//! either — and the entry's TTL (`KEEL_CACHE_TTL`) stays the backstop, past which the
//! relay drops a repeat as moot.
//!
//! # No stampede
//!
//! When a hot entry is missing, one reader in the whole fleet holds its lease and loads
//! it; the others see the lease, poll for the fill every few milliseconds for at most
//! `KEEL_CACHE_LEASE_WAIT`, and then load for themselves without filling. Inside one
//! instance, concurrent misses of the same key do not even poll: they share one load
//! (`flight`).
//!
//! # When Redis is slow or down
//!
//! Every call has the command timeout (`KEEL_REDIS_COMMAND_TIMEOUT`), cut to what is left
//! of the request's deadline, and passes a circuit breaker (`crate::resilience`): after
//! enough failed or slow calls it stops calling Redis for a cool-down, so a dead Redis
//! costs a request nothing rather than a timeout. A read or an invalidation whose
//! connection was refused or dropped is retried once, within the Redis retry budget
//! (`Cache::call_unchecked` says why only those). A failed read is a miss served from
//! Postgres; a failed fill is dropped; a failed invalidation triggers the epoch repair
//! above. Readiness reports Redis `down` (the service `degraded`, still 200) while the
//! breaker is open.
//!
//! The workshop's `redis` fault switch (`resilience::fault`) acts in the same place, once
//! per attempt of a script call, inside the breaker's permit and before the command: an
//! injected error is a Redis failure (not retried: the connection is fine), an injected
//! latency a slow call.

pub mod entries;
mod flight;
pub mod pool;
mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_redis::redis::{FromRedisValue, RedisError, Script, Value};
use futures_util::future::BoxFuture;
use metrics::{counter, histogram};
use tokio::time::Instant;
use tracing::Instrument as _;
use uuid::Uuid;

pub use entries::{CommentCount, Entry, Key, Membership, TaskPage};
pub use flight::Fresh;

use crate::config::RedisConfig;
use crate::db::tasks::Task;
use crate::db::users::User;
use crate::resilience::{
    Breaker, BreakerState, BreakerSwitch, Dependency, Faults, Retry, deadline,
};
use crate::telemetry::metrics::names;
use pool::{Conn, Pool};

/// The format version of the entries, part of every name: a build that changes a
/// record's shape incompatibly bumps it and starts from an empty cache.
const FORMAT: &str = "c1:";

/// How often a reader that found another's lease looks for the fill.
pub const POLL_STEP: Duration = Duration::from_millis(5);

/// Called before each fill with the entry's kind; see [`Cache::set_fill_hook`].
pub type FillHook = Arc<dyn Fn(&'static str) -> BoxFuture<'static, ()> + Send + Sync>;

/// The cache. Cloning is an `Arc` increment.
#[derive(Clone)]
pub struct Cache(Arc<Inner>);

struct Inner {
    pool: Pool,
    /// `KEEL_REDIS_PREFIX` + [`FORMAT`]: the scripts' `ARGV[1]`.
    prefix: String,
    ttl: Duration,
    lease_ttl: Duration,
    lease_wait: Duration,
    breaker: Breaker,
    /// The workshop's fault switches, of which this reads `redis` (module doc).
    faults: Faults,
    /// Retries of the idempotent calls (reads, invalidations) on a refused or dropped
    /// connection: see [`Cache::call_unchecked`].
    retry: Retry,
    /// The longest one call may take by its own timeouts (a pool wait, a connection opened,
    /// the command): the timeout that a request's deadline cuts.
    call_timeout: Duration,
    /// Set when an invalidation may not have reached Redis: until the epoch has been
    /// advanced, this instance neither reads nor fills (module doc, "the hole").
    repair_pending: AtomicBool,
    flights: flight::Flights,
    fill_hook: RwLock<Option<FillHook>>,
}

/// One entry as a read found it.
#[derive(Debug)]
pub enum Slot<T> {
    Hit(T),
    /// Missing, and this reader now holds its lease: load, then fill.
    Leased,
    /// Missing, and another reader holds the lease: wait for its fill, or load without
    /// filling.
    Busy,
}

/// A reader's lease token: one per read-load-fill, so that a fill can only land where
/// this reader's own lease still stands.
#[derive(Debug, Clone)]
pub struct Token(String);

impl Token {
    fn new() -> Self {
        // v7: time-ordered and 74 random bits — unique across the fleet.
        Self(Uuid::now_v7().simple().to_string())
    }
}

/// Redis was not asked or did not answer (breaker open, timeout, error, repair pending):
/// the caller serves from Postgres. Already logged and counted.
#[derive(Debug, Clone, Copy)]
pub struct Unavailable;

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("redis is unavailable (error, timeout, or circuit breaker open)")
    }
}

/// Why a call did not get an answer.
enum Failure {
    /// The breaker is open: Redis was not asked.
    BreakerOpen,
    /// No pooled connection came free within `KEEL_REDIS_POOL_WAIT_TIMEOUT`.
    PoolBusy,
    /// The request's deadline came first: what is left of it went to the call.
    Deadline,
    /// Redis failed: connecting, a timeout, an error reply. `connection`: the connection was
    /// refused or found dropped, so the command never reached Redis, and another attempt on
    /// a fresh connection may well succeed.
    Redis { error: String, connection: bool },
}

impl Failure {
    fn redis(error: &RedisError) -> Self {
        Self::Redis {
            error: error.to_string(),
            connection: error.is_connection_refusal() || error.is_connection_dropped(),
        }
    }

    /// Worth retrying (an idempotent call): the connection failed, not the command.
    fn is_connection(&self) -> bool {
        matches!(
            self,
            Self::Redis {
                connection: true,
                ..
            }
        )
    }
}

impl From<deadpool::managed::PoolError<RedisError>> for Failure {
    fn from(error: deadpool::managed::PoolError<RedisError>) -> Self {
        use deadpool::managed::{PoolError, TimeoutType};
        match error {
            PoolError::Timeout(TimeoutType::Wait) => Self::PoolBusy,
            // Opening a connection failed: the command was never sent.
            PoolError::Backend(e) => Self::Redis {
                error: e.to_string(),
                connection: true,
            },
            other => Self::Redis {
                error: other.to_string(),
                connection: false,
            },
        }
    }
}

/// What a write made stale; see the table in [`entries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "stale", content = "id", rename_all = "snake_case")]
pub enum Stale {
    /// A task's row (and so its entry) changed or went.
    Task(Uuid),
    /// A task's comment count changed (or the task went).
    CommentCount(Uuid),
    /// The tasks of a project changed: its pages.
    ProjectTasks(Uuid),
    /// A project's row changed or went (its stats go with it).
    Project(Uuid),
    /// A project's stats were recomputed.
    ProjectStats(Uuid),
    /// A user's membership of a project changed.
    Membership { project: Uuid, user: Uuid },
}

/// The entries a fill stores (or whose leases it gives back), of any kinds.
#[derive(Default)]
pub struct Fills {
    items: Vec<(String, Vec<u8>, &'static str)>,
}

impl Fills {
    /// Stores `value` under `key`, or gives the lease back when there is nothing to
    /// store (`None`: the row does not exist, which is not cached).
    pub fn add<T: Entry>(&mut self, key: &Key<T>, value: Option<&T>) {
        let bytes = value.map(Entry::encode).unwrap_or_default();
        self.items.push((key.name.clone(), bytes, T::NAME));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The four entries of a single-task read.
#[derive(Debug)]
pub struct TaskSlots {
    pub task: Slot<Task>,
    pub count: Slot<CommentCount>,
    /// Known only when the task was found (its project names the key).
    pub membership: Option<Slot<Membership>>,
    /// Known only when the task was found and is assigned.
    pub assignee: Option<Slot<User>>,
}

impl Cache {
    /// The cache over `config`'s Redis, its breaker following `breakers` (the
    /// `circuit_breaker` fix flag, `Flags::breaker_switch`) and its calls the `redis` fault
    /// of `faults` (`Flags::faults`).
    pub fn new(
        config: &RedisConfig,
        breakers: &BreakerSwitch,
        faults: &Faults,
    ) -> anyhow::Result<Self> {
        Ok(Self(Arc::new(Inner {
            pool: pool::pool(config)?,
            prefix: format!("{}{FORMAT}", config.prefix),
            ttl: config.cache_ttl,
            lease_ttl: config.lease_ttl,
            lease_wait: config.lease_wait,
            breaker: Breaker::new("redis", config.breaker).with_switch(breakers),
            faults: faults.clone(),
            retry: Retry::new("redis", config.retry),
            call_timeout: config.pool_wait_timeout
                + config.connect_timeout
                + config.command_timeout,
            repair_pending: AtomicBool::new(false),
            flights: flight::Flights::default(),
            fill_hook: RwLock::new(None),
        })))
    }

    /// For readiness: Redis answers, and the breaker lets calls through (an open breaker
    /// counts as down — the service is not using Redis).
    pub async fn ping(&self) -> Result<(), Unavailable> {
        if self.0.breaker.state() == BreakerState::Open {
            return Err(Unavailable);
        }
        let mut conn = Conn::get(&self.0.pool).await.map_err(|_| Unavailable)?;
        let pong: Result<String, RedisError> = deadpool_redis::redis::cmd("PING")
            .query_async(&mut *conn)
            .await;
        match pong {
            Ok(_) => Ok(()),
            Err(e) => {
                conn.failed(&e);
                Err(Unavailable)
            }
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.0.breaker.state()
    }

    /// The pool, the breaker and the fault switches around Redis, for the other users of
    /// the same server (the rate limits, `crate::limits`): one pool and one breaker per
    /// process, so that a Redis the breaker has given up on is skipped by every caller at
    /// once, and its recovery is probed by one trial call rather than one per user.
    pub fn redis(&self) -> (Pool, Breaker, Faults) {
        (
            self.0.pool.clone(),
            self.0.breaker.clone(),
            self.0.faults.clone(),
        )
    }

    /// A test hook: runs before every fill, after the load. The race test pauses a
    /// reader here while a write commits and invalidates. Costs an uncontended read lock
    /// per fill (misses only) when unset.
    pub fn set_fill_hook(&self, hook: Option<FillHook>) {
        *self.0.fill_hook.write().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// Shares one run of `work` among concurrent callers with the same `key` in this
    /// instance, with those for whom its value is fresh enough (`flight`).
    pub async fn single_flight<T, E, Fut>(
        &self,
        key: String,
        work: impl FnOnce() -> Fut,
    ) -> Result<T, E>
    where
        T: Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Fresh<T>, E>>,
    {
        self.0.flights.run(key, work).await
    }

    /// One entry through the cache: a hit, or a load from `load` (`Ok(None)`: nothing
    /// there, and nothing cached) that fills the entry when this reader holds the lease.
    /// Concurrent callers in this instance share one run.
    pub async fn fetch<T, E, F, Fut>(&self, key: &Key<T>, load: F) -> Result<Option<T>, E>
    where
        T: Entry + Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let read = |token: &Token| {
            let token = token.clone();
            async move {
                let mut slots = self.read_names(&token, &[key.name.as_str()]).await?;
                let raw = slots.pop().unwrap_or(Value::Nil);
                Ok((decode::<T>(raw), key.clone()))
            }
        };
        self.fetch_via(key.name.clone(), read, load).await
    }

    /// [`fetch`](Self::fetch) for an entry that a script names while reading it (a page
    /// under its project's generation): `read` returns the slot and the entry's key.
    pub async fn fetch_via<T, E, R, RFut, F, Fut>(
        &self,
        flight: String,
        read: R,
        load: F,
    ) -> Result<Option<T>, E>
    where
        T: Entry + Clone,
        R: Fn(&Token) -> RFut,
        RFut: Future<Output = Result<(Slot<T>, Key<T>), Unavailable>>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        self.single_flight(flight, || async {
            let token = Token::new();
            let deadline = Instant::now() + self.0.lease_wait;
            let mut waited = false;
            loop {
                let sent = Instant::now();
                match read(&token).await {
                    Ok((Slot::Hit(value), _)) => {
                        self.count_read(T::NAME, "hit");
                        return Ok(Fresh {
                            value: Some(value),
                            as_of: sent,
                        });
                    }
                    Ok((Slot::Leased, key)) => {
                        self.count_read(T::NAME, "miss");
                        let loading = Instant::now();
                        let loaded = self.timed_load(T::NAME, load()).await;
                        let mut fills = Fills::default();
                        fills.add(&key, loaded.as_ref().ok().and_then(Option::as_ref));
                        let stored = self.fill(&token, fills).await;
                        return loaded.map(|value| Fresh {
                            value,
                            as_of: stored.unwrap_or(loading),
                        });
                    }
                    Ok((Slot::Busy, _)) if Instant::now() < deadline => {
                        if !waited {
                            waited = true;
                            counter!(names::CACHE_LEASE_WAITS, "cache" => T::NAME).increment(1);
                        }
                        tokio::time::sleep(POLL_STEP).await;
                    }
                    // Still busy after the wait: load, don't fill.
                    Ok((Slot::Busy, _)) => {
                        self.count_read(T::NAME, "miss");
                        return self.load_alone(T::NAME, load()).await;
                    }
                    // Redis unavailable: load, don't fill.
                    Err(Unavailable) => {
                        self.count_read(T::NAME, "error");
                        return self.load_alone(T::NAME, load()).await;
                    }
                }
            }
        })
        .await
    }

    /// A load from Postgres alone, current from when its statement was sent.
    async fn load_alone<T, E>(
        &self,
        kind: &'static str,
        load: impl Future<Output = Result<T, E>>,
    ) -> Result<Fresh<T>, E> {
        let as_of = Instant::now();
        let value = self.timed_load(kind, load).await?;
        Ok(Fresh { value, as_of })
    }

    /// Entries of one kind by id, in one read: a page's assignees, its comment counts.
    /// `load` gets the ids that missed (those whose lease this reader holds, and those
    /// still filled by another reader after the wait) and returns what exists.
    pub async fn fetch_many<T, E, F, Fut>(
        &self,
        ids: &[Uuid],
        key: fn(Uuid) -> Key<T>,
        load: F,
    ) -> Result<HashMap<Uuid, T>, E>
    where
        T: Entry,
        F: FnOnce(Vec<Uuid>) -> Fut,
        Fut: Future<Output = Result<Vec<(Uuid, T)>, E>>,
    {
        let mut found = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(found);
        }
        let token = Token::new();
        let mut leased: Vec<Uuid> = Vec::new();
        let mut pending: Vec<Uuid> = ids.to_vec();
        let deadline = Instant::now() + self.0.lease_wait;
        let mut waited = false;
        loop {
            let keys: Vec<Key<T>> = pending.iter().map(|&id| key(id)).collect();
            let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
            let Ok(slots) = self.read_names(&token, &names).await else {
                self.count_reads(T::NAME, "error", pending.len());
                break;
            };
            let mut busy = Vec::new();
            for (id, raw) in pending.iter().zip(slots) {
                match decode::<T>(raw) {
                    Slot::Hit(value) => {
                        found.insert(*id, value);
                    }
                    Slot::Leased => leased.push(*id),
                    Slot::Busy => busy.push(*id),
                }
            }
            pending = busy;
            if pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            if !waited {
                waited = true;
                counter!(names::CACHE_LEASE_WAITS, "cache" => T::NAME).increment(1);
            }
            tokio::time::sleep(POLL_STEP).await;
        }
        self.count_reads(T::NAME, "hit", found.len());
        self.count_reads(T::NAME, "miss", leased.len());
        let mut missing = leased.clone();
        missing.extend(&pending);
        if missing.is_empty() {
            return Ok(found);
        }
        let loaded = self.timed_load(T::NAME, load(missing)).await;
        let mut fills = Fills::default();
        let rows: HashMap<Uuid, T> = match loaded {
            Ok(rows) => rows.into_iter().collect(),
            Err(e) => {
                for id in &leased {
                    fills.add(&key(*id), None);
                }
                self.fill(&token, fills).await;
                return Err(e);
            }
        };
        for id in &leased {
            fills.add(&key(*id), rows.get(id));
        }
        self.fill(&token, fills).await;
        found.extend(rows);
        Ok(found)
    }

    /// A task with its count, and (when the task entry is there) the caller's membership
    /// of its project and its assignee, in one round trip.
    pub async fn read_task(
        &self,
        token: &Token,
        task: Uuid,
        user: Uuid,
    ) -> Result<TaskSlots, Unavailable> {
        let values: Vec<Value> = self
            .call("cache.read_task", &scripts::READ_TASK, |invocation| {
                invocation
                    .arg(&token.0)
                    .arg(self.lease_ms())
                    .arg(task.to_string())
                    .arg(user.to_string());
            })
            .await?;
        let mut values = values.into_iter();
        let mut next = || values.next().unwrap_or(Value::Int(0));
        let task = decode::<Task>(next());
        let count = decode::<CommentCount>(next());
        let (membership, assignee) = if matches!(task, Slot::Hit(_)) {
            let membership = decode::<Membership>(next());
            let assignee = match next() {
                Value::Int(-1) => None,
                raw => Some(decode::<User>(raw)),
            };
            (Some(membership), assignee)
        } else {
            (None, None)
        };
        let slots = TaskSlots {
            task,
            count,
            membership,
            assignee,
        };
        self.count_slot(&slots.task);
        self.count_slot(&slots.count);
        if let Some(slot) = &slots.membership {
            self.count_slot(slot);
        }
        if let Some(slot) = &slots.assignee {
            self.count_slot(slot);
        }
        Ok(slots)
    }

    /// The first page of a project's tasks in one of its variants (filters and size),
    /// under the project's current generation. Returns the key to fill on a miss.
    pub async fn read_page(
        &self,
        token: &Token,
        project: Uuid,
        variant: &str,
    ) -> Result<(Slot<TaskPage>, Key<TaskPage>), Unavailable> {
        let (raw, name): (Value, String) = self
            .call("cache.read_page", &scripts::READ_PAGE, |invocation| {
                invocation
                    .arg(&token.0)
                    .arg(self.lease_ms())
                    .arg(project.to_string())
                    .arg(variant)
                    .arg(self.generation_ms());
            })
            .await?;
        Ok((decode::<TaskPage>(raw), entries::task_page(name)))
    }

    /// Stores what was loaded, where this reader's leases still stand; a refused fill is
    /// the protocol working (a write came in between), not an error. Returns when the
    /// fill was sent if every value in it was stored: no invalidation came between the
    /// leases and then, so the values are current as of that instant.
    pub async fn fill(&self, token: &Token, fills: Fills) -> Option<Instant> {
        if fills.is_empty() {
            return None;
        }
        let hook = self
            .0
            .fill_hook
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(hook) = hook {
            for (_, _, kind) in &fills.items {
                hook(kind).await;
            }
        }
        let sent = Instant::now();
        let stored: Result<Vec<i64>, Unavailable> = self
            .call("cache.fill", &scripts::FILL, |invocation| {
                invocation.arg(&token.0);
                for (name, value, _) in &fills.items {
                    invocation.arg(name).arg(value).arg(self.ttl_ms());
                }
            })
            .await;
        let Ok(stored) = stored else { return None };
        let mut all_stored = true;
        for ((_, value, kind), stored) in fills.items.iter().zip(stored) {
            if value.is_empty() {
                all_stored = false;
                continue;
            }
            all_stored &= stored == 1;
            let result = if stored == 1 { "stored" } else { "refused" };
            counter!(names::CACHE_FILLS, "cache" => *kind, "result" => result).increment(1);
        }
        all_stored.then_some(sent)
    }

    /// Deletes what a committed write made stale. Never fails the write: an invalidation
    /// that may not have landed triggers the epoch repair (module doc), and the outbox
    /// repeats it (`crate::jobs`).
    pub async fn invalidate(&self, stale: &[Stale]) {
        // Lost or not, the write stands: the repair and the outbox's repeat cover it.
        let _landed = self.try_invalidate(stale).await;
    }

    /// [`Cache::invalidate`], saying whether Redis confirmed it: the outbox relay repeats
    /// an invalidation until it lands.
    pub async fn try_invalidate(&self, stale: &[Stale]) -> Result<(), Unavailable> {
        if stale.is_empty() {
            return Ok(());
        }
        let mut projects = Vec::new();
        let mut deleted = Vec::new();
        for item in stale {
            match *item {
                Stale::Task(id) => deleted.push(entries::task(id).name),
                Stale::CommentCount(id) => deleted.push(entries::comment_count(id).name),
                Stale::ProjectTasks(id) => projects.push(id.to_string()),
                Stale::Project(id) => {
                    deleted.push(entries::project(id).name);
                    deleted.push(entries::stats(id).name);
                }
                Stale::ProjectStats(id) => deleted.push(entries::stats(id).name),
                Stale::Membership { project, user } => {
                    deleted.push(entries::membership(project, user).name);
                }
            }
        }
        let done: Result<i64, Unavailable> = self
            .call_unchecked("cache.invalidate", &scripts::INVALIDATE, |invocation| {
                invocation.arg(self.generation_ms()).arg(projects.len());
                for project in &projects {
                    invocation.arg(project);
                }
                for name in &deleted {
                    invocation.arg(name);
                }
            })
            .await;
        let result = if done.is_ok() { "done" } else { "lost" };
        counter!(names::CACHE_INVALIDATIONS, "result" => result).increment(1);
        if done.is_err() && !self.0.repair_pending.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "a cache invalidation did not reach Redis: this instance stops using the \
                 cache until it has dropped every entry (epoch bump)"
            );
        }
        done.map(|_| ())
    }

    /// Reads entries by name with the generic read script.
    async fn read_names(&self, token: &Token, names: &[&str]) -> Result<Vec<Value>, Unavailable> {
        self.call("cache.read", &scripts::READ, |invocation| {
            invocation.arg(&token.0).arg(self.lease_ms());
            for name in names {
                invocation.arg(*name);
            }
        })
        .await
    }

    /// Runs a script, after the epoch repair when one is pending.
    async fn call<R: FromRedisValue>(
        &self,
        operation: &'static str,
        script: &Script,
        args: impl FnOnce(&mut deadpool_redis::redis::ScriptInvocation<'_>),
    ) -> Result<R, Unavailable> {
        if self.0.repair_pending.load(Ordering::SeqCst) {
            self.repair().await?;
        }
        self.call_unchecked(operation, script, args).await
    }

    /// Notes that `user` wrote, up to WAL position `position`, for `window`: until then,
    /// their list reads check the replica's replay position against it
    /// (`crate::loaders::reads`). Outside the epoch, so dropping the cache keeps it; run
    /// twice, it leaves the same marker (a retry is harmless).
    pub async fn mark_write(
        &self,
        user: Uuid,
        position: u64,
        window: Duration,
    ) -> Result<(), Unavailable> {
        let _: i64 = self
            .call_unchecked("ryw.mark", &scripts::MARK_WRITE, |invocation| {
                invocation
                    .arg(user.to_string())
                    .arg(format!("{position:016x}"))
                    .arg(window.as_millis().max(1) as u64);
            })
            .await?;
        Ok(())
    }

    /// The WAL position of `user`'s latest write within its window, if any
    /// ([`Cache::mark_write`]).
    pub async fn last_write(&self, user: Uuid) -> Result<Option<u64>, Unavailable> {
        let marker: Option<String> = self
            .call_unchecked("ryw.read", &scripts::LAST_WRITE, |invocation| {
                invocation.arg(user.to_string());
            })
            .await?;
        // A marker that does not parse was not written by this code: treat the write as
        // not yet replayed anywhere, so the primary answers until it expires.
        Ok(marker.map(|m| u64::from_str_radix(&m, 16).unwrap_or(u64::MAX)))
    }

    /// Drops every entry at once by advancing the epoch: the repair after a lost
    /// invalidation, and what `keel seed` does after replacing the data behind a running
    /// service's back.
    pub async fn drop_all(&self) -> Result<(), Unavailable> {
        let _: i64 = self
            .call_unchecked("cache.bump_epoch", &scripts::BUMP_EPOCH, |_| {})
            .await?;
        Ok(())
    }

    /// Advances the epoch, then lets the cache be used again.
    async fn repair(&self) -> Result<(), Unavailable> {
        self.drop_all().await?;
        if self.0.repair_pending.swap(false, Ordering::SeqCst) {
            tracing::warn!("cache epoch advanced after a lost invalidation: caching resumes");
        }
        Ok(())
    }

    /// One script call, in a client span: through the breaker, on a pooled connection, cut
    /// to the request's deadline, and retried when it is idempotent.
    ///
    /// Which calls are retried, and why only those: the reads (`cache.read*`) and the
    /// invalidation, when the connection was refused or found dropped — after a Redis
    /// restart every pooled connection is dead, and each first use fails until the pool
    /// has replaced it; a retry on a fresh connection turns that into a hit instead of a
    /// load from Postgres, or a lost invalidation (and an epoch repair) into a landed one.
    /// Running either twice is harmless: a read twice at worst finds its own lease and
    /// loads without filling; an invalidation deletes what is already gone and advances a
    /// generation once more. Fills are not retried (a lost fill costs one later miss), nor
    /// is the epoch bump (each run drops the whole cache again), nor is any timeout: a
    /// Redis too slow to answer gets no more calls from here, and the breaker's slow-call
    /// rule takes it out of the path.
    async fn call_unchecked<R: FromRedisValue>(
        &self,
        operation: &'static str,
        script: &Script,
        args: impl FnOnce(&mut deadpool_redis::redis::ScriptInvocation<'_>),
    ) -> Result<R, Unavailable> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&self.0.prefix);
        args(&mut invocation);
        let span = tracing::debug_span!(
            "redis.command",
            otel.name = operation,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = "redis",
            db.operation.name = "EVALSHA",
        );
        let idempotent = matches!(
            operation,
            "cache.read"
                | "cache.read_task"
                | "cache.read_page"
                | "cache.invalidate"
                | "ryw.mark"
                | "ryw.read"
        );
        let attempt = || self.attempt::<R>(&invocation);
        let result = if idempotent {
            self.0
                .retry
                .idempotent(attempt, Failure::is_connection)
                .instrument(span.clone())
                .await
        } else {
            attempt().instrument(span.clone()).await
        };
        let (reason, error) = match result {
            Ok(value) => return Ok(value),
            Err(Failure::BreakerOpen) => {
                counter!(names::CACHE_ERRORS, "operation" => operation, "reason" => "breaker_open")
                    .increment(1);
                return Err(Unavailable);
            }
            Err(Failure::PoolBusy) => ("pool_busy", "every pooled connection is busy".to_owned()),
            Err(Failure::Deadline) => ("deadline", "the request's deadline came first".to_owned()),
            Err(Failure::Redis { error, .. }) => ("redis", error),
        };
        span.record("otel.status_code", "ERROR");
        counter!(names::CACHE_ERRORS, "operation" => operation, "reason" => reason).increment(1);
        tracing::debug!(operation, %error, "redis call failed; serving from Postgres");
        Err(Unavailable)
    }

    /// One attempt of a script call: a permit from the breaker, the `redis` fault if one is
    /// set, a pooled connection, the script, all within what is left of the request's
    /// deadline (the fault's latency outside the call's own timeout: `resilience::fault`).
    async fn attempt<R: FromRedisValue>(
        &self,
        invocation: &deadpool_redis::redis::ScriptInvocation<'_>,
    ) -> Result<R, Failure> {
        let Some(permit) = self.0.breaker.try_acquire() else {
            return Err(Failure::BreakerOpen);
        };
        if let Err(fault) = self.0.faults.inject(Dependency::Redis).await {
            permit.failure();
            return Err(Failure::Redis {
                error: fault.to_string(),
                connection: false,
            });
        }
        let call = async {
            let mut conn = Conn::get(&self.0.pool).await.map_err(Failure::from)?;
            match invocation.invoke_async::<R>(&mut *conn).await {
                Ok(value) => Ok(value),
                Err(e) => {
                    let failure = Failure::redis(&e);
                    conn.failed(&e);
                    Err(failure)
                }
            }
        };
        match tokio::time::timeout(deadline::budget(self.0.call_timeout), call).await {
            Ok(Ok(value)) => {
                permit.success();
                Ok(value)
            }
            Ok(Err(failure @ Failure::Redis { .. })) => {
                permit.failure();
                Err(failure)
            }
            // Every connection busy: this instance's congestion, not Redis failing, so the
            // breaker does not count it (the permit is dropped unsettled); nor a call cut
            // short by the request's deadline, which says nothing about Redis.
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(Failure::Deadline),
        }
    }

    async fn timed_load<T>(&self, kind: &'static str, load: impl Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let value = load.await;
        histogram!(names::CACHE_LOAD_DURATION, "cache" => kind)
            .record(started.elapsed().as_secs_f64());
        value
    }

    fn count_read(&self, kind: &'static str, outcome: &'static str) {
        self.count_reads(kind, outcome, 1);
    }

    fn count_reads(&self, kind: &'static str, outcome: &'static str, n: usize) {
        if n > 0 {
            counter!(names::CACHE_REQUESTS, "cache" => kind, "outcome" => outcome)
                .increment(n as u64);
        }
    }

    fn count_slot<T: Entry>(&self, slot: &Slot<T>) {
        let outcome = if matches!(slot, Slot::Hit(_)) {
            "hit"
        } else {
            "miss"
        };
        self.count_read(T::NAME, outcome);
    }

    /// The entry's life, with ±10 % jitter so that entries filled together (a warm-up,
    /// a page's assignees) do not expire together.
    fn ttl_ms(&self) -> u64 {
        let base = self.0.ttl.as_millis() as f64;
        (base * rand::random_range(0.9..1.1)).max(1.0) as u64
    }

    fn lease_ms(&self) -> u64 {
        self.0.lease_ttl.as_millis().max(1) as u64
    }

    /// Generations outlive the pages named by them: a generation that expired restarts
    /// above its old value anyway (`scripts`), so this only bounds the keys' number.
    fn generation_ms(&self) -> u64 {
        (self.0.ttl.as_millis() as u64).saturating_mul(2).max(1)
    }

    /// Takes a token for a multi-step read ([`read_task`](Self::read_task),
    /// [`read_page`](Self::read_page) and their fills).
    pub fn token(&self) -> Token {
        Token::new()
    }

    /// How long a reader waits for another's fill.
    pub fn lease_wait(&self) -> Duration {
        self.0.lease_wait
    }
}

/// A script's slot: the entry's bytes, 1 (leased), or 0 (busy). A value that does not
/// decode is treated as busy: load, and leave the entry alone.
fn decode<T: Entry>(raw: Value) -> Slot<T> {
    match raw {
        Value::BulkString(bytes) => T::decode(&bytes).map_or(Slot::Busy, Slot::Hit),
        Value::Int(1) => Slot::Leased,
        _ => Slot::Busy,
    }
}
