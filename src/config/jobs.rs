//! Background work: RabbitMQ (`AMQP_URL`, the names' prefix, timeouts, reconnection), the
//! outbox relay, the worker's consumers and retries, and the mail transport (`SMTP_URL`
//! or a mailbox directory).
//!
//! RabbitMQ and SMTP are optional dependencies: while either is down, writes still
//! succeed and their jobs wait (in the outbox, or in a retry queue). The values here bound
//! how long a job waits and how hard a sick dependency is retried.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};

use super::resilience::{BreakerSettings, BreakerVars};
use super::vars::{ConfigError, Vars, error};

#[derive(Clone)]
pub struct JobsConfig {
    /// `AMQP_URL`: RabbitMQ, in the AMQP URI syntax (`amqp://user:pass@host:5672/%2f`,
    /// `amqps://` for TLS), checked at start-up by lapin's own parser. It carries a
    /// password, so it is a secret and `Debug` leaves it out.
    pub amqp_url: SecretString,
    /// `KEEL_AMQP_PREFIX`: the start of every exchange and queue name Keel declares, so
    /// that several environments or test runs share one broker without sharing queues.
    pub amqp_prefix: String,
    /// `KEEL_AMQP_CONNECT_TIMEOUT`: how long opening a connection may take. Five seconds
    /// covers a TLS handshake to a managed broker and still notices a dead one quickly.
    pub connect_timeout: Duration,
    /// `KEEL_AMQP_PUBLISH_TIMEOUT`: how long the relay waits for the broker's confirm of a
    /// batch. A healthy broker confirms in milliseconds (a quorum queue once a majority
    /// has the message); past this the batch is published again on a new connection
    /// (a duplicate at worst, never a loss).
    pub publish_timeout: Duration,
    /// `KEEL_AMQP_RECONNECT_MIN_DELAY`, `KEEL_AMQP_RECONNECT_MAX_DELAY`: the relay's and the
    /// consumers' reconnection backoff, doubling from the first to the second, with full
    /// jitter so that a fleet that lost the broker together does not return in step.
    pub reconnect_min_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// `KEEL_JOBS_PREFETCH`: unacknowledged messages the broker hands each consumer (one
    /// per job kind) ahead of its acks. A few per handler keeps every handler busy without
    /// hoarding messages another worker could run.
    pub prefetch: u16,
    /// `KEEL_JOBS_CONCURRENCY`: handlers running at once, per job kind and per worker
    /// process. Bounds what the worker asks of Postgres and the SMTP server.
    pub concurrency: usize,
    /// `KEEL_JOBS_MAX_ATTEMPTS`: attempts of a job whose handler fails (a transient
    /// failure: SMTP down, Postgres busy) before it is parked in the dead-letter queue.
    pub max_attempts: u32,
    /// `KEEL_JOBS_RETRY_DELAYS`: the fixed delays between attempts, one retry queue each
    /// (comma-separated; the last repeats). Growing delays give a dependency time to come
    /// back; fixed queues rather than per-message TTLs, which block the queue's head.
    pub retry_delays: Vec<Duration>,
    /// `KEEL_JOBS_DELIVERY_LIMIT`: how often a quorum queue delivers one message before it
    /// parks it (`x-delivery-limit`): the guard against a job that crashes its worker
    /// every time, which never reaches the handler's own retry count.
    pub delivery_limit: u32,
    /// `KEEL_JOBS_TIMEOUT`: how long one attempt of a job may run before it counts as a
    /// transient failure. Well under the broker's `consumer_timeout` (30 minutes), which
    /// would close the channel of a consumer holding a message longer.
    pub job_timeout: Duration,
    /// `KEEL_OUTBOX_BATCH`: outbox rows a relay claims and publishes per transaction.
    pub outbox_batch: i64,
    /// `KEEL_OUTBOX_POLL_INTERVAL`: how often a relay reads the outbox when no
    /// notification woke it — the fallback for a notification lost with its connection.
    pub outbox_poll_interval: Duration,
    /// `KEEL_OUTBOX_RETENTION`: how long published rows are kept (for inspection) before
    /// the pruner deletes them.
    pub outbox_retention: Duration,
    /// `KEEL_JOBS_RECORD_RETENTION`: how long the processed-job and email-delivery records
    /// are kept. They must outlive any redelivery of their job, replays of parked jobs
    /// included: a week leaves an operator time to replay.
    pub record_retention: Duration,
    /// `KEEL_OUTBOX_PRUNE_INTERVAL`: how often the pruner runs.
    pub prune_interval: Duration,
    /// `SMTP_URL`: lettre's URL syntax (`smtp://host:2525`, `smtps://user:pass@host`);
    /// unset, emails are written as `.eml` files into `mailbox_dir`. May carry a password.
    pub smtp_url: Option<SecretString>,
    /// `KEEL_SMTP_FROM`: the sender of Keel's emails (`Name <address>`).
    pub smtp_from: Mailbox,
    /// `KEEL_SMTP_TIMEOUT`: how long one SMTP command may take before the attempt fails
    /// and is retried later.
    pub smtp_timeout: Duration,
    /// `KEEL_MAILBOX_DIR`: where emails go when `SMTP_URL` is unset, one `.eml` file each,
    /// named by its job (so a redelivery rewrites the same file).
    pub mailbox_dir: PathBuf,
    /// `KEEL_AMQP_BREAKER_*`: the circuit breaker around RabbitMQ. Its calls are the
    /// connections the relay, the worker and readiness open, and each batch the relay
    /// publishes; while it is open none of them is tried, and jobs wait in the outbox.
    /// Those calls are few (a reconnect every few seconds, a batch per commit), so it judges
    /// from 3 calls in a window of 10, and one probe decides half-open. A batch is slow past
    /// 2s (a healthy broker confirms in milliseconds; a broker that blocks publishers under
    /// a memory alarm takes seconds). Open for 10s, the longest reconnect backoff.
    pub amqp_breaker: BreakerSettings,
    /// `KEEL_SMTP_BREAKER_*`: the circuit breaker around the SMTP server. While it is open a
    /// send fails at once as a transient error, and the job comes back through its retry
    /// queue (or, inline, goes to the outbox). A send takes from tens of milliseconds to
    /// seconds, so it is slow past 5s; judged from 5 sends in a window of 10; open for 30s,
    /// long enough for a mail server to restart, with 2 probes to close it.
    pub smtp_breaker: BreakerSettings,
}

const AMQP_BREAKER_VARS: BreakerVars = BreakerVars {
    failure_rate: "KEEL_AMQP_BREAKER_FAILURE_RATE",
    slow_call_rate: "KEEL_AMQP_BREAKER_SLOW_CALL_RATE",
    slow_call_duration: "KEEL_AMQP_BREAKER_SLOW_CALL_DURATION",
    window: "KEEL_AMQP_BREAKER_WINDOW",
    min_calls: "KEEL_AMQP_BREAKER_MIN_CALLS",
    cooldown: "KEEL_AMQP_BREAKER_COOLDOWN",
    half_open_calls: "KEEL_AMQP_BREAKER_HALF_OPEN_CALLS",
};

/// See [`JobsConfig::amqp_breaker`].
const AMQP_BREAKER_DEFAULTS: BreakerSettings = BreakerSettings {
    failure_rate: 0.5,
    slow_call_rate: 0.8,
    slow_call_duration: Duration::from_secs(2),
    window: 10,
    min_calls: 3,
    cooldown: Duration::from_secs(10),
    half_open_calls: 1,
};

const SMTP_BREAKER_VARS: BreakerVars = BreakerVars {
    failure_rate: "KEEL_SMTP_BREAKER_FAILURE_RATE",
    slow_call_rate: "KEEL_SMTP_BREAKER_SLOW_CALL_RATE",
    slow_call_duration: "KEEL_SMTP_BREAKER_SLOW_CALL_DURATION",
    window: "KEEL_SMTP_BREAKER_WINDOW",
    min_calls: "KEEL_SMTP_BREAKER_MIN_CALLS",
    cooldown: "KEEL_SMTP_BREAKER_COOLDOWN",
    half_open_calls: "KEEL_SMTP_BREAKER_HALF_OPEN_CALLS",
};

/// See [`JobsConfig::smtp_breaker`].
const SMTP_BREAKER_DEFAULTS: BreakerSettings = BreakerSettings {
    failure_rate: 0.5,
    slow_call_rate: 0.8,
    slow_call_duration: Duration::from_secs(5),
    window: 10,
    min_calls: 5,
    cooldown: Duration::from_secs(30),
    half_open_calls: 2,
};

impl std::fmt::Debug for JobsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsConfig")
            .field("amqp_prefix", &self.amqp_prefix)
            .field("prefetch", &self.prefetch)
            .field("concurrency", &self.concurrency)
            .field("max_attempts", &self.max_attempts)
            .field("retry_delays", &self.retry_delays)
            .field("smtp", &self.smtp_url.is_some())
            .field("mailbox_dir", &self.mailbox_dir)
            .finish_non_exhaustive()
    }
}

impl JobsConfig {
    pub(super) fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let jobs = Self {
            amqp_url: read_amqp_url(vars)?,
            amqp_prefix: vars.prefix("KEEL_AMQP_PREFIX", "keel.")?,
            connect_timeout: vars.duration_range(
                "KEEL_AMQP_CONNECT_TIMEOUT",
                secs(5),
                ms(10),
                secs(60),
            )?,
            publish_timeout: vars.duration_range(
                "KEEL_AMQP_PUBLISH_TIMEOUT",
                secs(5),
                ms(10),
                secs(60),
            )?,
            reconnect_min_delay: vars.duration_range(
                "KEEL_AMQP_RECONNECT_MIN_DELAY",
                ms(100),
                ms(1),
                secs(60),
            )?,
            reconnect_max_delay: vars.duration_range(
                "KEEL_AMQP_RECONNECT_MAX_DELAY",
                secs(10),
                ms(1),
                secs(600),
            )?,
            prefetch: vars.range("KEEL_JOBS_PREFETCH", 32, 1, 10_000)?,
            concurrency: vars.range("KEEL_JOBS_CONCURRENCY", 16, 1, 1024)?,
            max_attempts: vars.range("KEEL_JOBS_MAX_ATTEMPTS", 5, 1, 100)?,
            retry_delays: read_delays(vars)?,
            delivery_limit: vars.range("KEEL_JOBS_DELIVERY_LIMIT", 10, 1, 1000)?,
            job_timeout: vars.duration_range("KEEL_JOBS_TIMEOUT", secs(30), ms(10), secs(600))?,
            outbox_batch: vars.range("KEEL_OUTBOX_BATCH", 200, 1, 10_000)?,
            outbox_poll_interval: vars.duration_range(
                "KEEL_OUTBOX_POLL_INTERVAL",
                secs(1),
                ms(10),
                secs(60),
            )?,
            outbox_retention: vars.duration_range(
                "KEEL_OUTBOX_RETENTION",
                secs(3600),
                secs(0),
                secs(30 * 86_400),
            )?,
            record_retention: vars.duration_range(
                "KEEL_JOBS_RECORD_RETENTION",
                secs(7 * 86_400),
                secs(60),
                secs(365 * 86_400),
            )?,
            prune_interval: vars.duration_range(
                "KEEL_OUTBOX_PRUNE_INTERVAL",
                secs(60),
                ms(100),
                secs(86_400),
            )?,
            smtp_url: read_smtp_url(vars)?,
            smtp_from: read_from(vars)?,
            smtp_timeout: vars.duration_range("KEEL_SMTP_TIMEOUT", secs(10), ms(10), secs(300))?,
            mailbox_dir: vars
                .get("KEEL_MAILBOX_DIR")
                .map_or_else(|| PathBuf::from("mailbox"), PathBuf::from),
            amqp_breaker: BreakerSettings::read(vars, &AMQP_BREAKER_VARS, AMQP_BREAKER_DEFAULTS)?,
            smtp_breaker: BreakerSettings::read(vars, &SMTP_BREAKER_VARS, SMTP_BREAKER_DEFAULTS)?,
        };
        if jobs.reconnect_min_delay > jobs.reconnect_max_delay {
            return Err(error(
                "KEEL_AMQP_RECONNECT_MIN_DELAY",
                "is above KEEL_AMQP_RECONNECT_MAX_DELAY",
            ));
        }
        if usize::from(jobs.prefetch) < jobs.concurrency {
            return Err(error(
                "KEEL_JOBS_PREFETCH",
                format!(
                    "{} is below KEEL_JOBS_CONCURRENCY ({}): some handlers would never get a job",
                    jobs.prefetch, jobs.concurrency
                ),
            ));
        }
        Ok(jobs)
    }

    /// The delay before attempt `next` (2 for the first retry), by the configured list.
    pub fn retry_delay(&self, next: u32) -> (usize, Duration) {
        let index = (next.saturating_sub(2) as usize).min(self.retry_delays.len() - 1);
        (index, self.retry_delays[index])
    }
}

fn read_amqp_url(vars: &Vars<'_>) -> Result<SecretString, ConfigError> {
    const VAR: &str = "AMQP_URL";
    let url = vars
        .get(VAR)
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    // The URL carries a password: report the parser's complaint, never the value.
    url.parse::<lapin::uri::AMQPUri>()
        .map_err(|e| error(VAR, format!("is not a valid AMQP URI: {e}")))?;
    Ok(url.into())
}

fn read_delays(vars: &Vars<'_>) -> Result<Vec<Duration>, ConfigError> {
    const VAR: &str = "KEEL_JOBS_RETRY_DELAYS";
    let raw = vars.get(VAR).unwrap_or_else(|| "1s,10s,1m".into());
    let delays = raw
        .split(',')
        .map(|d| humantime::parse_duration(d.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(VAR, format!("{raw:?} is not a list of durations ({e})")))?;
    let bounded =
        |d: &Duration| *d >= Duration::from_millis(1) && *d <= Duration::from_secs(86_400);
    if delays.is_empty() || delays.len() > 10 || !delays.iter().all(bounded) {
        return Err(error(
            VAR,
            format!("{raw:?} must be 1 to 10 durations of 1ms to 1 day"),
        ));
    }
    Ok(delays)
}

fn read_smtp_url(vars: &Vars<'_>) -> Result<Option<SecretString>, ConfigError> {
    const VAR: &str = "SMTP_URL";
    let Some(url) = vars.get(VAR) else {
        return Ok(None);
    };
    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(&url)
        .map_err(|e| error(VAR, format!("is not a valid SMTP URL: {e}")))?;
    Ok(Some(url.into()))
}

fn read_from(vars: &Vars<'_>) -> Result<Mailbox, ConfigError> {
    const VAR: &str = "KEEL_SMTP_FROM";
    let raw = vars
        .get(VAR)
        .unwrap_or_else(|| "Keel <keel@localhost>".into());
    raw.parse()
        .map_err(|e| error(VAR, format!("{raw:?} is not an address ({e})")))
}

impl JobsConfig {
    /// Whether emails go to an SMTP server (else to the mailbox directory).
    pub fn smtp(&self) -> Option<&str> {
        self.smtp_url.as_ref().map(ExposeSecret::expose_secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars::{refused_var, with_vars};

    fn read(pairs: &[(&str, &str)]) -> JobsConfig {
        with_vars(pairs, JobsConfig::read).expect("configuration should be accepted")
    }

    #[test]
    fn defaults_point_at_a_local_broker_and_the_mailbox() {
        let jobs = read(&[]);
        assert_eq!(
            jobs.amqp_url.expose_secret(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(jobs.amqp_prefix, "keel.");
        assert!(jobs.smtp_url.is_none());
        assert_eq!(jobs.mailbox_dir, PathBuf::from("mailbox"));
        assert_eq!(jobs.max_attempts, 5);
        assert_eq!(
            jobs.retry_delays,
            [1, 10, 60].map(Duration::from_secs).to_vec()
        );
        assert_eq!(jobs.amqp_breaker, AMQP_BREAKER_DEFAULTS);
        assert_eq!(jobs.smtp_breaker, SMTP_BREAKER_DEFAULTS);
    }

    #[test]
    fn each_dependency_reads_its_own_breaker_variables() {
        let jobs = read(&[
            ("KEEL_AMQP_BREAKER_COOLDOWN", "1s"),
            ("KEEL_AMQP_BREAKER_HALF_OPEN_CALLS", "4"),
            ("KEEL_SMTP_BREAKER_SLOW_CALL_DURATION", "30s"),
            ("KEEL_SMTP_BREAKER_MIN_CALLS", "2"),
        ]);
        assert_eq!(jobs.amqp_breaker.cooldown, Duration::from_secs(1));
        assert_eq!(jobs.amqp_breaker.half_open_calls, 4);
        assert_eq!(jobs.smtp_breaker.cooldown, SMTP_BREAKER_DEFAULTS.cooldown);
        assert_eq!(
            jobs.smtp_breaker.slow_call_duration,
            Duration::from_secs(30)
        );
        assert_eq!(jobs.smtp_breaker.min_calls, 2);
        let refused = |pairs: &[(&str, &str)]| refused_var(pairs, JobsConfig::read);
        assert_eq!(
            refused(&[("KEEL_AMQP_BREAKER_FAILURE_RATE", "0")]),
            "KEEL_AMQP_BREAKER_FAILURE_RATE"
        );
        assert_eq!(
            refused(&[("KEEL_SMTP_BREAKER_WINDOW", "1")]),
            "KEEL_SMTP_BREAKER_WINDOW"
        );
    }

    #[test]
    fn the_retry_delay_grows_by_attempt_and_the_last_repeats() {
        let jobs = read(&[("KEEL_JOBS_RETRY_DELAYS", "100ms, 2s")]);
        assert_eq!(jobs.retry_delay(2), (0, Duration::from_millis(100)));
        assert_eq!(jobs.retry_delay(3), (1, Duration::from_secs(2)));
        assert_eq!(jobs.retry_delay(9), (1, Duration::from_secs(2)));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let refused = |pairs: &[(&str, &str)]| refused_var(pairs, JobsConfig::read);
        assert_eq!(refused(&[("AMQP_URL", "http://x")]), "AMQP_URL");
        assert_eq!(refused(&[("SMTP_URL", "ftp://x")]), "SMTP_URL");
        assert_eq!(
            refused(&[("KEEL_SMTP_FROM", "not an address")]),
            "KEEL_SMTP_FROM"
        );
        assert_eq!(
            refused(&[("KEEL_JOBS_RETRY_DELAYS", "1s,soon")]),
            "KEEL_JOBS_RETRY_DELAYS"
        );
        assert_eq!(
            refused(&[("KEEL_JOBS_PREFETCH", "2"), ("KEEL_JOBS_CONCURRENCY", "4")]),
            "KEEL_JOBS_PREFETCH"
        );
        assert_eq!(refused(&[("KEEL_AMQP_PREFIX", "a b")]), "KEEL_AMQP_PREFIX");
    }

    #[test]
    fn debug_shows_no_url() {
        let jobs = read(&[
            ("AMQP_URL", "amqp://u:hunter2-secret@h:5672/%2f"),
            ("SMTP_URL", "smtp://u:hunter2-secret@h:25"),
        ]);
        assert!(!format!("{jobs:?}").contains("hunter2"));
    }
}
