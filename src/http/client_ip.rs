//! The client's address: the socket's peer, or, when that peer is a trusted proxy, the
//! nearest untrusted address in `X-Forwarded-For`.
//!
//! The rate limits key anonymous budgets on it, and an idempotency key of an anonymous
//! caller is scoped to it, so it must not be something a client can choose. A client can
//! write any `X-Forwarded-For` it likes; only the proxies Keel runs behind
//! (`KEEL_TRUSTED_PROXIES`) append to it honestly. So the header is read only when the
//! peer is one of them, from the right (the entry the nearest proxy appended) leftwards,
//! skipping further trusted proxies; the first untrusted entry is the client. Entries left
//! of it were written by the client or by proxies nobody vouches for, and are ignored.
//!
//! [`resolve`] runs once per request, in the middleware stack, and leaves a [`ClientIp`]
//! in the request's extensions for the layers and handlers below.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address, as [`resolve`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

/// The networks whose `X-Forwarded-For` is believed (`KEEL_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`, given the request's headers.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        // Every X-Forwarded-For line, in order, is one list (RFC 9110 §5.3).
        let hops = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // An entry that is not an address ends the walk: whoever wrote it is not a
            // proxy we trust, and the last trusted hop is the best we know.
            let Ok(ip) = hop.parse::<IpAddr>().map(canonical) else {
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// An IPv4 peer on a dual-stack socket arrives as `::ffff:a.b.c.d`; budgets and trust
/// lists speak of `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Middleware: puts the request's [`ClientIp`] in its extensions. Without connection info
/// (a router driven in-process by a test) the peer counts as `0.0.0.0`.
pub async fn resolve(
    State(trusted): State<TrustedProxies>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let client = trusted.client(peer, request.headers());
    request.extensions_mut().insert(ClientIp(client));
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or(ClientIp(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let proxies = trusted(&["10.0.0.0/8"]);
        let headers = xff(&["1.2.3.4"]);
        assert_eq!(
            proxies.client(ip("203.0.113.9"), &headers),
            ip("203.0.113.9")
        );
        assert_eq!(
            TrustedProxies::default().client(ip("127.0.0.1"), &headers),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn a_trusted_peer_names_the_nearest_untrusted_hop() {
        let proxies = trusted(&["10.0.0.0/8", "127.0.0.1/32"]);
        // The client claims 6.6.6.6; the edge proxy saw 198.51.100.7; an inner proxy 10.1.2.3.
        let headers = xff(&["6.6.6.6, 198.51.100.7", "10.1.2.3"]);
        assert_eq!(
            proxies.client(ip("127.0.0.1"), &headers),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn a_trusted_peer_without_a_header_is_the_client() {
        let proxies = trusted(&["127.0.0.1/32"]);
        assert_eq!(
            proxies.client(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn garbage_ends_the_walk_at_the_last_trusted_hop() {
        let proxies = trusted(&["10.0.0.0/8"]);
        let headers = xff(&["198.51.100.7, unknown, 10.0.0.2"]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &headers), ip("10.0.0.2"));
    }

    #[test]
    fn mapped_ipv4_peers_are_plain_ipv4() {
        let proxies = trusted(&["127.0.0.1/32"]);
        let headers = xff(&["198.51.100.7"]);
        assert_eq!(
            proxies.client(ip("::ffff:127.0.0.1"), &headers),
            ip("198.51.100.7")
        );
        assert_eq!(
            TrustedProxies::default().client(ip("::ffff:192.0.2.1"), &HeaderMap::new()),
            ip("192.0.2.1")
        );
    }
}
