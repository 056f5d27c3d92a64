//! What a connection is doing, for its timeouts: how many requests are in flight on it and
//! since when it has had none. A middleware counts each request from the moment its headers
//! are in until its response body is finished or dropped, so a streaming response (a job's
//! events over grpc-web or HTTP/2) keeps its connection busy, and HTTP/2 keepalive pings on
//! a connection without requests do not.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use tokio::time::Instant;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// One connection's requests.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// When the last request ended; `None` until the first request arrives.
    idle_since: Mutex<Option<Instant>>,
}

/// What a connection is doing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No request has arrived yet.
    Opened,
    /// At least one request is in flight.
    Busy,
    /// Requests came and all ended, the last at this instant.
    IdleSince(Instant),
}

impl Activity {
    /// A new connection's.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(None),
        })
    }

    /// Counts a request until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let mut idle_since = self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        idle_since.get_or_insert_with(Instant::now);
        InFlight(Arc::clone(self))
    }

    /// What the connection is doing.
    pub fn state(&self) -> State {
        let idle_since = *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match idle_since {
            None => State::Opened,
            Some(_) if self.in_flight.load(Ordering::SeqCst) > 0 => State::Busy,
            Some(since) => State::IdleSince(since),
        }
    }
}

/// A request in flight; its end is when this is dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let mut idle_since = activity
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if activity.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *idle_since = Some(Instant::now());
        }
    }
}

/// What the server knows of a connection: its address and its activity.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Addresses, as tonic reports them.
    pub tcp: TcpConnectInfo,
    /// Its requests.
    pub activity: Arc<Activity>,
}

/// The middleware that counts every request against its connection's activity.
pub async fn track(request: Request, next: Next) -> Response {
    let extensions = request.extensions();
    let activity = extensions
        .get::<ConnInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<ConnInfo>>()
                .map(|tls| tls.get_ref())
        })
        .map(|info| Arc::clone(&info.activity));
    let Some(activity) = activity else {
        return next.run(request).await;
    };
    let in_flight = activity.begin();
    let response = next.run(request).await;
    response.map(|body| {
        Body::new(Tracked {
            body,
            _in_flight: in_flight,
        })
    })
}

/// A response body that keeps its request in flight until it is finished or dropped.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_busy_while_any_request_is_in_flight() {
        let activity = Activity::new();
        assert_eq!(activity.state(), State::Opened);
        let first = activity.begin();
        let second = activity.begin();
        assert_eq!(activity.state(), State::Busy);
        drop(first);
        assert_eq!(activity.state(), State::Busy);
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        drop(second);
        assert_eq!(activity.state(), State::IdleSince(Instant::now()));
    }
}
