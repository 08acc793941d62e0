//! An SMTP server that the tests own: `SmtpSink` listens on 127.0.0.1 on an ephemeral port,
//! keeps every message it accepts, and can be made slow or failing while a test runs.
//!
//! Why not Mailpit or MailHog: neither is in any package registry this project can reach, so
//! a test could not count on one being there, and neither can be told to stall or to refuse
//! mail on cue. Sending mail has two failure modes worth testing — a server that is slow to
//! accept and one that answers with a transient error — and a test can only provoke them with
//! a server it controls. This one speaks just enough RFC 5321 for lettre 0.11's client over
//! plaintext (no STARTTLS, no AUTH): see [`SmtpSink::url`].
//!
//! Each sink is its own server, so tests running in parallel never see each other's mail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

// The protocol is shared with the load tests' sink (examples/smtp_sink.rs).
#[path = "../../examples/smtp/protocol.rs"]
mod protocol;

use protocol::Transaction;

/// How the sink answers the end of DATA: the two ways a real server makes sending mail hard.
#[derive(Clone, Copy, Debug, Default)]
pub struct Behaviour {
    /// Held back before answering the final "." — a slow server.
    pub delay: Duration,
    /// Answer the final "." with `451` (try again later) and keep nothing.
    pub failing: bool,
}

/// A message the sink accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The MAIL FROM address, without the angle brackets (empty for the null sender `<>`).
    pub from: String,
    /// The RCPT TO addresses, in the order given.
    pub to: Vec<String>,
    /// The message as sent after DATA, dot-stuffing undone, line endings as the client sent them.
    pub data: String,
}

/// What the connections share with the sink. Watch channels rather than mutexes: there is no
/// lock to poison, and `wait_for` can wait on a change without polling.
struct Shared {
    behaviour: watch::Sender<Behaviour>,
    received: watch::Sender<Vec<Received>>,
}

/// An SMTP server for one test; it stops when dropped.
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    // Cancels the accept loop and every open connection: a sink outliving its test would keep
    // a port and tasks alive in the shared test runtime's process.
    _stop: DropGuard,
}

impl SmtpSink {
    pub async fn start(behaviour: Behaviour) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SMTP sink to an ephemeral port");
        let addr = listener.local_addr().expect("the SMTP sink's address");
        let shared = Arc::new(Shared {
            behaviour: watch::Sender::new(behaviour),
            received: watch::Sender::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop.clone()));
        SmtpSink {
            addr,
            shared,
            _stop: stop.drop_guard(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The sink as a lettre connection URL. With the `smtp` scheme and no `tls` parameter,
    /// lettre 0.11's `from_url` leaves its builder at `Tls::None`: plaintext, no STARTTLS.
    /// (`?tls=none` is refused: lettre knows only `required` and `opportunistic`. And lettre
    /// compiles `from_url` only with a TLS feature; without one, `builder_dangerous(host)
    /// .port(port)` on [`SmtpSink::addr`] is the same plaintext transport.)
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn set_delay(&self, delay: Duration) {
        self.shared.behaviour.send_modify(|b| b.delay = delay);
    }

    pub fn set_failing(&self, failing: bool) {
        self.shared.behaviour.send_modify(|b| b.failing = failing);
    }

    pub fn messages(&self) -> Vec<Received> {
        self.shared.received.borrow().clone()
    }

    pub fn accepted_count(&self) -> usize {
        self.shared.received.borrow().len()
    }

    /// Waits until at least `count` messages have been accepted or `within` has passed, and
    /// returns what has arrived either way, so the test's assertion says what was missing.
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Received> {
        let mut arrivals = self.shared.received.subscribe();
        // Err means the time ran out: the answer is then whatever did arrive.
        let _ = tokio::time::timeout(within, arrivals.wait_for(|got| got.len() >= count)).await;
        self.messages()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors and the like: give the machine a moment rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tokio::spawn(async move {
            // An error ends only this connection: a broken client just gets hung up on.
            let serve = protocol::serve(
                stream,
                "220 localhost Keel test SMTP sink",
                |transaction, message| {
                    let shared = &shared;
                    async move { Ok(deliver(shared, transaction, message).await) }
                },
            );
            let _ = stop.run_until_cancelled(serve).await;
        });
    }
}

/// Decides the answer to the final ".", keeping the message unless the sink is failing.
async fn deliver(shared: &Shared, transaction: Transaction, message: Vec<u8>) -> &'static str {
    let behaviour = *shared.behaviour.borrow();
    tokio::time::sleep(behaviour.delay).await;
    if behaviour.failing {
        return "451 4.3.0 temporary failure";
    }
    let received = Received {
        from: transaction.from.unwrap_or_default(),
        to: transaction.to,
        data: String::from_utf8_lossy(&message).into_owned(),
    };
    shared.received.send_modify(|all| all.push(received));
    "250 2.0.0 OK queued"
}

#[cfg(test)]
mod tests {
    //! The sink driven by a raw SMTP client over TCP, as lettre would drive it: lettre is not
    //! a dependency of the crate, and a hand-written client also shows the exact bytes.

    use std::time::Instant;

    use tokio::io::AsyncWriteExt as _;

    use super::*;

    /// Enough of an SMTP client to hold a conversation and read multi-line replies.
    struct Client {
        conn: BufReader<TcpStream>,
    }

    impl Client {
        async fn connect(sink: &SmtpSink) -> Client {
            let stream = TcpStream::connect(sink.addr()).await.unwrap();
            let mut client = Client {
                conn: BufReader::new(stream),
            };
            let greeting = client.reply().await;
            assert!(greeting.starts_with("220 "), "greeting: {greeting:?}");
            client
        }

        /// Sends one command, or raw text that brings its own line end, and returns the reply.
        async fn send(&mut self, text: &str) -> String {
            let text = if text.ends_with('\n') {
                text.to_owned()
            } else {
                format!("{text}\r\n")
            };
            self.conn.write_all(text.as_bytes()).await.unwrap();
            self.reply().await
        }

        /// A whole reply: every "250-" line up to the last one, "250 ".
        async fn reply(&mut self) -> String {
            let mut reply = String::new();
            loop {
                let mut line = String::new();
                self.conn.read_line(&mut line).await.unwrap();
                assert!(line.ends_with("\r\n"), "a reply line in CRLF: {line:?}");
                reply.push_str(&line);
                if line.as_bytes().get(3) == Some(&b' ') {
                    return reply;
                }
            }
        }

        /// MAIL, RCPT, DATA and the message; returns the answer to the final ".".
        async fn transaction(&mut self, from: &str, to: &[&str], body: &str) -> String {
            assert!(
                self.send(&format!("MAIL FROM:<{from}>"))
                    .await
                    .starts_with("250 ")
            );
            for to in to {
                assert!(
                    self.send(&format!("RCPT TO:<{to}>"))
                        .await
                        .starts_with("250 ")
                );
            }
            assert!(self.send("DATA").await.starts_with("354 "));
            self.send(&format!("{body}.\r\n")).await
        }
    }

    #[tokio::test]
    async fn smtp_sink_keeps_a_message_for_two_recipients_intact() {
        let sink = SmtpSink::start(Behaviour::default()).await;
        assert_eq!(
            sink.url(),
            format!("smtp://127.0.0.1:{}", sink.addr().port())
        );
        let mut client = Client::connect(&sink).await;
        let ehlo = client.send("EHLO client.test").await;
        assert_eq!(ehlo, "250-localhost\r\n250 8BITMIME\r\n");

        // A client stuffs the lines ".hidden" and "." as "..hidden" and ".."; the sink must
        // take the dots out, and the lone "." must not end the message early.
        let body = "Subject: hi\r\n\r\n..hidden\r\n..\r\nlast line\r\n";
        let answer = client
            .transaction("keel@app.test", &["a@x.test", "b@y.test"], body)
            .await;
        assert!(answer.starts_with("250 "), "{answer:?}");
        assert_eq!(client.send("QUIT").await, "221 2.0.0 bye\r\n");

        let messages = sink.wait_for(1, Duration::from_secs(5)).await;
        let expected = Received {
            from: "keel@app.test".into(),
            to: vec!["a@x.test".into(), "b@y.test".into()],
            data: "Subject: hi\r\n\r\n.hidden\r\n.\r\nlast line\r\n".into(),
        };
        assert_eq!(messages, [expected]);
        assert_eq!(sink.accepted_count(), 1);
    }

    #[tokio::test]
    async fn smtp_sink_when_failing_answers_451_and_keeps_nothing() {
        let sink = SmtpSink::start(Behaviour::default()).await;
        sink.set_failing(true);
        let mut client = Client::connect(&sink).await;
        client.send("EHLO client.test").await;

        let answer = client
            .transaction("keel@app.test", &["a@x.test"], "x\r\n")
            .await;
        assert_eq!(answer, "451 4.3.0 temporary failure\r\n");
        assert!(
            sink.wait_for(1, Duration::from_millis(100))
                .await
                .is_empty()
        );
        assert_eq!(sink.accepted_count(), 0);

        // The switch works mid-run, and a failed transaction leaves the connection usable.
        sink.set_failing(false);
        let answer = client
            .transaction("keel@app.test", &["a@x.test"], "y\r\n")
            .await;
        assert!(answer.starts_with("250 "), "{answer:?}");
        assert_eq!(sink.accepted_count(), 1);
        assert_eq!(sink.messages()[0].data, "y\r\n");
    }

    #[tokio::test]
    async fn smtp_sink_delay_holds_back_the_answer_to_data() {
        let delay = Duration::from_millis(150);
        let sink = SmtpSink::start(Behaviour::default()).await;
        sink.set_delay(delay);
        let mut client = Client::connect(&sink).await;
        // Bare LF, as a sloppy client sends it, is taken for CRLF.
        assert_eq!(client.send("HELO client.test\n").await, "250 localhost\r\n");
        assert!(client.send("NOOP").await.starts_with("250 "));
        assert!(client.send("VRFY a@x.test").await.starts_with("502 "));

        let started = Instant::now();
        let answer = client.transaction("", &["a@x.test"], "slow\r\n").await;
        assert!(answer.starts_with("250 "), "{answer:?}");
        assert!(
            started.elapsed() >= delay,
            "answered after {:?}",
            started.elapsed()
        );
        assert_eq!(sink.messages()[0].from, "");
    }
}
