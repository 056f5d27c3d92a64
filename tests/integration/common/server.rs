//! A Son1k server for the service tests, and client helpers: authenticated requests, event
//! collection, audio reassembly. [`Server::start`] runs the server inside the test process
//! on a loopback port the test binds (its flags parsed as `son1k serve` parses them); the
//! `*_process` starts run `son1k serve` as a child, for the tests where the process itself
//! is the point: signals, SIGKILL and restart, a lowered file limit, its memory and CPU.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use son1k::cli::serve::{plan, ServeArgs};
use son1k::node::serve_on;
use son1k::proto::v1 as pb;
use son1k::proto::v1::generation_event::Event;
use son1k::proto::v1::generation_service_client::GenerationServiceClient;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status, Streaming};

/// A gRPC client of the generation service.
pub(crate) type Client = GenerationServiceClient<Channel>;

/// `son1k serve`'s flags, parsed alone.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    serve: ServeArgs,
}

/// Where a server runs.
enum Running {
    /// On its own runtime on a thread of this process; dropping `kill` stops it at once.
    InProcess {
        kill: Option<oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    /// A `son1k serve` child, its stderr in `log`.
    Process { child: Child, log: PathBuf },
}

/// A running server; stopped at once (in process) or killed (SIGKILL) when dropped.
pub(crate) struct Server {
    running: Running,
    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The certificate authority clients trust when the server speaks TLS.
    tls_ca: Option<Vec<u8>>,
}

impl Server {
    /// Starts a server in this process on a free loopback port with `data_dir` and `extra`
    /// flags of `son1k serve`, and waits until its health says SERVING.
    pub(crate) async fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_tls(data_dir, extra, None).await
    }

    /// [`Server::start`] for a server that speaks TLS (its flags in `extra`) with a
    /// certificate `tls_ca` signed.
    pub(crate) async fn start_with_tls(
        data_dir: &Path,
        extra: &[&str],
        tls_ca: Option<&[u8]>,
    ) -> Server {
        let mut argv = vec![
            "serve",
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
        ];
        argv.extend_from_slice(extra);
        let flags = Flags::try_parse_from(argv).expect("valid serve flags");
        let (config, load_models) = plan(flags.serve).expect("a valid configuration");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("an address").to_string();
        let scheme = config.scheme();
        let (kill, killed) = oneshot::channel::<()>();
        let (ready, engine_up) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
                // Runs until the test stops it: the drain on a shutdown signal is the
                // process tests' to check.
                let never = std::future::pending();
                tokio::select! {
                    result = serve_on(config, listener, load_models, never, ready) => {
                        result.expect("the server runs");
                    }
                    _ = killed => {}
                }
            });
            // Dropping the runtime drops the job registry, which stops running jobs.
            runtime.shutdown_background();
        });
        let server = Server {
            running: Running::InProcess {
                kill: Some(kill),
                thread: Some(thread),
            },
            url: format!("{scheme}://{addr}"),
            addr,
            data_dir: data_dir.to_path_buf(),
            tls_ca: tls_ca.map(<[u8]>::to_vec),
        };
        engine_up.await.expect("the engine starts");
        server.wait_health(true).await;
        server
    }

    /// Starts `son1k serve` as a child process (its log in `<data_dir>.log`) and waits
    /// until its health says SERVING.
    pub(crate) async fn start_process(data_dir: &Path, extra: &[&str]) -> Server {
        let server = Self::launch(data_dir, &data_dir.with_extension("log"), extra, None).await;
        server.wait_health(true).await;
        server
    }

    /// [`Server::start_process`] with its log in `log` (outside a data directory the test
    /// fills or makes read-only).
    pub(crate) async fn start_logging(data_dir: &Path, log: &Path, extra: &[&str]) -> Server {
        let server = Self::launch(data_dir, log, extra, None).await;
        server.wait_health(true).await;
        server
    }

    /// [`Server::start_process`] for a process that may hold at most `files` open file
    /// descriptors (its connections among them).
    pub(crate) async fn start_with_open_files(
        data_dir: &Path,
        files: u32,
        extra: &[&str],
    ) -> Server {
        let log = data_dir.with_extension("log");
        let server = Self::launch(data_dir, &log, extra, Some(files)).await;
        server.wait_health(true).await;
        server
    }

    /// [`Server::start_logging`] for a server that comes up NOT_SERVING (its store cannot
    /// write): waits until its models are loaded and it answers calls. Health cannot tell
    /// (it says NOT_SERVING before and after), so this asks until a call is answered.
    pub(crate) async fn start_unhealthy(data_dir: &Path, log: &Path, extra: &[&str]) -> Server {
        let server = Self::launch(data_dir, log, extra, None).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut client = GenerationServiceClient::new(server.channel().await);
        while client.list_models(pb::ListModelsRequest {}).await.is_err() {
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

    /// Starts the process and reads the address it prints once it listens.
    async fn launch(
        data_dir: &Path,
        log_path: &Path,
        extra: &[&str],
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
            .kill_on_drop(true)
            .spawn()
            .expect("son1k serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("the server prints its address");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .trim_end_matches('/')
            .to_string();
        let addr = url.split_once("://").expect("a scheme").1.to_string();
        Server {
            running: Running::Process {
                child,
                log: log_path.to_path_buf(),
            },
            url,
            addr,
            data_dir: data_dir.to_path_buf(),
            tls_ca: None,
        }
    }

    /// Waits until the health check says SERVING (`true`) or NOT_SERVING (`false`),
    /// following the health service's Watch stream.
    pub(crate) async fn wait_health(&self, serving: bool) {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::HealthCheckRequest;
        let wanted = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let watching = async {
            let mut updates = HealthClient::new(self.channel().await)
                .watch(HealthCheckRequest {
                    service: "son1k.v1.GenerationService".into(),
                })
                .await
                .expect("health watch")
                .into_inner();
            while let Some(update) = updates.message().await.expect("a health stream") {
                if update.status == wanted as i32 {
                    return;
                }
            }
            panic!("the health stream ended");
        };
        if tokio::time::timeout(Duration::from_secs(120), watching)
            .await
            .is_err()
        {
            panic!(
                "the server's health never became {wanted:?}: {}",
                self.log()
            );
        }
    }

    /// The server's endpoint, trusting its test certificate authority when it speaks TLS.
    pub(crate) fn endpoint(&self) -> Endpoint {
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
    pub(crate) async fn channel(&self) -> Channel {
        self.endpoint()
            .connect()
            .await
            .expect("the server accepts connections")
    }

    /// The server process's id (a process server only).
    pub(crate) fn pid(&self) -> u32 {
        match &self.running {
            Running::Process { child, .. } => child.id().expect("a running child"),
            Running::InProcess { .. } => panic!("an in-process server has no process of its own"),
        }
    }

    /// The CPU time the server's process has used so far (user and system).
    pub(crate) fn cpu_time(&self) -> Duration {
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
    pub(crate) fn peak_memory_bytes(&self) -> u64 {
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
    pub(crate) async fn client(&self) -> Client {
        Client::new(self.channel().await).max_decoding_message_size(8 << 20)
    }

    /// What a process server logged so far (for failure messages); an in-process server's
    /// log is the test's own output.
    pub(crate) fn log(&self) -> String {
        match &self.running {
            Running::Process { log, .. } => std::fs::read_to_string(log).unwrap_or_default(),
            Running::InProcess { .. } => "(in process: see the test's output)".into(),
        }
    }

    /// Sends SIGTERM to a process server (a graceful stop).
    pub(crate) fn terminate(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    /// Pauses a process server (SIGSTOP): it holds its connections and does nothing.
    pub(crate) fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Lets a paused process server go on (SIGCONT).
    pub(crate) fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("a process id");
        rustix::process::kill_process(pid, signal).expect("a signal");
    }

    /// Waits for a process server to exit by itself.
    pub(crate) async fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        let Running::Process { child, .. } = &mut self.running else {
            panic!("an in-process server has no exit status");
        };
        tokio::time::timeout(within, child.wait())
            .await
            .expect("the server exits in time")
            .expect("the child can be waited for")
    }

    /// Stops the server at once: SIGKILL for a process (as a crash would), the runtime
    /// dropped in process.
    pub(crate) async fn kill(&mut self) {
        match &mut self.running {
            Running::Process { child, .. } => {
                let _ = child.kill().await;
            }
            Running::InProcess { kill, thread } => stop(kill, thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Process { child, .. } => {
                let _ = child.start_kill();
            }
            Running::InProcess { kill, thread } => stop(kill, thread),
        }
    }
}

/// `message` with `authorization: Bearer <token>` when a token is given.
pub(crate) fn authed<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("ascii token");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A Generate request for the synth.
pub(crate) fn generate(prompt: &str, seconds: f64, seed: u64) -> pb::GenerateRequest {
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

/// Generate, retried while it is refused RESOURCE_EXHAUSTED, for at most 10 s: for a place
/// that frees just after the end a client saw (a cluster's node takes the job's work back
/// right after writing its end).
pub(crate) async fn generate_when_admitted(
    client: &mut Client,
    request: pb::GenerateRequest,
) -> Streaming<pb::GenerationEvent> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.generate(request.clone()).await {
            Ok(stream) => return stream.into_inner(),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                assert!(Instant::now() < deadline, "the place never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}

/// The `retry-after` hint of a refusal, in seconds (panics when it has none).
pub(crate) fn retry_after_secs(status: &Status) -> u64 {
    status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a retry-after hint")
}

/// Every event of a stream until it ends.
pub(crate) async fn collect(
    mut stream: Streaming<pb::GenerationEvent>,
) -> Result<Vec<pb::GenerationEvent>, Status> {
    let mut events = Vec::new();
    while let Some(event) = stream.message().await? {
        events.push(event);
    }
    Ok(events)
}

/// Every event of a job after `after`, by Watch, until it ends.
pub(crate) async fn watch(client: &mut Client, id: &str, after: u64) -> Vec<pb::GenerationEvent> {
    let request = pb::WatchRequest {
        generation_id: id.to_string(),
        after_sequence: after,
    };
    let stream = client.watch(request).await.expect("watch").into_inner();
    collect(stream).await.expect("a healthy stream")
}

/// The whole audio file of a job, by GetAudio.
pub(crate) async fn get_audio(client: &mut Client, id: &str) -> Vec<u8> {
    let request = pb::GetAudioRequest {
        generation_id: id.to_string(),
    };
    let mut stream = client.get_audio(request).await.unwrap().into_inner();
    let mut bytes = Vec::new();
    while let Some(piece) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&piece.data);
    }
    bytes
}

/// A job's polling view.
pub(crate) async fn poll(client: &mut Client, id: &str) -> pb::Generation {
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
pub(crate) async fn read_until(
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
pub(crate) fn name(event: &pb::GenerationEvent) -> &'static str {
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
pub(crate) fn names(events: &[pb::GenerationEvent]) -> Vec<&'static str> {
    events.iter().map(name).collect()
}

/// Whether the event is a Progress in the given stage.
pub(crate) fn is_stage(event: &pb::GenerationEvent, stage: pb::Stage) -> bool {
    matches!(&event.event, Some(Event::Progress(p)) if p.stage == stage as i32)
}

/// The final file assembled from the events' audio pieces, checking offsets and sizes.
pub(crate) fn audio_file(events: &[pb::GenerationEvent]) -> Vec<u8> {
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
pub(crate) fn completed(events: &[pb::GenerationEvent]) -> pb::Completed {
    match events.last().and_then(|e| e.event.clone()) {
        Some(Event::Completed(c)) => c,
        _ => panic!("the stream did not end with Completed: {:?}", names(events)),
    }
}

/// Stops an in-process server at once: its runtime is dropped, and the thread joined.
fn stop(kill: &mut Option<oneshot::Sender<()>>, thread: &mut Option<std::thread::JoinHandle<()>>) {
    drop(kill.take());
    if let Some(thread) = thread.take() {
        let _ = thread.join();
    }
}

/// One HTTP/1.1 exchange on a fresh connection: (head in lower case, de-chunked body).
pub(crate) async fn http1(addr: &str, request: Vec<u8>) -> (String, Vec<u8>) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&response[..split]).to_lowercase();
    let mut rest = &response[split + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return (head, rest.to_vec());
    }
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            return (head, body);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}
