//! Start-up refuses a bad configuration with one line that names the variable.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `keel <role>` with exactly `vars` as its environment; returns its exit status
/// and stderr. Bounded: a process that has not exited after 20 s fails the test.
fn run_keel(role: &str, vars: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg(role)
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keel");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for keel") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().ok();
            panic!("keel {role} did not exit with {vars:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    (status, stderr)
}

fn assert_refused(role: &str, vars: &[(&str, &str)], var: &str) {
    let (status, stderr) = run_keel(role, vars);
    assert!(!status.success(), "{role} with {vars:?} must not start");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(
        stderr.starts_with(&format!("keel: invalid configuration: {var}: ")),
        "names {var}: {stderr:?}"
    );
}

#[test]
fn a_bad_value_of_each_kind_stops_start_up_naming_its_variable() {
    let dev = ("KEEL_ENV", "dev");
    assert_refused(
        "serve",
        &[dev, ("KEEL_HTTP_ADDR", "localhost")],
        "KEEL_HTTP_ADDR",
    );
    assert_refused(
        "serve",
        &[dev, ("KEEL_DB_MAX_CONNECTIONS", "lots")],
        "KEEL_DB_MAX_CONNECTIONS",
    );
    assert_refused(
        "serve",
        &[dev, ("KEEL_DB_MAX_CONNECTIONS", "0")],
        "KEEL_DB_MAX_CONNECTIONS",
    );
    assert_refused(
        "serve",
        &[dev, ("KEEL_SHUTDOWN_TIMEOUT", "soon")],
        "KEEL_SHUTDOWN_TIMEOUT",
    );
    assert_refused(
        "serve",
        &[dev, ("KEEL_LOG_FORMAT", "xml")],
        "KEEL_LOG_FORMAT",
    );
    assert_refused("serve", &[dev, ("RUST_LOG", "keel=loudest")], "RUST_LOG");
    assert_refused(
        "serve",
        &[dev, ("DATABASE_URL", "mysql://localhost/keel")],
        "DATABASE_URL",
    );
    assert_refused("serve", &[("KEEL_ENV", "staging")], "KEEL_ENV");
    assert_refused(
        "migrate",
        &[("DATABASE_URL", "postgres://h:port/db")],
        "DATABASE_URL",
    );
}

#[test]
fn serve_defaults_to_prod_and_refuses_development_secrets() {
    assert_refused("serve", &[], "KEEL_JWT_SECRET");
    assert_refused(
        "serve",
        &[("KEEL_JWT_SECRET", keel::config::DEV_JWT_SECRET)],
        "KEEL_JWT_SECRET",
    );
    assert_refused(
        "serve",
        &[("KEEL_JWT_SECRET", "a-strong-production-secret-0123456789")],
        "KEEL_ADMIN_TOKEN",
    );
    assert_refused(
        "serve",
        &[
            ("KEEL_JWT_SECRET", "a-strong-production-secret-0123456789"),
            ("KEEL_ADMIN_TOKEN", "short"),
        ],
        "KEEL_ADMIN_TOKEN",
    );
}

#[test]
fn a_password_in_database_url_never_reaches_the_error() {
    let (_, stderr) = run_keel(
        "serve",
        &[
            ("KEEL_ENV", "dev"),
            ("DATABASE_URL", "postgres://u:hunter2-secret@h:nope/db"),
        ],
    );
    assert!(stderr.contains("DATABASE_URL"));
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
