//! The real `keel` binary as a worker and as the operator's tool, against the real broker,
//! Postgres and an SMTP sink the test owns.
//!
//! * A `keel worker` process killed with SIGKILL while its SMTP server holds back the answer
//!   to DATA leaves its job unacked and its delivery claimed; the broker redelivers the job,
//!   a second worker takes the claim over once it is stale (`KEEL_JOBS_TIMEOUT`), and the
//!   email is sent once and recorded sent. This is the crash the handlers are built for
//!   (`jobs::kinds`): in-process tests can drop a connection, but only a killed process
//!   loses its handlers, its connections and its claim at the same instant.
//! * `keel jobs dead` lists a parked job (as a line and as JSON) and leaves it parked, and
//!   `keel jobs replay --kind …` sends it back to be done once: the operator's path out of
//!   the dead-letter queue, through the binary an operator runs.
//!
//! Every child process is killed when its guard drops, also when a test fails, and every
//! wait is bounded.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::jobs::Kind;
use keel::server::Role;
use serde_json::{Value, json};
use sqlx::ConnectOptions as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;

use crate::helpers::{TestApp, TestDb, amqp_url, eventually, redis_url, spawn_role};
use crate::smtp_sink::{Behaviour, SmtpSink};

/// The retry delays of every process on the test's broker names. They name the retry
/// queues, so the processes must agree on them, and the test app declares them for
/// clean-up.
const RETRY_DELAYS: &str = "200ms";

/// The variables that put a process on the test's database, cache prefix, broker names
/// and SMTP server: the same for the in-test app and every child.
fn shared_vars(test_db: &TestDb, smtp_url: &str) -> Vec<(String, String)> {
    [
        ("KEEL_ENV", "dev".to_owned()),
        ("DATABASE_URL", test_db.options.to_url_lossy().to_string()),
        ("REDIS_URL", redis_url()),
        ("KEEL_REDIS_PREFIX", test_db.redis_prefix()),
        ("AMQP_URL", amqp_url()),
        ("KEEL_AMQP_PREFIX", test_db.amqp_prefix()),
        (
            "KEEL_MAILBOX_DIR",
            test_db.mailbox_dir().display().to_string(),
        ),
        ("SMTP_URL", smtp_url.to_owned()),
        ("KEEL_JOBS_RETRY_DELAYS", RETRY_DELAYS.to_owned()),
        ("KEEL_AMQP_RECONNECT_MAX_DELAY", "500ms".to_owned()),
        ("KEEL_OUTBOX_POLL_INTERVAL", "200ms".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// An in-process app of `role` on a fresh database, with the shared variables and `extra`.
async fn app(role: Role, smtp_url: &str, extra: &[(&str, &str)]) -> TestApp {
    let test_db = Arc::new(TestDb::create().await);
    let pool = test_db.pool.clone();
    let vars = shared_vars(&test_db, smtp_url);
    spawn_role(role, test_db, pool, |all: &mut HashMap<String, String>| {
        all.extend(vars);
        all.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
    })
    .await
}

/// A `keel` child process, killed (SIGKILL) and reaped when dropped. Its output is kept,
/// and printed if the test fails, since it is the only account of what the process did.
struct Keel {
    child: Child,
    output: Arc<Mutex<String>>,
    /// Set once the process logs that it is working (its consumers are being opened).
    working: watch::Receiver<bool>,
}

impl Keel {
    /// Starts `keel worker` with the shared variables of `app` and `extra`.
    fn worker(app: &TestApp, smtp_url: &str, extra: &[(&str, &str)]) -> Keel {
        let mut command = keel_command(&app.test_db, smtp_url, extra);
        command
            .arg("worker")
            .env("KEEL_ADMIN_ADDR", "127.0.0.1:0")
            .env("KEEL_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start keel worker");
        let output = Arc::new(Mutex::new(String::new()));
        let (working, ready) = watch::channel(false);
        let working = Arc::new(working);
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let (output, working) = (output.clone(), working.clone());
            // Drains the pipe to its end, so that the child never blocks on a full one.
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let entry: Value = serde_json::from_str(&line).unwrap_or_default();
                    if entry["message"] == "working" {
                        working.send_replace(true);
                    }
                    let mut output = output.lock().unwrap_or_else(|e| e.into_inner());
                    output.push_str(&line);
                    output.push('\n');
                }
            });
        }
        Keel {
            child,
            output,
            working: ready,
        }
    }

    /// Waits (bounded) until the worker has started its relay and consumers.
    async fn wait_working(&mut self) {
        let working = tokio::time::timeout(
            Duration::from_secs(20),
            self.working.wait_for(|working| *working),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(
            working,
            "keel worker started within 20 s; its output:\n{}",
            self.output()
        );
    }

    /// SIGKILL (what `Child::kill` sends), and the exit reaped.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the worker");
        let status = self.child.wait().expect("reap the worker");
        assert!(!status.success(), "killed, not exited: {status}");
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        // Both fail harmlessly on a process already killed and reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- output of keel (pid {}) ---\n{}",
                self.child.id(),
                self.output()
            );
        }
    }
}

/// The `keel` binary with nothing of the test runner's environment but the shared
/// variables and `extra`.
fn keel_command(test_db: &TestDb, smtp_url: &str, extra: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command
        .env_clear()
        .envs(shared_vars(test_db, smtp_url))
        .envs(extra.iter().copied())
        .stdin(Stdio::null());
    command
}

/// Runs `keel jobs {args}` to completion (bounded): its stdout, after asserting it
/// succeeded.
async fn keel_jobs(app: &TestApp, smtp_url: &str, args: &[&str]) -> String {
    // Logs on, at the default level: `keel jobs` writes them to stderr, so stdout is the
    // command's output alone (`--json` must stay one object per line).
    let mut command = tokio::process::Command::from(keel_command(&app.test_db, smtp_url, &[]));
    command.arg("jobs").args(args).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap_or_else(|_| panic!("keel jobs {args:?} finished within 30 s"))
        .expect("run keel jobs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(
        output.status.success(),
        "keel jobs {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
}

/// A TCP relay in front of the SMTP sink that tells what happens on the wire: when a
/// client has sent the end of a message (`<CRLF>.<CRLF>` after DATA) — from then on it
/// waits for the sink's delayed answer, mid-send — and when the sink has closed a
/// connection, which it does once it has answered or given up on a client that went away.
/// A client that goes makes the relay close its side towards the sink, as the client's own
/// socket would have.
struct SmtpTap {
    url: String,
    wire: watch::Receiver<Wire>,
}

/// What the tap has seen, summed over its connections.
#[derive(Debug, Default, Clone, Copy)]
struct Wire {
    /// Messages sent in full by clients.
    messages_sent: usize,
    /// Connections the server (the sink) has closed.
    closed_by_server: usize,
}

impl SmtpTap {
    async fn start(sink: &SmtpSink) -> SmtpTap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("smtp://{}", listener.local_addr().unwrap());
        let upstream = sink.addr();
        let (seen, wire) = watch::channel(Wire::default());
        let seen = Arc::new(seen);
        // Ends with the test's runtime; each connection ends with both sides closed.
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, seen.clone()));
            }
        });
        SmtpTap { url, wire }
    }

    /// Waits (bounded) until what the tap has seen satisfies `done`.
    async fn wait_until(&mut self, within: Duration, done: impl Fn(&Wire) -> bool) -> bool {
        tokio::time::timeout(within, self.wire.wait_for(|wire| done(wire)))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    fn seen(&self) -> Wire {
        *self.wire.borrow()
    }
}

/// Copies both ways, counting the ends of messages the client sends and the server's
/// close. Each direction runs to its own end: a dead client still lets the relay see the
/// server let go.
async fn relay(client: TcpStream, server: TcpStream, seen: Arc<watch::Sender<Wire>>) {
    const END: &[u8] = b"\r\n.\r\n";
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        // The last bytes of the previous read: an end marker may straddle two reads.
        let mut tail: Vec<u8> = Vec::new();
        while let Ok(n) = client_read.read(&mut buf).await
            && n > 0
        {
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            let ends = tail.windows(END.len()).filter(|w| *w == END).count();
            if ends > 0 {
                seen.send_modify(|wire| wire.messages_sent += ends);
            }
            tail.drain(..tail.len() - tail.len().min(END.len() - 1));
        }
        // The client is gone (or done): the server sees it go.
        let _ = server_write.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 4 * 1024];
        while let Ok(n) = server_read.read(&mut buf).await
            && n > 0
        {
            // A dead client cannot take an answer; what counts is that the server ends.
            let _ = client_write.write_all(&buf[..n]).await;
        }
        seen.send_modify(|wire| wire.closed_by_server += 1);
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// The email delivery records (job id, state): one per email job that was claimed.
async fn deliveries(app: &TestApp) -> Vec<(Uuid, String)> {
    sqlx::query_as("select job_id, state from email_deliveries order by job_id")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

/// Whether every delivery record, and at least one, says sent.
async fn all_sent(app: &TestApp) -> bool {
    let records = deliveries(app).await;
    !records.is_empty() && records.iter().all(|(_, state)| state == "sent")
}

/// The messages ready in the email queue and its retry queues, plus unpublished outbox rows:
/// zero once every copy of the job has been taken and settled.
async fn email_backlog(app: &TestApp) -> u64 {
    let unpublished: i64 = sqlx::query_scalar(
        "select count(*) from outbox where published_at is null and kind = 'email.task_assigned'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let topology = keel::jobs::relay::topology(&app.state.config);
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut ready = 0;
    let queues = std::iter::once(topology.queue(Kind::TaskAssigned)).chain(
        (0..app.state.config.jobs.retry_delays.len())
            .map(|index| topology.retry_queue(Kind::TaskAssigned, index)),
    );
    for queue in queues {
        let count = keel::jobs::topology::ready(&channel, &queue).await.unwrap();
        ready += u64::from(count);
    }
    connection.close(200, "counted".into()).await.ok();
    u64::try_from(unpublished).unwrap() + ready
}

/// An owner, a project and a member, and a task assigned to the member: one email job.
async fn assign(app: &TestApp) -> String {
    let owner = app.signup().await;
    let member = app.signup().await;
    let project = app.create_project(&owner, "Apollo").await;
    app.add_member(&owner, project, &member, "member").await;
    app.create_task(
        &owner,
        project,
        json!({"title": "survive a crash", "assignee_id": member.id}),
    )
    .await;
    member.email
}

#[tokio::test]
async fn a_worker_killed_mid_send_leaves_its_job_to_the_next_worker_which_sends_it_once() {
    // Arrange: an API-only app (no worker in the test process) and a worker process whose
    // SMTP server holds every answer to DATA for long enough to kill it mid-send.
    let sink = SmtpSink::start(Behaviour {
        delay: Duration::from_secs(10),
        failing: false,
    })
    .await;
    let mut tap = SmtpTap::start(&sink).await;
    let app = app(Role::Serve, &tap.url, &[]).await;
    // The default job timeout (30 s) outlasts the stalled send: only the kill ends it.
    let mut first = Keel::worker(&app, &tap.url, &[("KEEL_SMTP_TIMEOUT", "30s")]);
    first.wait_working().await;
    let recipient = assign(&app).await;
    assert!(
        tap.wait_until(Duration::from_secs(20), |wire| wire.messages_sent == 1)
            .await,
        "the first worker sent the message and awaits the answer; its output:\n{}",
        first.output()
    );
    let claimed = deliveries(&app).await;
    assert_eq!(claimed.len(), 1, "the send is claimed: {claimed:?}");
    let (job, state) = claimed[0].clone();
    assert_eq!(state, "sending");
    assert_eq!(tap.seen().closed_by_server, 0, "the connection is open");

    // Act: kill it mid-send, let the SMTP server answer at once, start another worker.
    first.kill();
    // The sink reads its delay when it has read the whole message, which may be after the
    // kill: it must have let go of the dead worker's connection before the delay changes,
    // or it could still take that message at once.
    assert!(
        tap.wait_until(Duration::from_secs(10), |wire| wire.closed_by_server >= 1)
            .await,
        "the SMTP server let go of the dead worker's connection"
    );
    assert_eq!(
        sink.accepted_count(),
        0,
        "the unanswered message was not taken"
    );
    sink.set_delay(Duration::ZERO);
    // A short job timeout makes the dead worker's claim stale after a second; until then
    // each redelivery finds it fresh and waits a retry delay.
    let mut second = Keel::worker(
        &app,
        &tap.url,
        &[
            ("KEEL_JOBS_TIMEOUT", "1s"),
            ("KEEL_JOBS_MAX_ATTEMPTS", "30"),
        ],
    );
    second.wait_working().await;

    // Assert: sent once, recorded sent, and nothing left to send it again.
    let sent = eventually(Duration::from_secs(30), async || all_sent(&app).await).await;
    assert!(
        sent,
        "the second worker sent the email; its output:\n{}",
        second.output()
    );
    assert!(
        eventually(Duration::from_secs(20), async || email_backlog(&app).await
            == 0)
        .await,
        "every copy of the job settled"
    );
    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "one email: {messages:?}");
    assert_eq!(messages[0].to, [recipient]);
    assert!(
        messages[0]
            .data
            .contains(&format!("Message-ID: <{job}@keel>")),
        "{}",
        messages[0].data
    );
    assert_eq!(
        deliveries(&app).await,
        [(job, "sent".to_owned())],
        "one delivery record, sent"
    );
}

#[tokio::test]
async fn keel_jobs_dead_lists_a_parked_email_and_keel_jobs_replay_delivers_it_once() {
    // Arrange: a worker in the test process, an SMTP server that refuses for now (451), and
    // two attempts before a job is parked.
    let sink = SmtpSink::start(Behaviour {
        delay: Duration::ZERO,
        failing: true,
    })
    .await;
    let smtp = sink.url();
    let app = app(Role::All, &smtp, &[("KEEL_JOBS_MAX_ATTEMPTS", "2")]).await;
    let recipient = assign(&app).await;
    let job: Uuid = sqlx::query_scalar("select id from outbox where kind = 'email.task_assigned'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let topology = keel::jobs::relay::topology(&app.state.config);
    let parked = eventually(Duration::from_secs(20), async || {
        !keel::jobs::dead::list(&app.state.broker, &topology, 10, Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    assert!(parked, "the job is parked after its second attempt");

    // Act and assert: the listing, as a line and as JSON.
    let listed = keel_jobs(&app, &smtp, &["dead"]).await;
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 1, "one parked job: {listed}");
    for part in ["email.task_assigned", &job.to_string(), "attempts=2", "451"] {
        assert!(lines[0].contains(part), "{part} in {:?}", lines[0]);
    }
    let listed = keel_jobs(&app, &smtp, &["dead", "--json"]).await;
    let objects: Vec<Value> = listed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(objects.len(), 1, "one JSON object: {listed}");
    assert_eq!(objects[0]["kind"], "email.task_assigned");
    assert_eq!(objects[0]["id"], job.to_string());
    assert_eq!(objects[0]["attempts"], 2);
    let last_error = objects[0]["last_error"].as_str().unwrap();
    assert!(last_error.contains("451"), "{last_error}");
    assert_eq!(sink.accepted_count(), 0, "listing sends nothing");

    // Act and assert: the replay, once the SMTP server takes mail again.
    sink.set_failing(false);
    let replayed = keel_jobs(&app, &smtp, &["replay", "--kind", "email.task_assigned"]).await;
    assert_eq!(replayed.trim(), "replayed 1 job(s)");
    let delivered = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(delivered.len(), 1, "the replayed job sends its email");
    assert_eq!(delivered[0].to, [recipient]);
    let sent = eventually(Duration::from_secs(10), async || all_sent(&app).await).await;
    assert!(sent, "the delivery is recorded sent");
    assert!(
        eventually(Duration::from_secs(20), async || email_backlog(&app).await
            == 0)
        .await,
        "every copy of the job settled"
    );
    assert_eq!(
        keel_jobs(&app, &smtp, &["dead"]).await,
        "",
        "nothing parked"
    );
    assert_eq!(sink.accepted_count(), 1, "sent once");
    assert_eq!(deliveries(&app).await, [(job, "sent".to_owned())]);
}
