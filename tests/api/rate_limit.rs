//! Rate limits, end to end: small budgets set per test, the real Redis under the test's
//! own prefix, a TCP proxy to cut it, and the draft's header fields parsed as Structured
//! Fields lists rather than compared as strings.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use keel::cache::Cache;
use keel::config::{Config, Environment};
use keel::flags::Flag;
use keel::limits::{Key, Limiter, Policy, Source};
use reqwest::{Method, Response, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    PASSWORD, TcpProxy, TestApp, TestDb, assert_problem, base_vars, counter_sum, eventually, redis,
    redis_addr, redis_keys, spawn_app_with, spawn_app_with_pool,
};

/// One member of a Structured Fields list as the draft uses them: a string naming a
/// policy, with integer parameters.
#[derive(Debug)]
struct Item {
    name: String,
    params: BTreeMap<String, u64>,
}

impl Item {
    fn param(&self, key: &str) -> u64 {
        *self
            .params
            .get(key)
            .unwrap_or_else(|| panic!("{} has no {key}: {self:?}", self.name))
    }
}

/// Parses a List of Items (RFC 9651 §4.2.1) restricted to what Keel sends: sf-string
/// items, sf-integer parameters. Anything else fails the test.
fn parse_list(field: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut rest = field.trim_start_matches(' ');
    loop {
        let inner = rest
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("an item is not a string: {field:?}"));
        let end = inner.find('"').expect("an unterminated string");
        let name = &inner[..end];
        assert!(
            name.bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'\\'),
            "{name:?}"
        );
        rest = &inner[end + 1..];
        let mut params = BTreeMap::new();
        while let Some(param) = rest.strip_prefix(';') {
            let key_end = param.find('=').expect("a parameter with a value");
            let key = &param[..key_end];
            assert!(
                key.starts_with(|c: char| c.is_ascii_lowercase())
                    && key.bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b"_-.*".contains(&b)),
                "a bad key {key:?} in {field:?}"
            );
            let value = &param[key_end + 1..];
            let digits = value.len() - value.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            assert!((1..=15).contains(&digits), "an integer in {field:?}");
            params.insert(key.to_owned(), value[..digits].parse().unwrap());
            rest = &value[digits..];
        }
        items.push(Item {
            name: name.to_owned(),
            params,
        });
        if rest.is_empty() {
            return items;
        }
        rest = rest
            .strip_prefix(',')
            .unwrap_or_else(|| panic!("junk after an item: {rest:?} in {field:?}"))
            .trim_start_matches([' ', '\t']);
        assert!(!rest.is_empty(), "a trailing comma in {field:?}");
    }
}

/// A response's `RateLimit-Policy` and `RateLimit`, parsed; both must be there.
fn fields(response: &Response) -> (Vec<Item>, Item) {
    let field = |name: &str| {
        response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} on a {}", response.status()))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let policies = parse_list(&field("ratelimit-policy"));
    let mut limit = parse_list(&field("ratelimit"));
    assert_eq!(limit.len(), 1, "RateLimit names one policy");
    let limit = limit.remove(0);
    assert!(
        policies.iter().any(|p| p.name == limit.name),
        "RateLimit names a policy of RateLimit-Policy"
    );
    (policies, limit)
}

fn retry_after(response: &Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds")
}

/// A request no handler gives anything for: `GET /v1/me` without a token (401), which
/// spends from the anonymous budget.
async fn anonymous(app: &TestApp) -> Response {
    app.request(Method::GET, "/v1/me", None)
        .send()
        .await
        .unwrap()
}

async fn sign_in(app: &TestApp, email: &str, password: &str, from: Option<&str>) -> Response {
    let mut request = app
        .request(Method::POST, "/v1/auth/token", None)
        .json(&json!({"email": email, "password": password}));
    if let Some(address) = from {
        request = request.header("x-forwarded-for", address);
    }
    request.send().await.unwrap()
}

fn set(vars: &mut HashMap<String, String>, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        vars.insert((*k).into(), (*v).into());
    }
}

#[tokio::test]
async fn the_request_past_the_budget_gets_429_with_retry_after_and_well_formed_fields() {
    let app = spawn_app_with(|vars| set(vars, &[("KEEL_RATE_LIMIT_SIGNUP_IP", "3/1m")])).await;
    let refused_before = counter_sum(
        &app.metrics().await,
        r#"keel_rate_limited_total{policy="signup-ip"}"#,
    );
    let signup = |n: u32| {
        let email = format!("u{n}-{}@example.com", Uuid::now_v7().simple());
        app.request(Method::POST, "/v1/users", None)
            .json(&json!({"email": email, "name": "Ada", "password": PASSWORD}))
            .send()
    };

    let mut remaining = Vec::new();
    for n in 0..3 {
        let response = signup(n).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let (policies, limit) = fields(&response);
        assert_eq!(policies.len(), 1);
        assert_eq!(policies[0].name, "signup-ip");
        assert_eq!((policies[0].param("q"), policies[0].param("w")), (3, 60));
        assert_eq!(limit.name, "signup-ip");
        assert!((1..=60).contains(&limit.param("t")), "{limit:?}");
        remaining.push(limit.param("r"));
    }
    let refused = signup(3).await.unwrap();

    assert_eq!(remaining, [2, 1, 0]);
    let (_, limit) = fields(&refused);
    assert_eq!((limit.name.as_str(), limit.param("r")), ("signup-ip", 0));
    // One request comes back every 20 s; the first was spent just now.
    let wait = retry_after(&refused);
    assert!((15..=20).contains(&wait), "Retry-After: {wait}");
    let body = assert_problem(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["type"], "urn:keel:problem:rate-limited");
    let users: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(users, 3, "the refused sign-up reached no handler");
    assert!(
        counter_sum(
            &app.metrics().await,
            r#"keel_rate_limited_total{policy="signup-ip"}"#
        ) > refused_before,
        "the refusal is counted"
    );
}

#[tokio::test]
async fn the_fields_name_the_policy_closest_to_running_out() {
    let app = spawn_app_with(|vars| {
        set(
            vars,
            &[
                ("KEEL_RATE_LIMIT_TOKEN_IP", "5/1m"),
                ("KEEL_RATE_LIMIT_TOKEN_EMAIL", "3/1m"),
            ],
        );
    })
    .await;
    let user = app.signup().await; // one sign-in: the address has 4 left, the email 2
    let other = |n: u32| format!("nobody-{n}@example.com");

    let first = sign_in(&app, &user.email, PASSWORD, None).await;
    let second = sign_in(&app, &other(1), PASSWORD, None).await;
    let third = sign_in(&app, &other(2), PASSWORD, None).await;
    let fourth = sign_in(&app, &other(3), PASSWORD, None).await;
    let fifth = sign_in(&app, &other(4), PASSWORD, None).await;
    let me = app.get("/v1/me", &user.token).await;

    assert_eq!(first.status(), StatusCode::OK);
    let (policies, limit) = fields(&first);
    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["token-ip", "token-email"]);
    assert_eq!(policies[1].param("q"), 3);
    // The address has 3 left, the email 1.
    assert_eq!((limit.name.as_str(), limit.param("r")), ("token-email", 1));
    // 2 and 2 (a fresh email): on a tie, the budget that takes longer to fill up.
    assert_eq!(
        second.status(),
        StatusCode::UNAUTHORIZED,
        "fields on a refused sign-in too"
    );
    assert_eq!(fields(&second).1.name, "token-ip");
    assert_eq!(fields(&third).1.param("r"), 1);
    assert_eq!(fields(&fourth).1.param("r"), 0);
    // The address's budget is spent: the handler never runs, so only its policy is named.
    assert_eq!(fifth.status(), StatusCode::TOO_MANY_REQUESTS);
    let (policies, limit) = fields(&fifth);
    assert_eq!(policies.len(), 1);
    assert_eq!((limit.name.as_str(), limit.param("r")), ("token-ip", 0));
    // An authenticated request spends from its user's budget, not the address's.
    assert_eq!(me.status(), StatusCode::OK);
    let (policies, limit) = fields(&me);
    assert_eq!(policies[0].name, "user");
    assert_eq!(limit.name, "user");
}

#[tokio::test]
async fn two_instances_on_one_redis_prefix_share_one_budget() {
    let test_db = Arc::new(TestDb::create().await);
    let small = |vars: &mut HashMap<String, String>| set(vars, &[("KEEL_RATE_LIMIT_ANON", "4/1m")]);
    let a = spawn_app_with_pool(test_db.clone(), test_db.pool.clone(), small).await;
    let b = spawn_app_with_pool(test_db.clone(), test_db.pool.clone(), small).await;

    let mut remaining = Vec::new();
    for app in [&a, &b, &a, &b] {
        let response = anonymous(app).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        remaining.push(fields(&response).1.param("r"));
    }
    let refused_by_a = anonymous(&a).await;
    let refused_by_b = anonymous(&b).await;

    assert_eq!(remaining, [3, 2, 1, 0], "one budget, spent through both");
    assert_problem(refused_by_a, StatusCode::TOO_MANY_REQUESTS).await;
    assert_problem(refused_by_b, StatusCode::TOO_MANY_REQUESTS).await;
    let keys = redis_keys(&format!("{}rl:anon:", test_db.redis_prefix())).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
}

#[tokio::test]
async fn with_redis_cut_the_in_process_fallback_still_limits() {
    let proxy = TcpProxy::start(redis_addr()).await;
    let url = format!("redis://{}", proxy.addr);
    let app = spawn_app_with(|vars| {
        set(
            vars,
            &[
                ("REDIS_URL", url.as_str()),
                ("KEEL_RATE_LIMIT_ANON", "3/1m"),
                ("KEEL_REDIS_BREAKER_COOLDOWN", "200ms"),
            ],
        );
    })
    .await;
    let prefix = format!("{}rl:", app.test_db.redis_prefix());
    let fallback = r#"keel_rate_limit_fallback_total{policy="anon",reason="#;
    let fallback_before = counter_sum(&app.metrics().await, fallback);
    proxy.cut();

    let mut statuses = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let response = anonymous(&app).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        statuses.push(response.status().as_u16());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after(&response) >= 1);
            assert_eq!(fields(&response).1.name, "anon");
        }
    }

    assert_eq!(statuses, [401, 401, 401, 429, 429], "limited per instance");
    assert!(
        redis_keys(&prefix).await.is_empty(),
        "Redis was not reached"
    );
    assert!(
        counter_sum(&app.metrics().await, fallback) > fallback_before,
        "fallback use is counted"
    );
    // Redis back: the fleet's budget (fresh: the outage's spending stayed in process).
    proxy.restore();
    let back = eventually(Duration::from_secs(5), async || {
        let allowed = anonymous(&app).await.status() == StatusCode::UNAUTHORIZED;
        allowed && !redis_keys(&prefix).await.is_empty()
    })
    .await;
    assert!(back, "the limiter went back to Redis");
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let app = spawn_app_with(|vars| set(vars, &[("KEEL_RATE_LIMIT_ANON", "2/1m")])).await;
    let spoofed = |address: &'static str| {
        app.request(Method::GET, "/v1/me", None)
            .header("x-forwarded-for", address)
            .send()
    };

    let first = spoofed("198.51.100.1").await.unwrap();
    let second = spoofed("198.51.100.2").await.unwrap();
    let third = spoofed("198.51.100.3").await.unwrap();

    assert_eq!(fields(&first).1.param("r"), 1);
    assert_eq!(
        fields(&second).1.param("r"),
        0,
        "the same budget: the peer's"
    );
    assert_problem(third, StatusCode::TOO_MANY_REQUESTS).await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_gets_its_own_budget() {
    let app = spawn_app_with(|vars| {
        set(
            vars,
            &[
                ("KEEL_RATE_LIMIT_ANON", "2/1m"),
                ("KEEL_TRUSTED_PROXIES", "127.0.0.1"),
            ],
        );
    })
    .await;
    let from = |address: &'static str| {
        app.request(Method::GET, "/v1/me", None)
            .header("x-forwarded-for", address)
            .send()
    };

    let spent: Vec<StatusCode> = [
        from("198.51.100.7").await.unwrap().status(),
        from("198.51.100.7").await.unwrap().status(),
        from("198.51.100.7").await.unwrap().status(),
    ]
    .into();
    let neighbour = from("198.51.100.8").await.unwrap();
    let proxy_itself = anonymous(&app).await;

    assert_eq!(
        spent,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(neighbour.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fields(&neighbour).1.param("r"), 1, "a budget of its own");
    assert_eq!(proxy_itself.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sign_in_has_a_budget_per_email_whatever_the_address() {
    let app = spawn_app_with(|vars| {
        set(
            vars,
            &[
                ("KEEL_RATE_LIMIT_TOKEN_EMAIL", "2/1m"),
                ("KEEL_TRUSTED_PROXIES", "127.0.0.1"),
            ],
        );
    })
    .await;
    let user = app.signup().await; // one of the email's two sign-ins
    let shouted = user.email.to_uppercase();

    let guess = sign_in(&app, &shouted, "a wrong password!", Some("203.0.113.1")).await;
    let right = sign_in(&app, &user.email, PASSWORD, Some("203.0.113.2")).await;
    let other = sign_in(
        &app,
        "someone-else@example.com",
        PASSWORD,
        Some("203.0.113.3"),
    )
    .await;

    assert_eq!(guess.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fields(&guess).1.name, "token-email");
    assert_eq!(fields(&guess).1.param("r"), 0);
    // Spent by case-insensitive email, from another address, even with the right password.
    assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS);
    let (policies, limit) = fields(&right);
    assert_eq!(policies.len(), 2);
    assert_eq!((limit.name.as_str(), limit.param("r")), ("token-email", 0));
    assert!(retry_after(&right) >= 1);
    let body = assert_problem(right, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["type"], "urn:keel:problem:rate-limited");
    assert_eq!(
        other.status(),
        StatusCode::UNAUTHORIZED,
        "another email's budget"
    );
}

#[tokio::test]
async fn with_the_rate_limit_flag_off_there_is_no_limit_and_no_fields() {
    let app = spawn_app_with(|vars| {
        set(
            vars,
            &[
                ("KEEL_RATE_LIMIT_ANON", "1/1m"),
                ("KEEL_RATE_LIMIT_TOKEN_EMAIL", "1/1m"),
            ],
        );
    })
    .await;
    let row = keel::db::flags::set(&app.db, Flag::RateLimit.name(), false)
        .await
        .unwrap()
        .expect("the flag is registered");
    app.state.flags.apply(&[row]);

    let mut responses = Vec::new();
    for _ in 0..3 {
        responses.push(anonymous(&app).await);
        responses.push(sign_in(&app, "ada@example.com", PASSWORD, None).await);
    }

    for response in responses {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().get("ratelimit").is_none());
        assert!(response.headers().get("ratelimit-policy").is_none());
    }
}

/// A limiter on the shared Redis under a prefix of its own, outside any app.
async fn limiter(pairs: &[(&str, &str)]) -> (Limiter, String) {
    let prefix = format!("keel-test:rl-{}:", Uuid::now_v7().simple());
    let mut vars = base_vars();
    vars.insert("KEEL_REDIS_PREFIX".into(), prefix.clone());
    set(&mut vars, pairs);
    let config = Config::from_map(&vars, Environment::Dev).unwrap();
    let cache = Cache::new(&config.redis, &Default::default(), &Default::default()).unwrap();
    (
        Limiter::new(&config.rate_limit, &config.redis, &cache),
        prefix,
    )
}

async fn delete_keys(prefix: &str) {
    let keys = redis_keys(prefix).await;
    if !keys.is_empty() {
        let _: i64 = deadpool_redis::redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut redis().await)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_script_runs_the_gcra_on_the_redis_clock() {
    // A request's worth comes back every 500 ms; four at once.
    let (limiter, prefix) = limiter(&[("KEEL_RATE_LIMIT_USER", "4/2s")]).await;
    let key = Key::user(Uuid::now_v7());
    let interval = Duration::from_millis(500);

    let mut burst = Vec::new();
    for _ in 0..4 {
        burst.push(limiter.check(Policy::User, &key).await);
    }
    let refused = limiter.check(Policy::User, &key).await;
    let refused_again = limiter.check(Policy::User, &key).await;
    let ttl: i64 = deadpool_redis::redis::cmd("PTTL")
        .arg(limiter.redis_key(Policy::User, &key))
        .query_async(&mut redis().await)
        .await
        .unwrap();

    let remaining: Vec<u64> = burst.iter().map(|d| d.remaining).collect();
    assert_eq!(remaining, [3, 2, 1, 0]);
    assert!(burst.iter().all(|d| d.allowed && d.source == Source::Fleet));
    for (n, d) in burst.iter().enumerate() {
        // Full again once every spent request's interval has passed.
        let spent = interval * (n as u32 + 1);
        assert!(d.reset <= spent && d.reset > spent - interval, "{d:?}");
        assert_eq!(d.retry_after, Duration::ZERO);
    }
    assert!(!refused.allowed);
    assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= interval);
    assert!(
        refused_again.retry_after <= refused.retry_after,
        "a refusal does not push the next chance further away"
    );
    assert!(
        (1..=2000).contains(&ttl),
        "the key lives until the budget is full: {ttl} ms"
    );

    tokio::time::sleep(refused_again.retry_after).await;
    let later = limiter.check(Policy::User, &key).await;
    assert!(later.allowed, "{later:?}");
    // Redis forgot the script (a restart): EVALSHA, NOSCRIPT, reload — still Redis's answer.
    let () = deadpool_redis::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis().await)
        .await
        .unwrap();
    let other = limiter
        .check(Policy::User, &Key::user(Uuid::now_v7()))
        .await;
    assert_eq!(other.source, Source::Fleet);
    delete_keys(&prefix).await;
}
