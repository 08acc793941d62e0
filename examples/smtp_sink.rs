//! The SMTP server of `loadtests/jobs-bench.sh`: it accepts every message, answers the end
//! of `DATA` after a fixed delay, and appends one line per accepted message to a log — its
//! `Message-ID` and the time it was accepted, in Unix microseconds — so that the bench can
//! join each email with the outbox row that caused it (Keel's `Message-ID` is
//! `<{job id}@keel>`, and the job id is the outbox row's id).
//!
//! ```text
//! smtp_sink ADDR DELAY LOG LIFETIME
//! smtp_sink 127.0.0.1:18925 200ms target/bench/jobs-bench/accepted-1.tsv 1h
//! ```
//!
//! * **Why an example, not the tests' sink.** `tests/api/smtp_sink.rs` is a module of the
//!   integration-test binary: an example cannot import it, it keeps messages in memory for
//!   assertions instead of logging arrival times, and it lives only as long as one test.
//!   Sharing one sink would mean moving test machinery into the library that Keel ships.
//!   The protocol is the tests' (`smtp/protocol.rs`, included by both); what differs is
//!   the process around it.
//! * **The delay** is held before the answer to the final `.`, as a slow server does: the
//!   sender waits for it, whether it is a request (`async_jobs` off) or the worker.
//! * **The log** is tab-separated, `<message-id>\t<unix µs>\n`, one `write` per line on a
//!   file opened for appending, so a reader never sees half a line (`-` for a message
//!   without a `Message-ID`). The time is taken just before the `250` is sent: the moment
//!   the message counts as delivered.
//! * **Bounds.** It listens on a loopback address only, holds at most
//!   [`MAX_CONNECTIONS`] connections, caps lines and messages, and exits on SIGTERM, on
//!   Ctrl-C or after `LIFETIME`, whichever comes first.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[path = "smtp/protocol.rs"]
mod protocol;

/// Connections open at once (Keel's pools hold a few each); more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;

/// Where accepted messages are recorded. A mutex around an unbuffered file: each line is
/// one `write(2)` in append mode, and the lock keeps lines from interleaving.
struct Log(Mutex<std::fs::File>);

impl Log {
    fn record(&self, message_id: &str) -> io::Result<()> {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let line = format!("{message_id}\t{micros}\n");
        let mut file = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        file.write_all(line.as_bytes())
    }
}

/// The arguments, checked: the address must be on this machine.
fn arguments() -> anyhow::Result<(SocketAddr, Duration, PathBuf, Duration)> {
    let usage =
        "usage: smtp_sink ADDR DELAY LOG LIFETIME (e.g. 127.0.0.1:18925 200ms accepted.tsv 1h)";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, delay, log, lifetime] = args.as_slice() else {
        bail!("{usage}");
    };
    let addr: SocketAddr = addr.parse().context("ADDR (127.0.0.1:PORT)")?;
    if !addr.ip().is_loopback() {
        bail!("ADDR={addr}: a loopback address (the sink serves this machine only)");
    }
    let delay = humantime::parse_duration(delay).context("DELAY (0ms, 200ms, 1s)")?;
    let lifetime = humantime::parse_duration(lifetime).context("LIFETIME (10m, 1h)")?;
    if lifetime.is_zero() {
        bail!("LIFETIME must be positive");
    }
    Ok((addr, delay, PathBuf::from(log), lifetime))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (addr, delay, path, lifetime) = arguments()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("open the log {}", path.display()))?;
    let log = Arc::new(Log(Mutex::new(file)));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    eprintln!("smtp_sink: listening on {addr}, answering DATA after {delay:?}");

    let stop = CancellationToken::new();
    let term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    tokio::spawn(stop_on_signal(term, lifetime, stop.clone()));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot?,
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors and the like: give the machine a moment rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (log, stop) = (Arc::clone(&log), stop.clone());
        tokio::spawn(async move {
            // An error ends only this connection: a broken client just gets hung up on.
            let serve = protocol::serve(
                stream,
                "220 localhost Keel bench SMTP sink",
                |_, message: Vec<u8>| {
                    let log = &log;
                    async move {
                        tokio::time::sleep(delay).await;
                        log.record(&message_id(&message))?;
                        Ok("250 2.0.0 OK queued")
                    }
                },
            );
            let _ = stop.run_until_cancelled(serve).await;
            drop(slot);
        });
    }
    stop.cancel();
    Ok(())
}

/// Cancels `stop` on SIGTERM, on Ctrl-C, or once `lifetime` has passed.
async fn stop_on_signal(mut term: Signal, lifetime: Duration, stop: CancellationToken) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        () = tokio::time::sleep(lifetime) => {
            eprintln!("smtp_sink: LIFETIME {lifetime:?} is over; stopping");
        }
    }
    stop.cancel();
}

/// The message's `Message-ID` header value, or `-`: the first such header of the header
/// section (before the first empty line), matched without regard to case.
fn message_id(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    text.lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("message-id")
                .then(|| value.trim().to_owned())
        })
        .filter(|id| !id.is_empty() && !id.contains(['\t', '\n']))
        .unwrap_or_else(|| "-".to_owned())
}
