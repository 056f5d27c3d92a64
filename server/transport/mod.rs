//! The transport's defences, below the gRPC service: which connections are accepted and how
//! long they live ([`incoming`], with the requests [`activity`] counts), which hosts and
//! origins an open server answers ([`host`]), and the limits that bound them
//! ([`TransportLimits`]).

pub mod activity;
pub mod host;
pub mod incoming;

use std::time::Duration;

/// Bounds on connections, streams and messages; each a `son1k serve` flag with this
/// default.
#[derive(Clone, Debug, PartialEq)]
pub struct TransportLimits {
    /// Connections open at once (default 1024); one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection (default 128), announced in the server's
    /// SETTINGS; a client opens no more.
    pub max_streams_per_connection: u32,
    /// Streams (Generate, Cover, Watch, GetAudio) one tenant may have open at once
    /// (default 128); one more is RESOURCE_EXHAUSTED.
    pub max_streams_per_tenant: usize,
    /// Largest request message of every method but Cover (default 64 KiB). Cover accepts
    /// the song upload limit plus this.
    pub max_message_bytes: usize,
    /// A connection whose first request's headers have not arrived this long after it
    /// opened is closed (default 10 s); the TLS handshake has the same bound. Bytes that do
    /// not make a request do not count.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (default 300 s). A
    /// streaming response counts as in flight until it ends; HTTP/2 keepalive pings do not.
    pub idle_timeout: Duration,
    /// A connection older than this is asked to close (HTTP/2 GOAWAY; HTTP/1.1 after its
    /// response) and closes once its streams end (default 1 h), so no connection holds
    /// resources forever ...
    pub max_connection_age: Duration,
    /// ... and is closed this long after that, streams or not (default 5 min; clients
    /// re-attach to their jobs with Watch).
    pub max_connection_age_grace: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_streams_per_connection: 128,
            max_streams_per_tenant: 128,
            max_message_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connection_age: Duration::from_secs(3600),
            max_connection_age_grace: Duration::from_secs(300),
        }
    }
}

/// TCP keepalive probes start after this much silence, so dead peers are noticed.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// HTTP/2 pings every this long, so vanished peers' streams end (and `cancel_on_disconnect`
/// fires) ...
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ... and a peer that does not answer one within this is gone.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
