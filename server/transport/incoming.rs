//! Accepting connections under limits. Every accepted socket gets TCP_NODELAY (gRPC's small
//! frames otherwise may wait for Nagle and the peer's delayed ACK) and TCP keepalive; at
//! most `max_connections` are open at once (one more is closed as soon as it is accepted);
//! accept errors such as running out of file descriptors pause the loop instead of spinning
//! it. A connection whose first request has not arrived `header_read_timeout` after it
//! opened, or that has had no request in flight for `idle_timeout`, is closed; so is one
//! `max_connection_age_grace` past its age (the server asked it to close at its age).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::activity::{Activity, ConnInfo, State};
use super::{TransportLimits, TCP_KEEPALIVE};

/// Accepted connections waiting for the server to pick them up.
const BACKLOG: usize = 16;
/// The first and the longest pause after an accept error.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// The stream of connections the server serves.
pub type Incoming = ReceiverStream<Result<Conn, io::Error>>;

/// Accepts connections from `listener` on a task of its own until the returned stream is
/// dropped (the server stops accepting).
pub fn incoming(listener: TcpListener, limits: &TransportLimits) -> Incoming {
    let (tx, rx) = mpsc::channel(BACKLOG);
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let timeouts = Timeouts {
        first_request: limits.header_read_timeout,
        idle: limits.idle_timeout,
        closed_by: limits
            .max_connection_age
            .saturating_add(limits.max_connection_age_grace),
    };
    tokio::spawn(async move {
        let mut backoff = ACCEPT_BACKOFF.0;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    stream
                }
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or memory: retrying at once would spin.
                    tracing::warn!("cannot accept connections: {e}; pausing {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
                tracing::debug!("connection limit reached: closing a new connection");
                drop(stream);
                continue;
            };
            if let Err(e) = tune(&stream) {
                tracing::debug!("cannot set socket options: {e}");
            }
            if tx
                .send(Ok(Conn::new(stream, permit, timeouts)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Errors that concern one connection, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// TCP_NODELAY and keepalive.
fn tune(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE / 4);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// How long a connection may wait for requests, and live.
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    first_request: Duration,
    idle: Duration,
    /// Age at which the connection is closed, requests or not.
    closed_by: Duration,
}

/// An accepted connection: holds one of the `max_connections` slots until it closes, and
/// fails its reads and writes once it has waited too long for a request or lived too long.
pub struct Conn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    timeouts: Timeouts,
    opened: Instant,
    activity: Arc<Activity>,
    timer: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, timeouts: Timeouts) -> Self {
        let opened = Instant::now();
        Self {
            stream,
            _slot: slot,
            timeouts,
            opened,
            activity: Activity::new(),
            timer: Box::pin(tokio::time::sleep_until(opened + timeouts.first_request)),
        }
    }

    /// The socket, for inspecting its options.
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }

    /// Its requests, as the server's middleware counts them.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Why the connection must close now, if it must; else when to look again.
    fn check(&self, now: Instant) -> Result<Instant, io::Error> {
        let closed_by = self.opened + self.timeouts.closed_by;
        let (deadline, why) = match self.activity.state() {
            State::Opened => (self.opened + self.timeouts.first_request, "sent no request"),
            State::IdleSince(since) => (since + self.timeouts.idle, "has been idle"),
            // Nothing to wait for while a request runs; look again later.
            State::Busy => (now + self.timeouts.idle, ""),
        };
        if now >= closed_by {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "closing a connection past its maximum age",
            ));
        }
        if now >= deadline && !why.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("closing a connection that {why} for too long"),
            ));
        }
        Ok(deadline.min(closed_by))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let now = Instant::now();
        let next_check = match self.check(now) {
            Ok(next) => next,
            Err(e) => return Poll::Ready(Err(e)),
        };
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Pending => {
                // Wakes this read at the next deadline, which is still ahead (checked above).
                if self.timer.deadline() != next_check {
                    self.timer.as_mut().reset(next_check);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(Instant::now()) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(Instant::now()) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.stream.connect_info(),
            activity: Arc::clone(&self.activity),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    async fn listen(limits: TransportLimits) -> (std::net::SocketAddr, Incoming) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, incoming(listener, &limits))
    }

    #[tokio::test]
    async fn accepted_sockets_have_nodelay_and_keepalive() {
        let (addr, mut incoming) = listen(TransportLimits::default()).await;
        let _client = TcpStream::connect(addr).await.unwrap();
        let conn = incoming.next().await.unwrap().unwrap();
        assert!(conn.socket().nodelay().unwrap());
        assert!(socket2::SockRef::from(conn.socket()).keepalive().unwrap());
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_and_a_freed_slot_is_reused() {
        let limits = TransportLimits {
            max_connections: 2,
            ..TransportLimits::default()
        };
        let (addr, mut incoming) = listen(limits).await;
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let _second = incoming.next().await.unwrap().unwrap();
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        // Closed by the server: end of stream (or a reset), never data.
        let read = third.read(&mut byte).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        drop(first);
        let _d = TcpStream::connect(addr).await.unwrap();
        assert!(incoming.next().await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn connections_close_without_a_first_request_when_idle_and_at_their_age_never_while_busy()
    {
        let limits = TransportLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(100),
            max_connection_age: Duration::from_secs(1000),
            max_connection_age_grace: Duration::from_secs(500),
            ..TransportLimits::default()
        };
        let (addr, mut incoming) = listen(limits).await;
        let mut buf = [0u8; 8];
        let timed_out = |e: io::Error| assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        // Bytes are not a request: a connection that only talks is closed all the same.
        let mut talker = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        let opened = Instant::now();
        talker.write_all(b"GET").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 3);
        timed_out(conn.read(&mut buf).await.unwrap_err());
        assert_eq!(opened.elapsed().as_secs(), 10);

        // A request in flight keeps it open; once it ends, the idle time counts.
        let _client = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        let opened = Instant::now();
        let request = conn.activity().begin();
        let reading = tokio::time::timeout(Duration::from_secs(300), conn.read(&mut buf)).await;
        assert!(reading.is_err(), "the busy connection was closed");
        drop(request);
        let ended = Instant::now();
        timed_out(conn.read(&mut buf).await.unwrap_err());
        assert_eq!(ended.elapsed().as_secs(), 100);

        // Busy or not, it closes at its age plus the grace.
        let _client = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        let _forever = conn.activity().begin();
        let opened_last = Instant::now();
        timed_out(conn.read(&mut buf).await.unwrap_err());
        assert_eq!(opened_last.elapsed().as_secs(), 1500);
        assert!(conn.write_all(b"x").await.is_err());
        let _ = opened;
    }
}
