//! A Son1k node, the server `son1k serve` runs: one port speaking gRPC over HTTP/2 and grpc-web over HTTP/1.1
//! (with CORS), plain or over TLS, the page at `/`, `grpc.health.v1`, server reflection (v1
//! and v1alpha), the transport's limits, and a graceful drain on SIGTERM or Ctrl-C.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::routing::get;
use son1k_engine::jobs::broker::BrokerConfig;
use son1k_engine::jobs::{Engine, EngineConfig};
use son1k_engine::MusicModel;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Tokens;
use crate::metrics::{count_rpcs, RpcMetrics, Scrape};
use crate::proto::v1::generation_service_server::GenerationServiceServer;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::service::GenerationApi;
use crate::transport::activity;
use crate::transport::host::{is_local_origin, loopback_only};
use crate::transport::incoming::incoming;
use crate::transport::{self, TransportLimits};
use crate::web::WebRoot;

/// The name health checks ask about.
const SERVICE_NAME: &str = <GenerationServiceServer<GenerationApi> as NamedService>::NAME;

/// Everything `son1k serve` needs.
pub struct ServeConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Who may call.
    pub tokens: Tokens,
    /// The engine's configuration.
    pub engine: EngineConfig,
    /// How long running jobs may take to finish after a shutdown signal.
    pub drain_timeout: Duration,
    /// Bounds on connections, streams and messages.
    pub transport: TransportLimits,
    /// The certificate chain and key to serve TLS with; `None` serves plain text.
    pub tls: Option<Identity>,
    /// Allows listening off loopback without TLS (tokens then cross the network in clear).
    pub insecure_listen: bool,
    /// A NATS JetStream server this node shares its jobs through with other nodes, and
    /// how the shared queue is set up; `None` runs the jobs of this node alone.
    pub broker: Option<(String, BrokerConfig)>,
    /// Where the studio's files come from.
    pub web: WebRoot,
}

impl ServeConfig {
    /// The URL scheme clients reach the server by: `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Refuses a listening address the configuration does not make safe: an open server only
/// on loopback, and off loopback only with TLS (or `--insecure-listen`).
fn check_address(config: &ServeConfig, addr: SocketAddr) -> anyhow::Result<()> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if !config.tokens.required() {
        bail!(
            "refusing to listen on {addr} without --tokens-file: an open server may only \
             listen on loopback (127.0.0.1 or ::1)"
        );
    }
    if config.tls.is_none() && !config.insecure_listen {
        bail!(
            "refusing to listen on {addr} without TLS: tokens, uploads and audio would cross \
             the network in clear text. Give --tls-cert and --tls-key, put a TLS reverse proxy \
             in front and listen on loopback, or say --insecure-listen"
        );
    }
    Ok(())
}

/// Loads the models a server serves (on a blocking thread: it reads weight files).
pub type ModelLoader = Box<dyn FnOnce() -> anyhow::Result<Vec<Arc<dyn MusicModel>>> + Send>;

/// Binds `config.addr` after checking that the configuration makes it safe (see
/// [`serve_on`]).
pub async fn bind(config: &ServeConfig) -> anyhow::Result<TcpListener> {
    check_address(config, config.addr)?;
    TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.addr))
}

/// Runs the server on `listener` ([`bind`]'s, or one a program embedding the server binds,
/// as the tests do) until `shutdown` resolves ([`shutdown_signal`] for SIGTERM or Ctrl-C),
/// then drains. `load_models` runs on a blocking thread while the server already answers
/// (health NOT_SERVING, calls UNAVAILABLE); a load error stops the server. `ready` hears
/// once the models are loaded and the engine takes jobs. `config.addr` is not used.
pub async fn serve_on(
    config: ServeConfig,
    listener: TcpListener,
    load_models: ModelLoader,
    shutdown: impl Future<Output = ()> + Send,
    ready: oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    check_address(&config, addr)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    let engine_ready = Arc::new(OnceLock::new());
    let router = routes(&config, Arc::clone(&engine_ready), health_service)?;

    // Load the models while the server already answers health checks.
    let engine_config = config.engine;
    let node = engine_config.node.clone();
    let loading = tokio::task::spawn_blocking(load_models);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let limits = &config.transport;
    let mut builder = Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(transport::HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(transport::HTTP2_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(limits.max_streams_per_connection)
        // A GOAWAY at the age; the grace after it is enforced by the connection itself
        // (tonic with a grace would skip the GOAWAY and only cut the connection).
        .max_connection_age(limits.max_connection_age);
    if let Some(identity) = config.tls.clone() {
        let tls = ServerTlsConfig::new()
            .identity(identity)
            .timeout(limits.header_read_timeout);
        builder = builder
            .tls_config(tls)
            .context("the TLS certificate or key is not usable")?;
    }
    let server = builder
        .add_routes(Routes::from(router))
        .serve_with_incoming_shutdown(incoming(listener, limits), async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        });
    let mut server = tokio::spawn(server);

    // One shutdown listener for the whole life of the server, so no signal falls between two.
    tokio::pin!(shutdown);
    let models = tokio::select! {
        loaded = loading => loaded.context("model loading stopped")??,
        result = &mut server => {
            result??;
            bail!("the server stopped while models were loading");
        }
        () = &mut shutdown => return Ok(()),
    };
    // Restoring stored jobs reads the disk: off the async threads.
    let mut engine = tokio::task::spawn_blocking(move || Engine::start(engine_config, models))
        .await
        .context("starting the engine stopped")??;
    if let Some((url, broker)) = config.broker.clone() {
        engine = engine
            .join_cluster(&url, broker)
            .await
            .with_context(|| format!("cannot join the cluster on {url}"))?;
        tracing::info!(%node, %url, "joined the cluster");
    }
    let names: Vec<&str> = engine.models().iter().map(|m| m.id.as_str()).collect();
    tracing::info!(%node, models = ?names, %addr, "serving");
    let _ = engine_ready.set(engine.clone());
    let _ = ready.send(());
    let following = tokio::spawn(follow_health(engine.clone(), health.clone()));

    tokio::select! {
        result = &mut server => return Ok(result??),
        () = &mut shutdown => {}
    }
    following.abort();
    tracing::info!(%node, "draining: no new jobs, waiting for running ones");
    set_health(&health, ServingStatus::NotServing).await;
    if tokio::time::timeout(config.drain_timeout, engine.drain())
        .await
        .is_err()
    {
        tracing::warn!(
            "jobs still running after the drain timeout; they will be reported interrupted \
             (on a cluster's node: handed to other nodes)"
        );
    }
    engine.hand_back_cluster_jobs().await;
    engine.flush().await;
    let _ = stop_tx.send(true);
    // Streams of finished jobs end by themselves; give the rest a moment.
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

/// Every route: the generation service (Cover with room for an upload, every other method
/// with small messages), health, reflection, grpc-web, the page, `/metrics` and CORS; an
/// open server also refuses requests that do not come from this machine.
fn routes(
    config: &ServeConfig,
    ready: Arc<OnceLock<Engine>>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> anyhow::Result<axum::Router> {
    let limits = &config.transport;
    let rpcs = Arc::new(RpcMetrics::default());
    let api = GenerationApi::new(Arc::clone(&ready), limits.max_streams_per_tenant);
    let small = GenerationServiceServer::new(api.clone())
        .max_decoding_message_size(limits.max_message_bytes);
    let cover = GenerationServiceServer::new(api).max_decoding_message_size(
        config
            .engine
            .limits
            .max_song_bytes
            .saturating_add(limits.max_message_bytes),
    );
    let interceptor = config.tokens.interceptor();
    let small = InterceptedService::new(small, interceptor.clone());
    let cover = InterceptedService::new(cover, interceptor).map_request(
        |request: http::Request<axum::body::Body>| request.map(tonic::body::Body::new),
    );
    let small_limit = limits.max_message_bytes;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?
        .max_decoding_message_size(small_limit);
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?
        .max_decoding_message_size(small_limit);
    let router = Routes::new(small)
        .add_service(health.max_decoding_message_size(small_limit))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .into_axum_router()
        .route_service(&format!("/{SERVICE_NAME}/Cover"), cover)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&rpcs),
            count_rpcs,
        ))
        .layer(tonic_web::GrpcWebLayer::new())
        .merge(crate::web::routes(config.web.clone()))
        .route(
            "/metrics",
            get(crate::metrics::metrics).with_state(Scrape {
                engine: ready,
                rpcs,
                tokens: config.tokens.clone(),
            }),
        )
        .layer(cors(config.tokens.required()))
        .layer(axum::middleware::from_fn(activity::track));
    Ok(if config.tokens.required() {
        router
    } else {
        router.layer(axum::middleware::from_fn(loopback_only))
    })
}

/// CORS for browsers on other origins; the gRPC status headers must be readable by pages.
/// With tokens, any origin may call (a bearer token, not a cookie, authenticates). An open
/// server admits only pages served from this machine, so a web site a local user visits
/// cannot drive it.
fn cors(tokens_required: bool) -> CorsLayer {
    use http::header::{HeaderName, AUTHORIZATION, CONTENT_TYPE};
    let allow = [
        AUTHORIZATION,
        CONTENT_TYPE,
        HeaderName::from_static("x-grpc-web"),
        HeaderName::from_static("x-user-agent"),
        HeaderName::from_static("grpc-timeout"),
    ];
    let expose = [
        HeaderName::from_static("grpc-status"),
        HeaderName::from_static("grpc-message"),
        HeaderName::from_static("grpc-status-details-bin"),
        HeaderName::from_static("retry-after"),
    ];
    let origins = if tokens_required {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::predicate(|origin, _| is_local_origin(origin.as_bytes()))
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([http::Method::POST, http::Method::GET, http::Method::OPTIONS])
        .allow_headers(allow)
        .expose_headers(expose)
        .max_age(Duration::from_secs(24 * 3600))
}

/// Reports SERVING while the engine's store can write and, with a broker, while the node
/// reaches it; NOT_SERVING while either fails (a full or read-only disk, a lost broker),
/// until the task is stopped.
async fn follow_health(engine: Engine, health: tonic_health::server::HealthReporter) {
    let mut store = engine.store_health();
    // Without a broker, one that is always reached and never changes.
    let (_always, reached) = tokio::sync::watch::channel(true);
    let mut broker = engine.broker_connected().unwrap_or(reached);
    loop {
        let serving = !store.borrow_and_update().unwritable && *broker.borrow_and_update();
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_health(&health, status).await;
        let changed = tokio::select! {
            changed = store.changed() => changed,
            changed = broker.changed() => changed,
        };
        if changed.is_err() {
            return;
        }
    }
}

/// Sets the status of the service and of the server as a whole (the empty name).
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health.set_service_status(SERVICE_NAME, status).await;
    health.set_service_status("", status).await;
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
