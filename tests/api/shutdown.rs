//! Graceful shutdown of the real binary: a request in flight when SIGTERM arrives
//! completes, new connections are refused, and the process exits 0.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::ConnectOptions as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{PASSWORD, TestDb};

/// Kills the child if the test fails before it exits.
struct Keel(Child);

impl Drop for Keel {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Starts `keel serve` on ephemeral ports and reads its addresses from its JSON log.
fn start_serve(database_url: &str) -> (Keel, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("serve")
        .env_clear()
        .envs([
            ("KEEL_ENV", "dev"),
            ("DATABASE_URL", database_url),
            ("KEEL_HTTP_ADDR", "127.0.0.1:0"),
            ("KEEL_ADMIN_ADDR", "127.0.0.1:0"),
            ("KEEL_LOG_FORMAT", "json"),
            ("KEEL_SHUTDOWN_TIMEOUT", "10s"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start keel serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let public = loop {
        let line = lines
            .next()
            .expect("keel logged its addresses before exiting")
            .expect("a line");
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if entry["message"] == "serving" {
            break entry["public"]
                .as_str()
                .expect("public address")
                .parse()
                .expect("an address");
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Keel(child), public)
}

async fn send_sigterm(child: &Child) {
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .await
        .expect("run kill");
    assert!(status.success());
}

#[tokio::test]
async fn a_request_in_flight_at_sigterm_completes_and_the_process_exits_0() {
    let test_db = TestDb::create().await;
    let url = test_db.options.to_url_lossy().to_string();
    let (mut keel, addr) = start_serve(&url);
    let client = reqwest::Client::new();
    let email = format!("{}@example.com", uuid::Uuid::now_v7().simple());
    let signup = client
        .post(format!("http://{addr}/v1/users"))
        .json(&serde_json::json!({"email": email, "name": "n", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 201);

    // Arrange a request that is provably in flight: its headers are in, and the server
    // has started reading the body (it answered `100 Continue`), but the body is not sent.
    let body = serde_json::json!({"email": email, "password": PASSWORD}).to_string();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/auth/token HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut interim))
        .await
        .expect("100 Continue within 10 s")
        .unwrap();
    assert!(interim.starts_with(b"HTTP/1.1 100 Continue"));

    send_sigterm(&keel.0).await;

    // The listener closes: a new connection is refused (bounded wait).
    let refused = crate::helpers::eventually(Duration::from_secs(5), async || {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused, "the listener stops accepting after SIGTERM");

    // The in-flight request still completes with 200.
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("the response within 10 s")
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("access_token"));

    let status = tokio::task::spawn_blocking(move || {
        let status = keel.0.wait();
        (status, keel)
    })
    .await
    .unwrap()
    .0
    .unwrap();
    assert!(status.success(), "exit status {status}");
}
