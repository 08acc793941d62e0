//! The cache's Redis side: five Lua scripts, each one atomic step of the protocol in
//! `cache/mod.rs`, each one round trip. They run through `EVALSHA`; redis-rs'
//! `Script::invoke_async` loads a script and retries when the server answers `NOSCRIPT`
//! (a restarted or flushed Redis), so nothing has to be loaded at start-up.
//!
//! Every script starts from the same preamble: `ARGV[1]` is Keel's prefix for cache
//! entries, and the keys of this step live under `prefix .. epoch .. ':'`, where `epoch` is
//! the counter that [`BUMP_EPOCH`] advances to drop every entry at once. The scripts derive
//! some keys (the epoch's, a task's membership and assignee keys, a page's generation)
//! inside Redis, which is what makes "a task and the caller's membership" one round trip;
//! it also means they declare no `KEYS`, so they need a single Redis primary, not Redis
//! Cluster (there, every key of one step would need the same hash tag).
//!
//! A counter here (the epoch, a project's page generation) never goes back to a value it
//! had: when it is missing (never set, expired, evicted, a flushed server) it restarts at
//! the server's clock in microseconds, which is above anything the old one reached by
//! increments (one per write).

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

const PREAMBLE: &str = r#"
local prefix = ARGV[1]
local function clock_us()
  local t = redis.call('TIME')
  return t[1] .. string.sub('000000' .. t[2], -6)
end
local function counter(key, ttl_ms)
  local v = redis.call('GET', key)
  if v then return v end
  v = clock_us()
  if ttl_ms then
    redis.call('SET', key, v, 'PX', ttl_ms)
  else
    redis.call('SET', key, v)
  end
  return v
end
local function bump(key, ttl_ms)
  if redis.call('EXISTS', key) == 1 then
    redis.call('INCR', key)
  else
    redis.call('SET', key, clock_us())
  end
  if ttl_ms then redis.call('PEXPIRE', key, ttl_ms) end
end
local base = prefix .. counter(prefix .. 'epoch') .. ':'
"#;

/// The read step, shared by the read scripts: the entry, or a lease on it (1), or 0 when
/// another reader holds the lease. `ARGV[2]` is the reader's token, `ARGV[3]` the lease's
/// life in ms.
const READ_ONE: &str = r#"
local function read(rel)
  local key = base .. rel
  local v = redis.call('GET', key)
  if v then return v end
  if redis.call('SET', key .. '~', ARGV[2], 'NX', 'PX', ARGV[3]) then return 1 end
  return 0
end
"#;

/// `ARGV[4..]`: the entries to read. Returns one slot per entry.
pub static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREAMBLE}{READ_ONE}
local out = {{}}
for i = 4, #ARGV do out[#out + 1] = read(ARGV[i]) end
return out"
    ))
});

/// A task, its comment count, and — derived from the task entry's header, without a
/// second round trip — the caller's membership of its project and its assignee.
/// `ARGV[4]` the task id, `ARGV[5]` the caller's id. Returns 2 slots (task, count) when
/// the task is not cached, since the others cannot be named yet; else 4: task, count,
/// membership, assignee (-1 for an unassigned task).
pub static READ_TASK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREAMBLE}{READ_ONE}
local task = read('t:' .. ARGV[4])
local count = read('c:' .. ARGV[4])
if type(task) ~= 'string' then return {{task, count}} end
local project = string.sub(task, 1, 36)
local assignee = string.sub(task, 37, 72)
local member = read('m:' .. project .. ':' .. ARGV[5])
local user = -1
if assignee ~= '{unassigned}' then user = read('u:' .. assignee) end
return {{task, count, member, user}}",
        unassigned = super::entries::UNASSIGNED
    ))
});

/// The first page of a project's tasks, under the project's current generation.
/// `ARGV[4]` the project id, `ARGV[5]` the page's variant (filters, size), `ARGV[6]` the
/// generation key's life in ms. Returns the slot and the entry's name, for the fill.
pub static READ_PAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREAMBLE}{READ_ONE}
local generation = counter(base .. 'g:' .. ARGV[4], ARGV[6])
local rel = 'tp:' .. ARGV[4] .. ':' .. generation .. ':' .. ARGV[5]
return {{read(rel), rel}}"
    ))
});

/// The fill: stores an entry only while the reader's lease is still there — the check
/// that keeps a value loaded before a write from landing after the write's
/// invalidation. `ARGV[2]` the token, then triples: entry, value, life in ms (an empty
/// value only gives the lease back, for a load that found nothing to cache). Returns 1
/// per stored entry, 0 per refused (or given back) one.
pub static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREAMBLE}
local out = {{}}
for i = 3, #ARGV, 3 do
  local key = base .. ARGV[i]
  local stored = 0
  if redis.call('GET', key .. '~') == ARGV[2] then
    redis.call('DEL', key .. '~')
    if ARGV[i + 1] ~= '' then
      redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[i + 2])
      stored = 1
    end
  end
  out[#out + 1] = stored
end
return out"
    ))
});

/// The invalidation: deletes entries with their leases (so an in-flight fill is
/// refused) and advances project page generations. `ARGV[2]` the generation keys' life
/// in ms, `ARGV[3]` how many project ids follow, then those ids, then the entries.
pub static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREAMBLE}
local projects = tonumber(ARGV[3])
for i = 4, 3 + projects do bump(base .. 'g:' .. ARGV[i], ARGV[2]) end
for i = 4 + projects, #ARGV do redis.call('DEL', base .. ARGV[i], base .. ARGV[i] .. '~') end
return 1"
    ))
});

/// Drops every entry at once: the repair after an invalidation that could not be sent.
pub static BUMP_EPOCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREAMBLE}
bump(prefix .. 'epoch')
return 1"
    ))
});

/// Read-your-writes markers (`crate::loaders::reads`), outside the epoch (dropping the
/// cache must not forget who just wrote): `prefix .. 'ryw:' .. user` holds the WAL position
/// of that user's latest write as 16 hex digits, so that string order is position order.
/// `ARGV[2]` the user, `ARGV[3]` the position, `ARGV[4]` the marker's life in ms. A later
/// write at a lower position (two writes racing) keeps the higher one and renews it.
pub static MARK_WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local key = ARGV[1] .. 'ryw:' .. ARGV[2]
local current = redis.call('GET', key)
if (not current) or current < ARGV[3] then
  redis.call('SET', key, ARGV[3], 'PX', ARGV[4])
else
  redis.call('PEXPIRE', key, ARGV[4])
end
return 1"#,
    )
});

/// The marker of [`MARK_WRITE`], or nil. `ARGV[2]` the user.
pub static LAST_WRITE: LazyLock<Script> =
    LazyLock::new(|| Script::new("return redis.call('GET', ARGV[1] .. 'ryw:' .. ARGV[2])"));
