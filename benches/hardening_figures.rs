//! Before/after figures for the hardening issue: runs one `son1k serve` binary (given as
//! the first argument) through each finding and prints what it measured. Not part of the
//! suite; run it against two builds side by side:
//! `cargo bench --bench hardening_figures -- path/to/son1k [--jobs N]`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use son1k::proto::v1 as pb;
use son1k::proto::v1::generation_service_client::GenerationServiceClient;
use tonic::transport::Channel;

struct Served {
    child: Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(binary: &str, data: &std::path::Path, extra: &[&str], open_files: Option<u32>) -> Served {
    let mut command = match open_files {
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(binary);
            c
        }
        None => Command::new(binary),
    };
    let mut child = command
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let addr = url.trim_start_matches("http://").to_string();
    std::thread::sleep(Duration::from_millis(500));
    Served { child, addr }
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10
}

async fn client(addr: &str) -> GenerationServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    GenerationServiceClient::new(channel).max_decoding_message_size(64 << 20)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// What to measure.
#[derive(clap::Parser)]
struct Args {
    /// The `son1k` binary to serve with.
    server: String,
    /// Jobs to make before timing ListGenerations (0: skip it; 16000 reproduces the issue).
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() {
    let Args {
        server: binary,
        jobs,
        ..
    } = clap::Parser::parse();
    let dir = tempfile::tempdir().unwrap();
    let big = [
        "--max-stored-jobs-per-tenant",
        "100000",
        "--max-submits-per-minute",
        "1000000",
        "--max-stored-bytes-per-tenant",
        "1000000000000",
        "--max-jobs-per-tenant",
        "256",
        "--max-queued",
        "256",
    ];
    let new_flags = Command::new(&binary)
        .args(["serve", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("max-submits-per-minute"))
        .unwrap_or(false);
    let flags: Vec<&str> = if new_flags {
        big.to_vec()
    } else {
        big[6..].to_vec()
    };

    // 1. Unary latency on loopback, one connection.
    {
        let server = serve(&binary, &dir.path().join("a"), &[], None);
        let mut c = client(&server.addr).await;
        let mut times = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            c.list_models(pb::ListModelsRequest {}).await.unwrap();
            times.push(t.elapsed());
        }
        println!("unary ListModels median: {:?}", median(times));

        // 2. A 50 MiB prompt.
        let before = status_field(server.child.id(), "VmHWM:");
        let t = Instant::now();
        let status = c
            .generate(pb::GenerateRequest {
                prompt: "x".repeat(50 << 20),
                ..Default::default()
            })
            .await
            .err()
            .map(|s| {
                format!(
                    "{:?}: {}",
                    s.code(),
                    &s.message()[..s.message().len().min(80)]
                )
            });
        let after = status_field(server.child.id(), "VmHWM:");
        println!(
            "50 MiB prompt: {:?} in {:?}, peak {} -> {} MiB",
            status,
            t.elapsed(),
            before >> 10,
            after >> 10
        );

        // 3. A rebound Host.
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.write_all(b"POST /son1k.v1.GenerationService/ListModels HTTP/1.1\r\nHost: rebind.evil.com\r\nContent-Type: application/grpc-web+proto\r\nContent-Length: 5\r\nConnection: close\r\n\r\n\0\0\0\0\0").unwrap();
        let mut reply = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = s.read_to_end(&mut reply);
        let first = String::from_utf8_lossy(&reply);
        println!("rebound Host: {}", first.lines().next().unwrap_or(""));

        // 4. A silent TCP connection.
        let mut silent = TcpStream::connect(&server.addr).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let t = Instant::now();
        let mut b = [0u8; 1];
        let r = silent.read(&mut b);
        println!(
            "silent connection: {:?} after {:?}",
            r.map_err(|e| e.kind()),
            t.elapsed()
        );

        // 5. Many Health.Watch streams, no token.
        let rss0 = status_field(server.child.id(), "VmRSS:");
        let mut streams = Vec::new();
        let mut health = Vec::new();
        for _ in 0..10 {
            let channel = Channel::from_shared(format!("http://{}", server.addr))
                .unwrap()
                .connect()
                .await
                .unwrap();
            health.push(tonic_health::pb::health_client::HealthClient::new(channel));
        }
        let t = Instant::now();
        let mut opened = 0;
        for i in 0..20_000 {
            let mut h = health[i % 10].clone();
            let open = tokio::time::timeout(
                Duration::from_millis(200),
                h.watch(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                }),
            )
            .await;
            match open {
                Ok(Ok(stream)) => {
                    streams.push(stream);
                    opened += 1;
                }
                _ => break,
            }
            if t.elapsed() > Duration::from_secs(60) {
                break;
            }
        }
        let rss1 = status_field(server.child.id(), "VmRSS:");
        println!(
            "Health.Watch streams opened: {opened} (then the client waited); server RSS {} -> {} MiB",
            rss0 >> 10,
            rss1 >> 10
        );
    }

    // 6. Out of file descriptors.
    {
        let server = serve(&binary, &dir.path().join("b"), &[], Some(64));
        let flood: Vec<TcpStream> = (0..100)
            .filter_map(|_| TcpStream::connect(&server.addr).ok())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let c0 = cpu_ms(server.child.id());
        std::thread::sleep(Duration::from_secs(2));
        println!(
            "out of descriptors: {} ms of CPU in 2 s",
            cpu_ms(server.child.id()) - c0
        );
        drop(flood);
    }

    // 7. A FLAC bomb.
    {
        let server = serve(&binary, &dir.path().join("c"), &[], None);
        let mut c = client(&server.addr).await;
        let song = bomb();
        let t = Instant::now();
        let status = c
            .cover(pb::CoverRequest {
                song,
                prompt: "lofi".into(),
                ..Default::default()
            })
            .await
            .map(|_| "accepted".to_string())
            .unwrap_or_else(|s| format!("{:?}: {}", s.code(), s.message()));
        println!(
            "FLAC bomb: {status} after {:?}; server peak {} MiB",
            t.elapsed(),
            status_field(server.child.id(), "VmHWM:") >> 10
        );
    }

    // 8. A listing at N jobs, and another tenant's Get meanwhile.
    if jobs > 0 {
        let server = serve(&binary, &dir.path().join("d"), &flags, None);
        let mut c = client(&server.addr).await;
        let t = Instant::now();
        let mut tasks = Vec::new();
        let mut ids = Vec::new();
        for i in 0..jobs {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = c
                    .generate(pb::GenerateRequest {
                        prompt: "x".into(),
                        duration_seconds: 0.1,
                        sampling: Some(pb::Sampling {
                            seed: Some(i as u64),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let first = s.message().await.unwrap().unwrap();
                while s.message().await.unwrap().is_some() {}
                first.generation_id
            }));
            if tasks.len() == 128 || i + 1 == jobs {
                for task in tasks.drain(..) {
                    ids.push(task.await.unwrap());
                }
            }
        }
        println!("made {jobs} jobs in {:?}", t.elapsed());
        let probe_id = ids.pop().unwrap();
        let mut gets = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            c.get_generation(pb::GetGenerationRequest {
                generation_id: probe_id.clone(),
            })
            .await
            .unwrap();
            gets.push(t.elapsed());
        }
        println!("GetGeneration alone: median {:?}", median(gets));
        let mut lists = Vec::new();
        let mut gets = Vec::new();
        for _ in 0..20 {
            let mut l = c.clone();
            let listing = tokio::spawn(async move {
                let t = Instant::now();
                l.list_generations(pb::ListGenerationsRequest {
                    page_size: 50,
                    page_token: String::new(),
                })
                .await
                .unwrap();
                t.elapsed()
            });
            let t = Instant::now();
            c.get_generation(pb::GetGenerationRequest {
                generation_id: probe_id.clone(),
            })
            .await
            .unwrap();
            gets.push(t.elapsed());
            lists.push(listing.await.unwrap());
        }
        println!(
            "ListGenerations (50) at {jobs} jobs: median {:?}; a GetGeneration beside it: median {:?}",
            median(lists),
            median(gets)
        );
    }
}

/// 599 s of 8 channels at 192 kHz, CONSTANT subframes (see tests/integration/common/flac_bomb.rs).
fn bomb() -> Vec<u8> {
    #[path = "../tests/integration/common/flac_bomb.rs"]
    mod flac_bomb;
    flac_bomb::flac_bomb(599, 8, true)
}
