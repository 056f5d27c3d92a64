//! Which hosts and origins an open server (no tokens file) answers. CORS alone does not
//! protect it: a page on another domain can rebind its own name to 127.0.0.1 and is then
//! same-origin, so the browser sends its requests without asking. Such a request still
//! names the attacker's domain in `Host`, so an open server answers only requests whose
//! `Host` (or HTTP/2 `:authority`) is a loopback name or address and whose `Origin`, when
//! present, is a page served from this machine; anything else is 403, the page included.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// The middleware of an open server: refuses requests that may come from a rebound name.
pub async fn loopback_only(request: Request, next: Next) -> Response {
    match refusal(&request) {
        Some(reason) => (StatusCode::FORBIDDEN, reason).into_response(),
        None => next.run(request).await,
    }
}

/// Why a request is refused, if it is. Every name the request gives for its target (the
/// `Host` header, and the HTTP/2 `:authority` or an absolute URI) must be loopback, and it
/// must give one.
fn refusal(request: &Request) -> Option<&'static str> {
    // A Host that is not text is not loopback: "" fails the check below.
    let header = request
        .headers()
        .get(http::header::HOST)
        .map(|value| value.to_str().unwrap_or_default());
    let authority = request.uri().authority().map(|a| a.as_str());
    let names = [header, authority];
    let named = names.iter().any(Option::is_some);
    if !named || names.iter().flatten().any(|name| !is_loopback_host(name)) {
        return Some(
            "this server has no tokens file, so it answers only requests addressed to \
             localhost or a loopback address",
        );
    }
    let origin = request.headers().get(http::header::ORIGIN);
    if origin.is_some_and(|origin| !is_local_origin(origin.as_bytes())) {
        return Some(
            "this server has no tokens file, so it answers only pages served from this machine",
        );
    }
    None
}

/// Whether a `Host` value (`name[:port]`, `[v6][:port]`) is loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((address, rest)) if rest.is_empty() || rest.starts_with(':') => address,
            _ => return false,
        },
        None => match host.split_once(':') {
            Some((name, _port)) => name,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether an `Origin` is a page served from this machine (`http(s)://` a loopback host).
pub fn is_local_origin(origin: &[u8]) -> bool {
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|host| !host.contains('/') && is_loopback_host(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_and_origins_pass_and_others_do_not() {
        for host in [
            "localhost",
            "LOCALHOST:50051",
            "127.0.0.1",
            "127.8.9.1:80",
            "[::1]:50051",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "rebind.evil.com",
            "localhost.evil.com",
            "127.0.0.1.nip.io",
            "10.0.0.1:50051",
            "[::1]evil",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
        assert!(is_local_origin(b"http://localhost:50051"));
        assert!(is_local_origin(b"https://127.0.0.1"));
        for origin in [
            &b"null"[..],
            b"http://rebind.evil.com",
            b"http://localhost.evil.com:50051",
            b"file://",
            b"http://127.0.0.1/../x",
        ] {
            assert!(!is_local_origin(origin), "{origin:?}");
        }
    }
}
