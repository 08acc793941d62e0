//! The SMTP protocol of Keel's two SMTP sinks, the tests' (`tests/api/smtp_sink.rs`) and
//! the load tests' (`examples/smtp_sink.rs`): enough RFC 5321 for lettre 0.11's client over
//! plaintext (no STARTTLS, no AUTH), without the I/O policy around it — each sink decides
//! when and how to answer the end of `DATA`. Included by both with `#[path]`: a module of
//! neither the library (Keel does not ship a mail server) nor one test binary.

use std::io;

use tokio::net::TcpStream;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _,
    BufReader,
};

/// RFC 5321 allows command lines of 512 octets; leave headroom, but keep a bound.
const MAX_COMMAND_LINE: usize = 4 * 1024;
/// The largest message accepted; a client sending more loses its connection.
const MAX_MESSAGE: usize = 10 * 1024 * 1024;
/// The envelope of the transaction in progress on one connection.
#[derive(Debug, Default)]
pub(crate) struct Transaction {
    pub(crate) from: Option<String>,
    pub(crate) to: Vec<String>,
}

/// What a command line asks of the connection.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Reply(&'static str),
    Data,
    Quit,
}

/// Serves one connection: the SMTP conversation, with `deliver` deciding the answer to the
/// end of each message's `DATA` (and doing whatever the sink does with the message). A
/// client that hangs up before that answer was never told its message was taken: `deliver`
/// is dropped unfinished, as a server that commits a message only with its answer would —
/// a worker killed mid-send leaves nothing behind in the sink.
pub(crate) async fn serve<F>(
    stream: TcpStream,
    greeting: &str,
    mut deliver: impl FnMut(Transaction, Vec<u8>) -> F,
) -> io::Result<()>
where
    F: Future<Output = io::Result<&'static str>>,
{
    let mut conn = BufReader::new(stream);
    reply(&mut conn, greeting).await?;
    let mut transaction = Transaction::default();
    while let Some(line) = read_line(&mut conn, MAX_COMMAND_LINE).await? {
        match step(&String::from_utf8_lossy(trim_eol(&line)), &mut transaction) {
            Step::Reply(text) => reply(&mut conn, text).await?,
            Step::Data => {
                reply(&mut conn, "354 end data with <CR><LF>.<CR><LF>").await?;
                let message = read_message(&mut conn).await?;
                let answer = deliver(std::mem::take(&mut transaction), message);
                let peer_gone = async { matches!(conn.fill_buf().await, Ok([]) | Err(_)) };
                let answer = tokio::select! {
                    answer = answer => answer?,
                    true = peer_gone => return Ok(()),
                };
                reply(&mut conn, answer).await?;
            }
            Step::Quit => return reply(&mut conn, "221 2.0.0 bye").await,
        }
    }
    Ok(())
}

/// The SMTP state machine without the I/O, one command line at a time.
fn step(line: &str, transaction: &mut Transaction) -> Step {
    let (verb, args) = line.split_once(' ').unwrap_or((line, ""));
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => {
            *transaction = Transaction::default();
            Step::Reply("250-localhost\r\n250 8BITMIME")
        }
        "HELO" => {
            *transaction = Transaction::default();
            Step::Reply("250 localhost")
        }
        "MAIL" if transaction.from.is_some() => Step::Reply("503 5.5.1 MAIL already given"),
        "MAIL" => match path(args, "FROM:") {
            Some(from) => {
                transaction.from = Some(from);
                Step::Reply("250 2.1.0 OK")
            }
            None => Step::Reply("501 5.5.4 syntax: MAIL FROM:<address>"),
        },
        "RCPT" if transaction.from.is_none() => Step::Reply("503 5.5.1 need MAIL first"),
        "RCPT" => match path(args, "TO:").filter(|to| !to.is_empty()) {
            Some(to) => {
                transaction.to.push(to);
                Step::Reply("250 2.1.5 OK")
            }
            None => Step::Reply("501 5.5.4 syntax: RCPT TO:<address>"),
        },
        "DATA" if transaction.from.is_none() || transaction.to.is_empty() => {
            Step::Reply("503 5.5.1 need MAIL and RCPT first")
        }
        "DATA" => Step::Data,
        "RSET" => {
            *transaction = Transaction::default();
            Step::Reply("250 2.0.0 OK")
        }
        "NOOP" => Step::Reply("250 2.0.0 OK"),
        "QUIT" => Step::Quit,
        _ => Step::Reply("502 5.5.2 command not recognized"),
    }
}

/// The address in `FROM:<a@b> PARAMS` or `TO:<a@b>`; parameters (lettre's `BODY=8BITMIME`)
/// are ignored.
fn path(args: &str, keyword: &str) -> Option<String> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args.get(keyword.len()..)?.trim_start().strip_prefix('<')?;
    let (address, _parameters) = rest.split_once('>')?;
    Some(address.to_owned())
}

/// Reads the message after 354 up to the line that is just ".", undoing the client's
/// dot-stuffing (RFC 5321 4.5.2).
async fn read_message<C: AsyncBufRead + Unpin>(conn: &mut C) -> io::Result<Vec<u8>> {
    let mut message = Vec::new();
    loop {
        let room = MAX_MESSAGE - message.len();
        // +3: a full message still leaves room for the ".\r\n" that ends it.
        let line = read_line(conn, room + 3)
            .await?
            .ok_or_else(|| broken("the client hung up during DATA"))?;
        if trim_eol(&line) == b"." {
            return Ok(message);
        }
        let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
        if unstuffed.len() > room {
            return Err(broken("the message is over the size cap"));
        }
        message.extend_from_slice(unstuffed);
    }
}

/// One line, terminator included, of at most `cap` bytes; `None` when the client closed
/// the connection between lines.
async fn read_line<C: AsyncBufRead + Unpin>(
    conn: &mut C,
    cap: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let cap = u64::try_from(cap).unwrap_or(u64::MAX);
    conn.take(cap).read_until(b'\n', &mut line).await?;
    if line.is_empty() {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        return Err(broken("a line over the cap, or cut off by the client"));
    }
    Ok(Some(line))
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

async fn reply<C: AsyncWrite + Unpin>(conn: &mut C, text: &str) -> io::Result<()> {
    conn.write_all(format!("{text}\r\n").as_bytes()).await?;
    conn.flush().await
}

fn broken(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}
