//! `GET /metrics`: the node's metrics in the Prometheus text format, its RPCs (counted by a
//! middleware, by method and final gRPC status, with the bytes each method sent) after the
//! engine's job metrics. With a tokens file a scrape needs a bearer token like any call; an
//! open server answers it on loopback only, as it answers everything.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};
use son1k_engine::jobs::Engine;
use son1k_engine::metrics::{Exposition, Kind, CONTENT_TYPE};

use crate::auth::Tokens;

/// The methods counted by name; a gRPC call to any other path counts as `unknown`, so no
/// caller can grow the label set.
const METHODS: &[&str] = &[
    "son1k.v1.GenerationService/Generate",
    "son1k.v1.GenerationService/Cover",
    "son1k.v1.GenerationService/Watch",
    "son1k.v1.GenerationService/GetGeneration",
    "son1k.v1.GenerationService/GetAudio",
    "son1k.v1.GenerationService/CancelGeneration",
    "son1k.v1.GenerationService/ListGenerations",
    "son1k.v1.GenerationService/ListModels",
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// gRPC status codes by number, as the label says them.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// What the server counts of its RPCs since it started.
#[derive(Debug, Default)]
pub struct RpcMetrics {
    counts: Mutex<RpcCounts>,
}

#[derive(Debug, Default)]
struct RpcCounts {
    /// Ended calls by (method, code).
    calls: BTreeMap<(&'static str, &'static str), u64>,
    /// Response bytes (gRPC frames) by method.
    bytes: BTreeMap<&'static str, u64>,
}

impl RpcMetrics {
    fn ended(&self, method: &'static str, code: &'static str, bytes: u64) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.calls.entry((method, code)).or_default() += 1;
        *counts.bytes.entry(method).or_default() += bytes;
    }

    /// The RPC families.
    fn render(&self) -> Exposition {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let mut doc = Exposition::default();
        doc.family(
            "son1k_rpcs_total",
            "gRPC calls ended since the node started, by method and final status (a stream \
             the client dropped counts as CANCELLED).",
            Kind::Counter,
        );
        for ((method, code), count) in &counts.calls {
            let labels = [("method", *method), ("code", *code)];
            doc.sample("son1k_rpcs_total", &labels, *count as f64);
        }
        doc.family(
            "son1k_streamed_bytes_total",
            "Bytes of gRPC response messages sent since the node started, by method (job \
             events with their audio, audio downloads).",
            Kind::Counter,
        );
        for (method, bytes) in &counts.bytes {
            let labels = [("method", *method)];
            doc.sample("son1k_streamed_bytes_total", &labels, *bytes as f64);
        }
        doc
    }
}

/// What `GET /metrics` reads.
#[derive(Clone)]
pub(crate) struct Scrape {
    pub(crate) engine: Arc<OnceLock<Engine>>,
    pub(crate) rpcs: Arc<RpcMetrics>,
    pub(crate) tokens: Tokens,
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(scrape): State<Scrape>, headers: HeaderMap) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(status) = scrape.tokens.tenant_of(authorization) {
        return (StatusCode::UNAUTHORIZED, status.message().to_string()).into_response();
    }
    let mut doc = match scrape.engine.get() {
        Some(engine) => match engine.metrics().await {
            Ok(doc) => doc,
            Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        },
        // Models still loading: the RPCs so far, no job families yet.
        None => Exposition::default(),
    };
    doc.append(scrape.rpcs.render());
    (
        [
            (header::CONTENT_TYPE, CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        doc.finish(),
    )
        .into_response()
}

/// The middleware that counts each gRPC call when its response ends: its method, its final
/// status (from the trailers, or the headers of a response that is only trailers) and the
/// bytes it sent. It sits inside the grpc-web layer, so both protocols look the same here.
pub(crate) async fn count_rpcs(
    State(rpcs): State<Arc<RpcMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !is_grpc {
        return next.run(request).await;
    }
    let path = request.uri().path().trim_start_matches('/');
    let method = METHODS
        .iter()
        .find(|m| **m == path)
        .copied()
        .unwrap_or("unknown");
    // A call whose client leaves before its handler answers is counted when dropped.
    let mut pending = Pending {
        rpcs: Arc::clone(&rpcs),
        method,
        answered: false,
    };
    let response = next.run(request).await;
    pending.answered = true;
    let header_code = code_of(response.headers());
    response.map(|body| {
        Body::new(Counted {
            body,
            rpcs,
            method,
            code: header_code,
            bytes: 0,
            ended: false,
        })
    })
}

/// A call whose handler has not answered yet: counted as CANCELLED if it is dropped so
/// (its client went away, or its deadline passed).
struct Pending {
    rpcs: Arc<RpcMetrics>,
    method: &'static str,
    answered: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            self.rpcs.ended(self.method, "CANCELLED", 0);
        }
    }
}

/// The `grpc-status` a header map carries, as its label.
fn code_of(headers: &HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    let code = value.trim().parse::<usize>().ok();
    Some(
        code.and_then(|c| CODES.get(c).copied())
            .unwrap_or("UNKNOWN"),
    )
}

/// A response body that counts its call when it is dropped.
struct Counted {
    body: Body,
    rpcs: Arc<RpcMetrics>,
    method: &'static str,
    /// The status, once the headers or the trailers gave it.
    code: Option<&'static str>,
    bytes: u64,
    /// Whether the body was read to its end.
    ended: bool,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    if let Some(code) = code_of(trailers) {
                        self.code = Some(code);
                    }
                }
            }
            Poll::Ready(None) => self.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let code = match self.code {
            Some(code) => code,
            // Dropped before its status went out: the client went away.
            None if !self.ended && !http_body::Body::is_end_stream(&self.body) => "CANCELLED",
            None => "UNKNOWN",
        };
        self.rpcs.ended(self.method, code, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_service_is_counted_by_name() {
        let proto = include_str!("../proto/son1k/v1/son1k.proto");
        let methods: Vec<&str> = proto
            .lines()
            .filter_map(|line| line.trim().strip_prefix("rpc "))
            .filter_map(|rest| rest.split('(').next())
            .collect();
        assert_eq!(methods.len(), 8, "{methods:?}");
        for method in methods {
            let path = format!("son1k.v1.GenerationService/{method}");
            assert!(METHODS.contains(&path.as_str()), "{path} is not counted");
        }
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_handler_answers_counts_as_cancelled() {
        use tower::ServiceExt;
        let rpcs = Arc::new(RpcMetrics::default());
        let never = axum::routing::post(std::future::pending::<()>);
        let router = axum::Router::new()
            .route("/son1k.v1.GenerationService/ListModels", never)
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&rpcs),
                count_rpcs,
            ));
        let request = http::Request::post("/son1k.v1.GenerationService/ListModels")
            .header(header::CONTENT_TYPE, "application/grpc")
            .body(Body::empty())
            .unwrap();
        let call = router.oneshot(request);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), call).await;
        assert!(waited.is_err(), "the handler never answers");
        let text = rpcs.render().finish();
        let line = "son1k_rpcs_total{method=\"son1k.v1.GenerationService/ListModels\",\
                    code=\"CANCELLED\"} 1";
        assert!(text.lines().any(|l| l == line), "{text}");
    }

    #[test]
    fn statuses_are_named_by_their_number_and_unknown_numbers_are_unknown() {
        let mut headers = HeaderMap::new();
        assert_eq!(code_of(&headers), None);
        for (value, name) in [
            ("0", "OK"),
            ("3", "INVALID_ARGUMENT"),
            ("16", "UNAUTHENTICATED"),
        ] {
            headers.insert("grpc-status", value.parse().unwrap());
            assert_eq!(code_of(&headers), Some(name));
        }
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(code_of(&headers), Some("UNKNOWN"));
    }
}
