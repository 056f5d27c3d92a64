//! Accepting connections under limits. Every accepted socket gets TCP_NODELAY (gRPC's small
//! frames otherwise wait for Nagle and the peer's delayed ACK, about 40 ms a call) and TCP
//! keepalive; at most `max_connections` are open at once (one more is closed as soon as it
//! is accepted); accept errors such as running out of file descriptors pause the loop
//! instead of spinning it; and a connection is closed when it stays silent: before its
//! first byte for `header_read_timeout`, later for `idle_timeout`.

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
use tonic::transport::server::{Connected, TcpConnectInfo};

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
        first_byte: limits.header_read_timeout,
        idle: limits.idle_timeout,
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

/// How long a connection may stay silent.
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    first_byte: Duration,
    idle: Duration,
}

/// An accepted connection: holds one of the `max_connections` slots until it closes, and
/// fails its reads once it has been silent too long.
pub struct Conn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    timeouts: Timeouts,
    /// When a byte last went either way (or when the connection opened).
    last_traffic: Instant,
    spoken: bool,
    timer: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        Self {
            stream,
            _slot: slot,
            timeouts,
            last_traffic: now,
            spoken: false,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.first_byte)),
        }
    }

    /// When the connection counts as abandoned.
    fn deadline(&self) -> Instant {
        let allowed = if self.spoken {
            self.timeouts.idle
        } else {
            self.timeouts.first_byte
        };
        self.last_traffic + allowed
    }

    /// The socket, for inspecting its options.
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last_traffic = Instant::now();
                    self.spoken = true;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // The timer may have been set for an older deadline: traffic since moved it.
                let deadline = self.deadline();
                if Instant::now() >= deadline {
                    let what = if self.spoken { "idle" } else { "silent" };
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("closing a {what} connection"),
                    )));
                }
                if self.timer.deadline() != deadline {
                    self.timer.as_mut().reset(deadline);
                }
                // Registers the wake-up at the deadline; it cannot have passed (checked above).
                let _ = self.timer.as_mut().poll(cx);
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.last_traffic = Instant::now();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.last_traffic = Instant::now();
        }
        written
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
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
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
    async fn a_silent_connection_is_closed_after_the_first_byte_timeout_and_an_idle_one_later() {
        let limits = TransportLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(100),
            ..TransportLimits::default()
        };
        let (addr, mut incoming) = listen(limits).await;
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        let opened = Instant::now();
        let mut buf = [0u8; 8];
        let error = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(opened.elapsed().as_secs(), 10);

        let mut talker = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        talker.write_all(b"hi").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 2);
        let spoke = Instant::now();
        // Traffic the other way keeps it alive too.
        tokio::time::sleep(Duration::from_secs(60)).await;
        conn.write_all(b"ok").await.unwrap();
        let error = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(spoke.elapsed().as_secs(), 160);
    }
}
