//! The two listeners and what bounds a request's life on them: body size, compression
//! threshold, readiness probe timeout, and the shutdown drain.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::vars::{ConfigError, Vars, error};

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `KEEL_HTTP_ADDR`: the public listener.
    pub addr: SocketAddr,
    /// `KEEL_ADMIN_ADDR`: the admin listener (health, readiness, metrics, flags).
    pub admin_addr: SocketAddr,
    /// `KEEL_MAX_BODY_BYTES`: larger request bodies get 413.
    pub max_body_bytes: usize,
    /// `KEEL_COMPRESSION_MIN_BYTES`: smaller responses are sent uncompressed. Below about
    /// a packet, gzip costs CPU on both ends and saves no round trip (tower-http's 32-byte
    /// default put deflate in the profile of every small JSON read; docs/benchmarks.md).
    pub compression_min_bytes: u64,
    /// `KEEL_SHUTDOWN_DELAY`: after SIGTERM, how long `/readyz` reports 503 while the
    /// listeners still accept, so that a load balancer stops routing here before the
    /// listeners close (0 locally; a few seconds behind Kubernetes endpoints).
    pub shutdown_delay: Duration,
    /// `KEEL_SHUTDOWN_TIMEOUT`: the deadline for in-flight requests once the listeners
    /// have stopped accepting, and then for the background tasks, which stop within what
    /// is left of it; whatever is still running then is dropped (and named in the log).
    pub shutdown_timeout: Duration,
    /// `KEEL_READINESS_TIMEOUT`: how long `/readyz` waits for each dependency.
    pub readiness_timeout: Duration,
    /// `KEEL_TRUSTED_PROXIES`: comma-separated addresses or CIDR networks of the proxies in
    /// front of Keel; only a peer among them has its `X-Forwarded-For` read (see
    /// `http::client_ip`). Empty (the default): the socket's peer is the client.
    pub trusted_proxies: Vec<IpNet>,
}

impl HttpConfig {
    pub(super) fn read(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let http = Self {
            addr: vars.parse("KEEL_HTTP_ADDR", SocketAddr::from(([0, 0, 0, 0], 8080)))?,
            admin_addr: vars.parse("KEEL_ADMIN_ADDR", SocketAddr::from(([127, 0, 0, 1], 9000)))?,
            max_body_bytes: vars.range("KEEL_MAX_BODY_BYTES", 64 * 1024, 1024, 64 * 1024 * 1024)?,
            compression_min_bytes: vars.range("KEEL_COMPRESSION_MIN_BYTES", 1024, 0, 1 << 20)?,
            shutdown_delay: vars.duration_range(
                "KEEL_SHUTDOWN_DELAY",
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_secs(60),
            )?,
            shutdown_timeout: vars.duration_range(
                "KEEL_SHUTDOWN_TIMEOUT",
                Duration::from_secs(20),
                Duration::from_millis(100),
                Duration::from_secs(600),
            )?,
            readiness_timeout: vars.duration_range(
                "KEEL_READINESS_TIMEOUT",
                Duration::from_secs(1),
                Duration::from_millis(10),
                Duration::from_secs(30),
            )?,
            trusted_proxies: networks(vars, "KEEL_TRUSTED_PROXIES")?,
        };
        // Port 0 (tests) asks the OS for two different ephemeral ports, so it may repeat.
        if http.addr == http.admin_addr && http.addr.port() != 0 {
            return Err(error(
                "KEEL_ADMIN_ADDR",
                format!(
                    "{} is also KEEL_HTTP_ADDR; the admin listener must be separate",
                    http.addr
                ),
            ));
        }
        Ok(http)
    }
}

/// A comma-separated list of networks; a bare address is a network of one.
fn networks(vars: &Vars<'_>, var: &'static str) -> Result<Vec<IpNet>, ConfigError> {
    vars.list(var)
        .iter()
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    error(
                        var,
                        format!("{item:?} is not an address or a CIDR network (10.0.0.0/8)"),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars::{refused_var, with_vars};

    fn var_of(pairs: &[(&str, &str)]) -> &'static str {
        refused_var(pairs, HttpConfig::read)
    }

    #[test]
    fn defaults_serve_a_local_run() {
        let http = with_vars(&[], HttpConfig::read).unwrap();
        assert_eq!(http.addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(http.admin_addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(http.max_body_bytes, 65536);
        assert_eq!(http.compression_min_bytes, 1024);
        assert_eq!(http.shutdown_delay, Duration::ZERO);
        assert_eq!(http.shutdown_timeout, Duration::from_secs(20));
        assert_eq!(http.readiness_timeout, Duration::from_secs(1));
        assert!(http.trusted_proxies.is_empty());
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let http = with_vars(
            &[("KEEL_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1,::1")],
            HttpConfig::read,
        )
        .unwrap();
        let nets: Vec<String> = http.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);
        assert_eq!(
            var_of(&[("KEEL_TRUSTED_PROXIES", "10.0.0.0/33")]),
            "KEEL_TRUSTED_PROXIES"
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let http = with_vars(&[("KEEL_HTTP_ADDR", "")], HttpConfig::read).unwrap();
        assert_eq!(http.addr.port(), 8080);
    }

    #[test]
    fn both_listeners_may_ask_for_an_ephemeral_port() {
        let zero = "127.0.0.1:0";
        let http = with_vars(
            &[("KEEL_HTTP_ADDR", zero), ("KEEL_ADMIN_ADDR", zero)],
            HttpConfig::read,
        );
        assert!(http.is_ok());
    }

    #[test]
    fn each_kind_of_bad_value_names_its_variable() {
        assert_eq!(var_of(&[("KEEL_HTTP_ADDR", "localhost")]), "KEEL_HTTP_ADDR");
        assert_eq!(
            var_of(&[("KEEL_ADMIN_ADDR", "0.0.0.0:8080")]),
            "KEEL_ADMIN_ADDR"
        );
        assert_eq!(
            var_of(&[("KEEL_SHUTDOWN_TIMEOUT", "2h")]),
            "KEEL_SHUTDOWN_TIMEOUT"
        );
        assert_eq!(
            var_of(&[("KEEL_MAX_BODY_BYTES", "-1")]),
            "KEEL_MAX_BODY_BYTES"
        );
        assert_eq!(
            var_of(&[("KEEL_COMPRESSION_MIN_BYTES", "2000000")]),
            "KEEL_COMPRESSION_MIN_BYTES"
        );
        assert_eq!(
            var_of(&[("KEEL_SHUTDOWN_DELAY", "2m")]),
            "KEEL_SHUTDOWN_DELAY"
        );
        assert_eq!(
            var_of(&[("KEEL_READINESS_TIMEOUT", "1ms")]),
            "KEEL_READINESS_TIMEOUT"
        );
    }
}
