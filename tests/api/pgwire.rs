//! A statement log read off the wire: a TCP proxy between the service and Postgres that
//! parses the frontend side of the protocol and records the SQL of every statement
//! executed. It counts round trips the way the database sees them, without any help from
//! the code under test (which therefore cannot miscount).
//!
//! The pool behind it must not use TLS (`PgSslMode::Disable`): the proxy reads plain
//! protocol messages. Recognised: the extended protocol (`Parse` names a statement,
//! `Bind` ties it to a portal, `Execute` runs the portal) and simple `Query` messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sqlx::postgres::{PgPool, PgPoolOptions, PgSslMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{TestDb, postgres_addr};

/// The SQL of every statement executed through the proxy, in order.
#[derive(Clone, Default)]
pub struct StatementLog(Arc<Mutex<Vec<String>>>);

impl StatementLog {
    /// Takes the queries recorded so far. The `SET statement_timeout` that cuts each
    /// checkout to its request's deadline (`db::executor`) is left out: it reads no
    /// data, and the tests count the statements that do.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("statement log"))
            .into_iter()
            .filter(|sql| !sql.starts_with("SET statement_timeout"))
            .collect()
    }

    fn push(&self, sql: String) {
        self.0.lock().expect("statement log").push(sql);
    }
}

/// Starts the proxy in front of the local Postgres; returns a pool through it and its log.
pub async fn logged_pool(test_db: &TestDb) -> (PgPool, StatementLog) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the wire log");
    let addr = listener.local_addr().expect("wire log address");
    let log = StatementLog::default();
    let upstream = postgres_addr();
    let recorder = log.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(relay(client, upstream, recorder.clone()));
        }
    });
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_lazy_with(pool_options(test_db, addr));
    (pool, log)
}

fn pool_options(test_db: &TestDb, proxy: SocketAddr) -> sqlx::postgres::PgConnectOptions {
    test_db
        .options
        .clone()
        .host("127.0.0.1")
        .port(proxy.port())
        .ssl_mode(PgSslMode::Disable)
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, log: StatementLog) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let to_server = async {
        let mut parser = Parser::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                return server_write.shutdown().await;
            }
            parser.feed(&buf[..n], &log);
            server_write.write_all(&buf[..n]).await?;
        }
    };
    let to_client = tokio::io::copy(&mut server_read, &mut client_write);
    let _ = tokio::join!(to_server, to_client);
}

/// Parses the client's messages as they stream by.
#[derive(Default)]
struct Parser {
    pending: Vec<u8>,
    started: bool,
    statements: HashMap<String, String>,
    portals: HashMap<String, String>,
}

impl Parser {
    fn feed(&mut self, bytes: &[u8], log: &StatementLog) {
        self.pending.extend_from_slice(bytes);
        loop {
            if !self.started {
                // The startup message has no type byte: a length, then the body.
                let Some(len) = read_i32(&self.pending, 0) else {
                    return;
                };
                if self.pending.len() < len as usize {
                    return;
                }
                self.pending.drain(..len as usize);
                self.started = true;
                continue;
            }
            let Some(len) = read_i32(&self.pending, 1) else {
                return;
            };
            let total = 1 + len as usize;
            if self.pending.len() < total {
                return;
            }
            let message: Vec<u8> = self.pending.drain(..total).collect();
            self.handle(message[0], &message[5..], log);
        }
    }

    fn handle(&mut self, kind: u8, body: &[u8], log: &StatementLog) {
        let mut fields = body
            .split(|&b| b == 0)
            .map(|f| String::from_utf8_lossy(f).into_owned());
        match kind {
            b'P' => {
                let (name, sql) = (
                    fields.next().unwrap_or_default(),
                    fields.next().unwrap_or_default(),
                );
                self.statements.insert(name, sql);
            }
            b'B' => {
                let (portal, statement) = (
                    fields.next().unwrap_or_default(),
                    fields.next().unwrap_or_default(),
                );
                self.portals.insert(portal, statement);
            }
            b'E' => {
                let portal = fields.next().unwrap_or_default();
                let sql = self
                    .portals
                    .get(&portal)
                    .and_then(|statement| self.statements.get(statement))
                    .cloned()
                    .unwrap_or_else(|| "<unknown statement>".into());
                log.push(sql);
            }
            b'Q' => log.push(fields.next().unwrap_or_default()),
            _ => {}
        }
    }
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    bytes
        .get(at..at + 4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}
