//! The mail transport: SMTP through lettre when `SMTP_URL` is set, else `.eml` files in
//! `KEEL_MAILBOX_DIR` (so a run with no SMTP server works end to end), and the one email
//! Keel sends.
//!
//! # When the SMTP server is down
//!
//! Every send passes a circuit breaker (`smtp`). While it is open, a send fails at once as a
//! transient error, without touching the network: the worker puts the job in its retry
//! queue, and the naive inline path (`async_jobs` off) records it in the outbox — in both
//! cases as it would after an SMTP timeout, only without the wait. Nothing is lost, and a
//! request on the naive path is not held up by a server that is known to be down. What
//! counts against the server: a transient error (4xx, a connection or timeout failure) and
//! a slow send; a permanent refusal (5xx: a bad address) is the server working.
//!
//! The workshop's `smtp` fault switch (`resilience::fault`) acts once per send, inside the
//! breaker's permit and before the send: an injected error is a transient failure (the job
//! is retried later, and the breaker counts it), an injected latency a slow send. It acts on
//! the mailbox transport too, which stands in for the SMTP server when `SMTP_URL` is unset,
//! so that a workshop without a mail server sees the switch do something.
//!
//! A send is not retried here: the job is, through its retry queues, whose delays outlast
//! a mail server's restart. An immediate retry would help only against a connection that
//! died idle, which lettre's pool already tests before use, and a send that failed after
//! the message was handed over may have been delivered.
//!
//! Inside a request (the naive path), a send is cut to what is left of the request's
//! deadline (`crate::resilience::deadline`); lettre's own `KEEL_SMTP_TIMEOUT` bounds each
//! command.

use std::path::PathBuf;
use std::sync::Arc;

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::config::JobsConfig;
use crate::db::jobs::AssignmentMail;
use crate::resilience::{Breaker, BreakerState, BreakerSwitch, Dependency, Faults, deadline};

/// Why a send failed, as the retry policy sees it.
#[derive(Debug)]
pub enum MailError {
    /// The server may take it later (4xx, a connection or timeout failure).
    Transient(String),
    /// It never will (5xx: a refused address, a message it rejects).
    Permanent(String),
}

/// What a send refused by the breaker fails with.
const BREAKER_OPEN: &str = "smtp: circuit breaker open";

/// Where emails go. Cloning shares the transport (and its connection pool, and its breaker).
#[derive(Clone)]
pub struct Mailer(Arc<Inner>);

struct Inner {
    transport: Transport,
    /// The workshop's fault switches, of which this reads `smtp` (module doc).
    faults: Faults,
}

enum Transport {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
        breaker: Breaker,
    },
    Mailbox {
        dir: PathBuf,
        from: Mailbox,
    },
}

impl Mailer {
    /// The transport of `config`; an SMTP one passes a breaker that follows `breakers` (the
    /// `circuit_breaker` fix flag, `Flags::breaker_switch`). Either injects the `smtp`
    /// fault of `faults` (`Flags::faults`).
    pub fn new(
        config: &JobsConfig,
        breakers: &BreakerSwitch,
        faults: &Faults,
    ) -> anyhow::Result<Self> {
        let from = config.smtp_from.clone();
        let transport = match config.smtp() {
            Some(url) => Transport::Smtp {
                transport: AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?
                    .timeout(Some(config.smtp_timeout))
                    .build(),
                from,
                breaker: Breaker::new("smtp", config.smtp_breaker).with_switch(breakers),
            },
            None => Transport::Mailbox {
                dir: config.mailbox_dir.clone(),
                from,
            },
        };
        Ok(Self(Arc::new(Inner {
            transport,
            faults: faults.clone(),
        })))
    }

    /// Whether emails go to an SMTP server (which readiness then probes).
    pub fn is_smtp(&self) -> bool {
        matches!(&self.0.transport, Transport::Smtp { .. })
    }

    /// For readiness: the breaker is not open (an open breaker counts as down), and the
    /// server answers a `NOOP` on a pooled connection. Always up with the mailbox transport.
    pub async fn probe(&self) -> Result<(), String> {
        let Transport::Smtp {
            transport, breaker, ..
        } = &self.0.transport
        else {
            return Ok(());
        };
        if breaker.state() == BreakerState::Open {
            return Err(BREAKER_OPEN.to_owned());
        }
        match transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err("smtp: the server did not answer NOOP".to_owned()),
            Err(e) => Err(format!("smtp: {e}")),
        }
    }

    /// The `Message-ID` of job `job_id`'s email: the same on every send of it.
    pub fn message_id(job_id: Uuid) -> String {
        format!("<{job_id}@keel>")
    }

    /// Sends job `job_id`'s assignment email under `message_id` ([`Mailer::message_id`],
    /// derived from the job so that a resend carries the same one).
    pub async fn send_assignment(
        &self,
        job_id: Uuid,
        message_id: &str,
        mail: &AssignmentMail,
    ) -> Result<(), MailError> {
        let (from, transport) = match &self.0.transport {
            Transport::Smtp { from, .. } => (from, "smtp"),
            Transport::Mailbox { from, .. } => (from, "mailbox"),
        };
        let message = assignment(from, message_id, mail)?;
        let span = tracing::info_span!(
            "send email",
            otel.kind = "client",
            mail.transport = transport,
            otel.status_code = tracing::field::Empty,
        );
        let sent = self.deliver(job_id, message).instrument(span.clone()).await;
        if sent.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        sent
    }

    async fn deliver(&self, job_id: Uuid, message: Message) -> Result<(), MailError> {
        match &self.0.transport {
            Transport::Smtp {
                transport, breaker, ..
            } => {
                let Some(permit) = breaker.try_acquire() else {
                    return Err(MailError::Transient(BREAKER_OPEN.into()));
                };
                if let Err(fault) = self.inject().await {
                    permit.failure();
                    return Err(fault);
                }
                let send = transport.send(message);
                let sent = match deadline::remaining() {
                    Some(left) => tokio::time::timeout(left, send).await,
                    None => Ok(send.await),
                };
                match sent {
                    Ok(Ok(_)) => {
                        permit.success();
                        Ok(())
                    }
                    Ok(Err(e)) if e.is_permanent() => {
                        permit.success();
                        Err(MailError::Permanent(e.to_string()))
                    }
                    Ok(Err(e)) => {
                        permit.failure();
                        Err(MailError::Transient(e.to_string()))
                    }
                    // Cut by the request's deadline: that says nothing about the server, so
                    // the permit is dropped unsettled.
                    Err(_) => Err(MailError::Transient(
                        "smtp: the request's deadline came first".into(),
                    )),
                }
            }
            Transport::Mailbox { dir, .. } => {
                self.inject().await?;
                write_eml(dir, job_id, &message.formatted())
                    .await
                    .map_err(|e| MailError::Transient(format!("mailbox {}: {e}", dir.display())))
            }
        }
    }

    /// The `smtp` fault, if one is set: its latency, then perhaps a transient failure.
    async fn inject(&self) -> Result<(), MailError> {
        self.0
            .faults
            .inject(Dependency::Smtp)
            .await
            .map_err(|fault| MailError::Transient(fault.to_string()))
    }
}

/// Writes the message as `{job}.eml`, through a temporary file and a rename, so that a
/// reader never sees half a message and a resend replaces the file instead of adding one.
async fn write_eml(dir: &std::path::Path, job_id: Uuid, bytes: &[u8]) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".{job_id}.eml.tmp"));
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, dir.join(format!("{job_id}.eml"))).await
}

/// The assignment email: a plain-text and an HTML part naming the recipient, the task and
/// the project.
fn assignment(
    from: &Mailbox,
    message_id: &str,
    mail: &AssignmentMail,
) -> Result<Message, MailError> {
    let to = Mailbox::new(
        Some(mail.recipient_name.clone()),
        mail.recipient_email
            .parse()
            .map_err(|e| MailError::Permanent(format!("recipient address: {e}")))?,
    );
    let plain = format!(
        "Hello {name},\n\nYou have been assigned a task.\n\nTask: {task}\nProject: {project}\n\n-- Keel\n",
        name = mail.recipient_name,
        task = mail.task_title,
        project = mail.project_name,
    );
    let html = format!(
        "<!doctype html>\n<html><body>\n<p>Hello {name},</p>\n<p>You have been assigned a task.</p>\n<p>Task: <strong>{task}</strong><br>\nProject: <strong>{project}</strong></p>\n<p>&mdash; Keel</p>\n</body></html>\n",
        name = escape(&mail.recipient_name),
        task = escape(&mail.task_title),
        project = escape(&mail.project_name),
    );
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(format!("Assigned to you: {}", mail.task_title))
        .message_id(Some(message_id.to_owned()))
        .multipart(MultiPart::alternative_plain_html(plain, html))
        .map_err(|e| MailError::Permanent(format!("building the message: {e}")))
}

/// HTML-escapes text written by users (a task title, a name).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail() -> AssignmentMail {
        AssignmentMail {
            task_title: "Fix <script> & ship".into(),
            project_name: "Apollo".into(),
            recipient_name: "Ada".into(),
            recipient_email: "ada@example.com".into(),
        }
    }

    #[test]
    fn the_email_names_recipient_task_and_project_in_both_parts_escaped_in_html() {
        let from: Mailbox = "Keel <keel@localhost>".parse().unwrap();
        let message = assignment(&from, "<id@keel>", &mail()).unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        assert!(text.contains("To: Ada <ada@example.com>"), "{text}");
        assert!(text.contains("Message-ID: <id@keel>"), "{text}");
        assert!(text.contains("multipart/alternative"), "{text}");
        assert!(
            text.contains("text/plain") && text.contains("text/html"),
            "{text}"
        );
        assert!(
            text.contains("Task: Fix <script> & ship\r\nProject: Apollo"),
            "{text}"
        );
        assert!(text.contains("Fix &lt;script&gt; &amp; ship"), "{text}");
    }

    #[tokio::test]
    async fn the_mailbox_writes_one_file_per_job_and_a_resend_replaces_it() {
        let dir = std::env::temp_dir().join(format!("keel-mailbox-{}", Uuid::now_v7()));
        let config = {
            let mut config = crate::config::Config::from_map(
                &[("KEEL_MAILBOX_DIR".to_owned(), dir.display().to_string())]
                    .into_iter()
                    .collect(),
                crate::config::Environment::Dev,
            )
            .unwrap();
            config.jobs.smtp_url = None;
            config.jobs
        };
        let mailer = Mailer::new(&config, &BreakerSwitch::default(), &Faults::default()).unwrap();
        let job = Uuid::now_v7();
        for _ in 0..2 {
            mailer
                .send_assignment(job, &Mailer::message_id(job), &mail())
                .await
                .unwrap();
        }
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(files.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
