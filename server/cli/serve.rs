//! `son1k serve`: the gRPC / grpc-web server with its page, the built-in synth always
//! loaded, MusicGen checkpoints added with `--model`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::Args;
use son1k_engine::jobs::broker::BrokerConfig;
use son1k_engine::jobs::{default_node_name, EngineConfig};
use son1k_engine::musicgen::{
    MusicGenModel, DEFAULT_EXTEND_STRIDE_SECONDS, DEFAULT_PREVIEW_AFTER_SECONDS,
};
use son1k_engine::synth::SynthModel;
use son1k_engine::{DeviceChoice, EngineError, KvCache, Limits, MusicModel, Precision};

use anyhow::{bail, Context};
use tonic::transport::Identity;

use crate::auth::Tokens;
use crate::node::{bind, serve_on, shutdown_signal, ModelLoader, ServeConfig};
use crate::transport::TransportLimits;
use crate::web::WebRoot;

/// Arguments of `son1k serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Without --tokens-file only loopback addresses are allowed;
    /// with it, an address off loopback needs TLS (or --insecure-listen).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// PEM certificate chain to serve gRPC and grpc-web over TLS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Listen off loopback without TLS: tokens, uploads and audio then cross the network in
    /// clear text. Prefer --tls-cert/--tls-key or a TLS reverse proxy.
    #[arg(long)]
    pub insecure_listen: bool,
    /// A MusicGen checkpoint to serve, a directory (Hugging Face layout) or a Hub id
    /// already in the Hugging Face cache (`facebook/musicgen-small[@revision]`);
    /// repeatable. The built-in synth is always served.
    #[arg(long = "model", value_name = "DIR|ID")]
    pub models: Vec<PathBuf>,
    /// The model used when a request names none (default: the built-in synth).
    #[arg(long, value_name = "ID")]
    pub default_model: Option<String>,
    // The help text is clap's: `[:N]` is not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// cpu, cuda[:N] or metal[:N], for MusicGen checkpoints.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// MusicGen decoder precision: f32, f16, bf16, or q8 / q4 (weights quantized at load).
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// MusicGen self-attention cache: `compute` (the decoder's precision) or `f16` (half
    /// the bytes each step reads from it).
    #[arg(long, default_value = "compute")]
    pub kv_cache: KvCache,
    /// Where finished audio and job records are kept.
    #[arg(long, default_value = "son1k-data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Bearer tokens: one `TENANT TOKEN` pair per line. Without it the server is open to
    /// anyone who can reach it, so it listens on loopback only.
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Hours a finished job and its audio are kept.
    #[arg(long, default_value_t = 24.0, value_name = "HOURS")]
    pub retention_hours: f64,
    /// Jobs of models that do not batch (the synth) that run at once, each on a worker
    /// thread.
    #[arg(long, default_value_t = EngineConfig::new("").max_running)]
    pub max_running: usize,
    /// Jobs one MusicGen model on the CPU steps together, 1 to 256: each decoder step
    /// reads the weights once for all of them, and each job's KV cache takes its own memory.
    #[arg(long, default_value_t = EngineConfig::new("").max_batch,
          value_parser = clap::value_parser!(u16).range(1..=256).map(usize::from))]
    pub max_batch: usize,
    /// Jobs that may wait for a worker; beyond it submits get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = EngineConfig::new("").max_queued)]
    pub max_queued: usize,
    /// Unfinished jobs one token may have.
    #[arg(long, default_value_t = EngineConfig::new("").max_jobs_per_tenant)]
    pub max_jobs_per_tenant: usize,
    /// Longest prompt in characters.
    #[arg(long, default_value_t = Limits::default().max_prompt_chars)]
    pub max_prompt_chars: usize,
    /// Longest prompt in text-encoder tokens.
    #[arg(long, default_value_t = Limits::default().max_prompt_tokens)]
    pub max_prompt_tokens: usize,
    /// Longest output in seconds. MusicGen generates past its 30 s window in windows,
    /// each prompted with the end of the one before.
    #[arg(long, default_value_t = Limits::default().max_duration_s)]
    pub max_duration: f64,
    /// MusicGen past 30 s: seconds each window starts after the one before.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_EXTEND_STRIDE_SECONDS)]
    pub extend_stride: f64,
    /// MusicGen: seconds of audio a job has made when its first preview streams (then one
    /// a second); 0 turns previews off, 30 at most.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_PREVIEW_AFTER_SECONDS)]
    pub preview_after: f64,
    /// Largest song upload for a cover, in bytes.
    #[arg(long, default_value_t = Limits::default().max_song_bytes)]
    pub max_song_bytes: usize,
    /// Longest song to cover, in seconds.
    #[arg(long, default_value_t = Limits::default().max_song_seconds)]
    pub max_song_seconds: f64,
    /// Jobs one token may have stored (finished ones count until they expire).
    #[arg(long, default_value_t = EngineConfig::new("").max_stored_jobs_per_tenant)]
    pub max_stored_jobs_per_tenant: usize,
    /// Bytes of finished audio one token may have stored.
    #[arg(long, value_name = "BYTES", default_value_t = EngineConfig::new("").max_stored_bytes_per_tenant)]
    pub max_stored_bytes_per_tenant: u64,
    /// Jobs one token may submit a minute (in bursts of as many).
    #[arg(long, default_value_t = EngineConfig::new("").max_submits_per_minute)]
    pub max_submits_per_minute: u32,
    /// Free bytes the data directory must keep; under it, new jobs are refused.
    #[arg(long, value_name = "BYTES", default_value_t = EngineConfig::new("").min_free_bytes)]
    pub min_free_bytes: u64,
    /// Seconds running jobs may take to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub drain_timeout: f64,
    /// Connections open at once; one more is closed when accepted.
    #[arg(long, default_value_t = TransportLimits::default().max_connections)]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, default_value_t = TransportLimits::default().max_streams_per_connection)]
    pub max_streams_per_connection: u32,
    /// Streams (job events, audio downloads) one token may have open at once.
    #[arg(long, default_value_t = TransportLimits::default().max_streams_per_tenant)]
    pub max_streams_per_tenant: usize,
    /// Largest request message of every method but Cover, in bytes.
    #[arg(long, default_value_t = TransportLimits::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Seconds a new connection may stay silent before it is closed (also bounds the TLS
    /// handshake).
    #[arg(long, value_name = "SECONDS", default_value_t = TransportLimits::default().header_read_timeout.as_secs_f64())]
    pub header_read_timeout: f64,
    /// Seconds a connection may go without traffic either way before it is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = TransportLimits::default().idle_timeout.as_secs_f64())]
    pub idle_timeout: f64,
    /// Seconds after which a connection is asked to close once its streams end.
    #[arg(long, value_name = "SECONDS", default_value_t = TransportLimits::default().max_connection_age.as_secs_f64())]
    pub max_connection_age: f64,
    /// Seconds after that request when the connection is closed, streams or not.
    #[arg(long, value_name = "SECONDS", default_value_t = TransportLimits::default().max_connection_age_grace.as_secs_f64())]
    pub max_connection_age_grace: f64,
    /// A NATS server with JetStream (`nats://HOST:PORT`) to share jobs with other nodes:
    /// one queue, one log per job, one result store. Without it the node runs alone.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// With --broker: unfinished jobs the whole cluster holds (running and waiting); past
    /// it submits are RESOURCE_EXHAUSTED. Every node should give the same value.
    #[arg(long, default_value_t = 256, requires = "broker")]
    pub cluster_capacity: usize,
    /// With --broker: seconds a node holds a job without a heartbeat before another node
    /// may take it over.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30.0,
        requires = "broker"
    )]
    pub lease_seconds: f64,
    /// With --broker: runs of a job whose nodes stopped before it is given up as failed
    /// (INTERRUPTED).
    #[arg(long, default_value_t = 3, requires = "broker")]
    pub max_attempts: u32,
    /// This node's name in its logs and in every job's span (default: the host's name).
    #[arg(long, value_name = "NAME")]
    pub node_id: Option<String>,
    /// How log lines are written to stderr: `text` for people, `json` (one object a line,
    /// with the job's span: id, tenant, model, node) for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serves the studio's files (`index.html`, `app.js`, `app.css`) from this directory,
    /// read on every request, instead of the bundle built in: for working on the page
    /// (`--web-dir server/web/dist`).
    #[arg(long, value_name = "DIR")]
    pub web_dir: Option<PathBuf>,
}

/// How `son1k serve` writes its logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people (coloured on a terminal).
    Text,
    /// One JSON object a line, with the current span's fields.
    Json,
}

/// Longest `--node-id`, in bytes.
const MAX_NODE_ID_BYTES: usize = 128;

/// A node name as given: printable, without spaces, at most [`MAX_NODE_ID_BYTES`].
fn node_id(name: &str) -> Result<String, EngineError> {
    let printable = name.chars().all(|c| c.is_ascii_graphic());
    if name.is_empty() || name.len() > MAX_NODE_ID_BYTES || !printable {
        return Err(EngineError::invalid(
            "argument",
            format!(
                "--node-id must be 1 to {MAX_NODE_ID_BYTES} printable ASCII characters \
                 without spaces, not {name:?}"
            ),
        ));
    }
    Ok(name.to_string())
}

/// Sends log lines to stderr in `format`.
fn init_logs(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// The longest duration a flag may give: a century, far past any sensible setting and
/// far below where durations overflow.
const MAX_FLAG_SECONDS: f64 = 100.0 * 365.25 * 24.0 * 3600.0;

/// A flag's seconds as a duration: positive, finite and at most a century.
fn seconds(flag: &str, value: f64) -> Result<Duration, EngineError> {
    if value.is_finite() && value > 0.0 && value <= MAX_FLAG_SECONDS {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(EngineError::invalid(
            "argument",
            format!(
                "--{flag} must be a positive number of at most {MAX_FLAG_SECONDS:.0} s (a \
                 century), not {value}"
            ),
        ))
    }
}

/// A flag's count: at least 1.
fn count<T: PartialOrd + From<u8> + std::fmt::Display>(
    flag: &str,
    value: T,
) -> Result<T, EngineError> {
    if value >= T::from(1) {
        Ok(value)
    } else {
        Err(EngineError::invalid(
            "argument",
            format!("--{flag} must be at least 1, not {value}"),
        ))
    }
}

/// Reads the TLS certificate and key, naming the file that fails.
fn tls_identity(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<Identity> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path)
            .with_context(|| format!("cannot read the TLS {what} {}", path.display()))
    };
    Ok(Identity::from_pem(
        read(cert, "certificate")?,
        read(key, "key")?,
    ))
}

/// Runs the command.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let log_format = args.log_format;
    let (config, load_models) = plan(args)?;
    init_logs(log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let listener = bind(&config).await?;
        let scheme = config.scheme();
        super::output::line(format_args!(
            "son1k listening on {scheme}://{}/ (gRPC and grpc-web; open it in a browser for \
             the page)",
            listener.local_addr()?
        ));
        let (ready, _) = tokio::sync::oneshot::channel();
        serve_on(config, listener, load_models, shutdown_signal(), ready).await
    });
    // A model still loading on a blocking thread must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The server's configuration and model loader from `son1k serve`'s flags, checked (every
/// bad value is an error naming its flag); nothing is started or loaded yet.
pub fn plan(args: ServeArgs) -> anyhow::Result<(ServeConfig, ModelLoader)> {
    let tokens = match &args.tokens_file {
        Some(path) => Tokens::load(path)?,
        None => Tokens::open(),
    };
    let engine = EngineConfig {
        limits: Limits {
            max_prompt_chars: args.max_prompt_chars,
            max_prompt_tokens: args.max_prompt_tokens,
            max_duration_s: Limits::duration_limit(args.max_duration)?,
            max_song_bytes: args.max_song_bytes,
            max_song_seconds: seconds("max-song-seconds", args.max_song_seconds)?.as_secs_f64(),
            ..Limits::default()
        },
        max_running: args.max_running.max(1),
        max_batch: args.max_batch,
        max_queued: args.max_queued,
        max_jobs_per_tenant: args.max_jobs_per_tenant,
        retention: seconds("retention-hours", args.retention_hours * 3600.0)?,
        default_model: args.default_model.clone(),
        min_free_bytes: args.min_free_bytes,
        max_stored_jobs_per_tenant: count(
            "max-stored-jobs-per-tenant",
            args.max_stored_jobs_per_tenant,
        )?,
        max_stored_bytes_per_tenant: args.max_stored_bytes_per_tenant,
        max_submits_per_minute: count("max-submits-per-minute", args.max_submits_per_minute)?,
        node: match &args.node_id {
            Some(name) => node_id(name)?,
            None => default_node_name(),
        },
        ..EngineConfig::new(&args.data_dir)
    };
    let transport = TransportLimits {
        max_connections: count("max-connections", args.max_connections)?,
        max_streams_per_connection: count(
            "max-streams-per-connection",
            args.max_streams_per_connection,
        )?,
        max_streams_per_tenant: count("max-streams-per-tenant", args.max_streams_per_tenant)?,
        max_message_bytes: count("max-message-bytes", args.max_message_bytes)?,
        header_read_timeout: seconds("header-read-timeout", args.header_read_timeout)?,
        idle_timeout: seconds("idle-timeout", args.idle_timeout)?,
        max_connection_age: seconds("max-connection-age", args.max_connection_age)?,
        max_connection_age_grace: seconds(
            "max-connection-age-grace",
            args.max_connection_age_grace,
        )?,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_identity(cert, key)?),
        _ => None,
    };
    let broker = match &args.broker {
        Some(url) => {
            let mut broker = BrokerConfig::new(
                count("cluster-capacity", args.cluster_capacity)?,
                engine.max_jobs_per_tenant,
                engine.retention,
            );
            broker.ack_wait = seconds("lease-seconds", args.lease_seconds)?;
            broker.max_attempts = count("max-attempts", args.max_attempts)?;
            broker.max_submits_per_minute = engine.max_submits_per_minute;
            broker.max_stored_jobs_per_tenant = engine.max_stored_jobs_per_tenant;
            broker.max_stored_bytes_per_tenant = engine.max_stored_bytes_per_tenant;
            Some((url.clone(), broker))
        }
        None => None,
    };
    let config = ServeConfig {
        addr: args.addr,
        tokens,
        engine,
        drain_timeout: seconds("drain-timeout", args.drain_timeout)?,
        transport,
        tls,
        insecure_listen: args.insecure_listen,
        broker,
        web: match &args.web_dir {
            Some(dir) if !dir.join("index.html").is_file() => {
                bail!("--web-dir: {} holds no index.html", dir.display())
            }
            Some(dir) => WebRoot::Directory(dir.clone()),
            None => WebRoot::Embedded,
        },
    };
    let (dirs, device, dtype, kv_cache) = (args.models, args.device, args.dtype, args.kv_cache);
    let (extend_stride, preview_after) = (args.extend_stride, args.preview_after);
    let load_models: ModelLoader = Box::new(move || {
        let mut models: Vec<Arc<dyn MusicModel>> = vec![Arc::new(SynthModel::default())];
        for dir in &dirs {
            tracing::info!(dir = %dir.display(), "loading");
            let model = MusicGenModel::load(dir, device, dtype, kv_cache)?
                .with_extend_stride(extend_stride)?
                .with_preview_after(preview_after)?;
            models.push(Arc::new(model));
        }
        Ok(models)
    });
    Ok((config, load_models))
}
