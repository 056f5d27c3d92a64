//! A `son1k serve` child process on a loopback port for the service tests, and client
//! helpers: authenticated requests, event collection, audio reassembly.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use son1k::proto::v1 as pb;
use son1k::proto::v1::generation_event::Event;
use son1k::proto::v1::generation_service_client::GenerationServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status, Streaming};

/// A gRPC client of the generation service.
pub type Client = GenerationServiceClient<Channel>;

/// A running server; killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its stderr goes.
    log: PathBuf,
    /// The certificate authority clients trust when the server speaks TLS.
    tls_ca: Option<Vec<u8>>,
}

impl Server {
    /// Starts `son1k serve` on a free loopback port with `data_dir` and `extra` flags, and
    /// waits until its health check says SERVING.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_tls(data_dir, extra, None).await
    }

    /// [`Server::start`] for a server that speaks TLS (its flags in `extra`) with a
    /// certificate `tls_ca` signed.
    pub async fn start_with_tls(data_dir: &Path, extra: &[&str], tls_ca: Option<&[u8]>) -> Server {
        let server = Self::launch(
            data_dir,
            &data_dir.with_extension("log"),
            extra,
            tls_ca,
            None,
        );
        server.wait_serving().await;
        server
    }

    /// [`Server::start`] with its log in `log` (outside a data directory the test fills or
    /// makes read-only).
    pub async fn start_logging(data_dir: &Path, log: &Path, extra: &[&str]) -> Server {
        let server = Self::launch(data_dir, log, extra, None, None);
        server.wait_serving().await;
        server
    }

    /// [`Server::start`] for a process that may hold at most `files` open file descriptors
    /// (its connections among them).
    pub async fn start_with_open_files(data_dir: &Path, files: u32, extra: &[&str]) -> Server {
        let log = data_dir.with_extension("log");
        let server = Self::launch(data_dir, &log, extra, None, Some(files));
        server.wait_serving().await;
        server
    }

    /// [`Server::start_logging`] for a server that comes up NOT_SERVING (its store cannot
    /// write): waits until its models are loaded and it answers calls.
    pub async fn start_unhealthy(data_dir: &Path, log: &Path, extra: &[&str]) -> Server {
        let server = Self::launch(data_dir, log, extra, None, None);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(channel) = server.endpoint().connect().await {
                let mut client = GenerationServiceClient::new(channel);
                if client.list_models(pb::ListModelsRequest {}).await.is_ok() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the server never answered: {}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.wait_health(false).await;
        server
    }

    /// Starts the process and reads the address it prints.
    fn launch(
        data_dir: &Path,
        log_path: &Path,
        extra: &[&str],
        tls_ca: Option<&[u8]>,
        open_files: Option<u32>,
    ) -> Server {
        let log = File::create(log_path).expect("a log file");
        let binary = env!("CARGO_BIN_EXE_son1k");
        let mut command = match open_files {
            // The shell lowers the limit, then becomes the server (same process id).
            Some(files) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
                    .arg(binary);
                shell
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("son1k serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server prints its address");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .trim_end_matches('/')
            .to_string();
        let addr = url.split_once("://").expect("a scheme").1.to_string();
        Server {
            child,
            url,
            addr,
            data_dir: data_dir.to_path_buf(),
            log: log_path.to_path_buf(),
            tls_ca: tls_ca.map(<[u8]>::to_vec),
        }
    }

    async fn wait_serving(&self) {
        self.wait_health(true).await;
    }

    /// Waits until the health check says SERVING (`true`) or NOT_SERVING (`false`).
    pub async fn wait_health(&self, serving: bool) {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::HealthCheckRequest;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(channel) = self.endpoint().connect().await {
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: "son1k.v1.GenerationService".into(),
                    })
                    .await;
                let wanted = if serving {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                if matches!(status, Ok(r) if r.get_ref().status == wanted as i32) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the server's health never became {}: {}",
                if serving { "SERVING" } else { "NOT_SERVING" },
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's endpoint, trusting its test certificate authority when it speaks TLS.
    pub fn endpoint(&self) -> Endpoint {
        let endpoint = Channel::from_shared(self.url.clone()).expect("url");
        match &self.tls_ca {
            Some(ca) => endpoint
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(ca))
                        .domain_name("localhost"),
                )
                .expect("a TLS configuration"),
            None => endpoint,
        }
    }

    /// A connected channel.
    pub async fn channel(&self) -> Channel {
        self.endpoint()
            .connect()
            .await
            .expect("the server accepts connections")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time the server's process has used so far (user and system).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("the server's /proc stat");
        // Fields after the command name, which is in parentheses: utime and stime are the
        // 12th and 13th of them, in clock ticks (100 a second on Linux).
        let after_name = stat.rsplit_once(')').expect("a command name").1;
        let fields: Vec<u64> = after_name
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        Duration::from_millis((fields[11] + fields[12]) * 10)
    }

    /// The most memory the server's process has held (its VmHWM), in bytes.
    pub fn peak_memory_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the server's /proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("a VmHWM line");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("VmHWM in kB");
        kib * 1024
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        Client::new(self.channel().await).max_decoding_message_size(8 << 20)
    }

    /// What the server logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit by itself.
    pub async fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child can be waited for") {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server at once (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `message` with `authorization: Bearer <token>` when a token is given.
pub fn authed<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("ascii token");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A Generate request for the synth.
pub fn generate(prompt: &str, seconds: f64, seed: u64) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt: prompt.into(),
        duration_seconds: seconds,
        sampling: Some(pb::Sampling {
            seed: Some(seed),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `retry-after` hint of a refusal, in seconds (panics when it has none).
pub fn retry_after_secs(status: &Status) -> u64 {
    status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a retry-after hint")
}

/// Every event of a stream until it ends.
pub async fn collect(
    mut stream: Streaming<pb::GenerationEvent>,
) -> Result<Vec<pb::GenerationEvent>, Status> {
    let mut events = Vec::new();
    while let Some(event) = stream.message().await? {
        events.push(event);
    }
    Ok(events)
}

/// Every event of a job after `after`, by Watch, until it ends.
pub async fn watch(client: &mut Client, id: &str, after: u64) -> Vec<pb::GenerationEvent> {
    let request = pb::WatchRequest {
        generation_id: id.to_string(),
        after_sequence: after,
    };
    let stream = client.watch(request).await.expect("watch").into_inner();
    collect(stream).await.expect("a healthy stream")
}

/// A job's polling view.
pub async fn poll(client: &mut Client, id: &str) -> pb::Generation {
    let request = pb::GetGenerationRequest {
        generation_id: id.to_string(),
    };
    client
        .get_generation(request)
        .await
        .expect("get")
        .into_inner()
}

/// Reads events until `stop` holds for one (returned last).
pub async fn read_until(
    stream: &mut Streaming<pb::GenerationEvent>,
    stop: impl Fn(&pb::GenerationEvent) -> bool,
) -> Vec<pb::GenerationEvent> {
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.expect("a healthy stream") {
        let done = stop(&event);
        events.push(event);
        if done {
            return events;
        }
    }
    panic!("the stream ended first: {:?}", names(&events));
}

/// The event's kind, for readable assertions.
pub fn name(event: &pb::GenerationEvent) -> &'static str {
    match &event.event {
        Some(Event::Accepted(_)) => "accepted",
        Some(Event::Progress(_)) => "progress",
        Some(Event::AudioChunk(_)) => "chunk",
        Some(Event::Audio(_)) => "audio",
        Some(Event::Completed(_)) => "completed",
        Some(Event::Failed(_)) => "failed",
        Some(Event::Cancelled(_)) => "cancelled",
        None => "none",
    }
}

/// The kinds of a list of events.
pub fn names(events: &[pb::GenerationEvent]) -> Vec<&'static str> {
    events.iter().map(name).collect()
}

/// Whether the event is a Progress in the given stage.
pub fn is_stage(event: &pb::GenerationEvent, stage: pb::Stage) -> bool {
    matches!(&event.event, Some(Event::Progress(p)) if p.stage == stage as i32)
}

/// The final file assembled from the events' audio pieces, checking offsets and sizes.
pub fn audio_file(events: &[pb::GenerationEvent]) -> Vec<u8> {
    let mut file = Vec::new();
    let mut last = false;
    for event in events {
        if let Some(Event::Audio(piece)) = &event.event {
            assert!(!last, "a piece after the last one");
            assert_eq!(piece.offset, file.len() as u64, "pieces in order, no gaps");
            assert!(piece.data.len() <= 1 << 20, "a piece over 1 MiB");
            file.extend_from_slice(&piece.data);
            assert!(file.len() as u64 <= piece.total_bytes);
            last = piece.last;
        }
    }
    assert!(last, "no last piece");
    file
}

/// The Completed event's payload.
pub fn completed(events: &[pb::GenerationEvent]) -> pb::Completed {
    match events.last().and_then(|e| e.event.clone()) {
        Some(Event::Completed(c)) => c,
        _ => panic!("the stream did not end with Completed: {:?}", names(events)),
    }
}
