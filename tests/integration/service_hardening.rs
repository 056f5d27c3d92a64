//! The service under hostile input, over real sockets: decompression bombs, DNS rebinding,
//! TLS and cleartext, transport limits (message sizes, streams per connection and per
//! tenant, silent connections), the page's security headers, and flags that would overflow.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::flac_bomb::flac_bomb;
use crate::common::server::{authed, collect, generate, Server};
use son1k::proto::v1 as pb;
use tonic::Code;

const ALICE: &str = "alice-token-0123456789";

/// A cover's peak memory, as the README documents it: the server's own size plus the
/// largest upload's copies and the decoded mono song.
const COVER_PEAK_BYTES: u64 = 512 << 20;

/// Sends raw bytes on a fresh connection and returns what comes back until the server
/// closes it or goes quiet for a second.
fn raw_exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                if response.windows(4).any(|w| w == b"\r\n\r\n") {
                    stream
                        .set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                }
            }
            Err(_) => break,
        }
    }
    response
}

/// The status line and headers of an HTTP/1.1 response.
fn head(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A grpc-web ListModels request as a page would send it.
fn grpc_web_list_models(host: &str, origin: Option<&str>) -> Vec<u8> {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let body = [0u8, 0, 0, 0, 0];
    let mut request = format!(
        "POST /son1k.v1.GenerationService/ListModels HTTP/1.1\r\nHost: {host}\r\n{origin}\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend(body);
    request
}

#[tokio::test]
async fn flac_bombs_are_refused_naming_the_limit_and_the_server_stays_under_its_peak() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_process(&dir.path().join("data"), &[]).await;
    let mut client = server.client().await;
    // 599 s of 8 channels at 192 kHz: about 920 M samples (3.7 GB as f32) from ~1 MB.
    for declare_length in [true, false] {
        let song = flac_bomb(599, 8, declare_length);
        assert!(song.len() < 1 << 20, "{}", song.len());
        let status = client
            .cover(pb::CoverRequest {
                song,
                prompt: "lofi".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let message = status.message();
        assert!(
            message.contains("song") && message.contains("the limit is 120000000"),
            "{message}"
        );
    }
    let peak = server.peak_memory_bytes();
    eprintln!("server peak after the bombs: {} MiB", peak >> 20);
    assert!(
        peak < COVER_PEAK_BYTES,
        "peak {} MiB over the documented {} MiB",
        peak >> 20,
        COVER_PEAK_BYTES >> 20
    );
    // The refused uploads gave their admission slots back.
    let events = collect(
        client
            .generate(generate("after the bombs", 1.0, 1))
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    crate::common::server::completed(&events);
}

#[tokio::test]
async fn an_open_server_answers_only_loopback_hosts_and_local_origins() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]).await;
    let addr = server.addr.as_str();

    let page = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: rebind.evil.com\r\nConnection: close\r\n\r\n",
    );
    assert!(head(&page).starts_with("HTTP/1.1 403"), "{}", head(&page));
    assert!(!String::from_utf8_lossy(&page).contains("<html"));
    let rebound = raw_exchange(addr, &grpc_web_list_models("rebind.evil.com:50051", None));
    assert!(
        head(&rebound).starts_with("HTTP/1.1 403"),
        "{}",
        head(&rebound)
    );
    let foreign_page = raw_exchange(
        addr,
        &grpc_web_list_models("127.0.0.1", Some("http://evil.example")),
    );
    assert!(head(&foreign_page).starts_with("HTTP/1.1 403"));

    // HTTP/2 names its target in `:authority`: a rebound name there is refused too.
    let rebound_h2 = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .origin("http://rebind.evil.com:50051".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let status =
        son1k::proto::v1::generation_service_client::GenerationServiceClient::new(rebound_h2)
            .list_models(pb::ListModelsRequest {})
            .await
            .unwrap_err();
    assert!(status.message().contains("403 Forbidden"), "{status:?}");

    // The same calls from this machine's own page work.
    let local = raw_exchange(
        addr,
        &grpc_web_list_models(addr, Some(&format!("http://{addr}"))),
    );
    assert!(head(&local).starts_with("HTTP/1.1 200"), "{}", head(&local));
    assert!(String::from_utf8_lossy(&local).contains("synth"));
    let page = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let headers = head(&page).to_ascii_lowercase();
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    assert!(headers.contains("frame-ancestors 'none'"), "{headers}");
    assert!(headers.contains("content-security-policy: default-src 'none'; script-src 'self';"));
    assert!(headers.contains("x-frame-options: deny"));
}

#[tokio::test]
async fn tls_serves_grpc_to_clients_that_trust_it_and_refuses_cleartext() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("alice {ALICE}\n")).unwrap();
    let (cert, key) = (
        format!("{fixtures}/server.pem"),
        format!("{fixtures}/server.key"),
    );
    let ca = std::fs::read(format!("{fixtures}/ca.pem")).unwrap();
    let server = Server::start_with_tls(
        &dir.path().join("data"),
        &[
            "--tokens-file",
            tokens.to_str().unwrap(),
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        Some(&ca),
    )
    .await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let mut client = server.client().await;
    let models = client
        .list_models(authed(pb::ListModelsRequest {}, Some(ALICE)))
        .await
        .unwrap();
    assert!(!models.get_ref().models.is_empty());
    let events = collect(
        client
            .generate(authed(generate("tls tango", 1.0, 1), Some(ALICE)))
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    crate::common::server::completed(&events);

    // Cleartext HTTP on the TLS port gets no HTTP answer.
    let plain = raw_exchange(
        &server.addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(!plain.starts_with(b"HTTP/1.1"), "{}", head(&plain));
}

#[test]
fn off_loopback_needs_tls_or_words_that_say_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("alice {ALICE}\n")).unwrap();
    let data = dir.path().join("data");
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--addr",
            "0.0.0.0:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--tokens-file",
            tokens.to_str().unwrap(),
        ];
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_son1k"))
        .args(serve(&[]))
        .output()
        .unwrap();
    crate::common::assert_clean_failure(
        &out,
        &["0.0.0.0", "TLS", "--tls-cert", "--insecure-listen"],
    );

    // Said in words, it starts (and says where it listens).
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_son1k"))
        .args(serve(&["--insecure-listen"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("listening on http://0.0.0.0:"), "{line}");
}

#[test]
fn flags_that_would_overflow_a_duration_are_clean_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (flag, value) in [
        ("--retention-hours", "1e20"),
        ("--drain-timeout", "inf"),
        ("--idle-timeout", "0"),
        ("--max-duration", "NaN"),
        ("--max-song-seconds", "inf"),
        ("--max-connections", "0"),
    ] {
        let out =
            crate::common::son1k(&["serve", "--data-dir", data.to_str().unwrap(), flag, value]);
        crate::common::assert_clean_failure(&out, &[flag]);
    }
}

#[tokio::test]
async fn messages_are_small_except_covers_and_the_limit_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]).await;
    let mut client = server.client().await;
    let huge = "x".repeat(1 << 20);
    let status = client.generate(generate(&huge, 1.0, 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("65536"), "{}", status.message());
    let status = client
        .get_generation(pb::GetGenerationRequest {
            generation_id: huge.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    // A prompt under the message limit but over the character limit names the prompt.
    let status = client
        .generate(generate(&"y".repeat(3000), 1.0, 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("prompt"), "{}", status.message());
    // A cover's upload of 1 MiB is well past the small limit and still accepted.
    let status = client
        .cover(pb::CoverRequest {
            song: vec![7u8; 1 << 20],
            prompt: "lofi".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("song"), "{}", status.message());
}

#[tokio::test]
async fn streams_are_capped_per_connection_and_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--max-streams-per-connection",
            "7",
            "--max-streams-per-tenant",
            "2",
            "--max-duration",
            "600",
        ],
    )
    .await;
    // The server announces its stream limit in its first SETTINGS frame.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]); // an empty SETTINGS frame
    let reply = raw_exchange(&server.addr, &preface);
    assert!(reply.len() >= 9 && reply[3] == 4, "{reply:?}");
    let length = u32::from_be_bytes([0, reply[0], reply[1], reply[2]]) as usize;
    let max_streams = reply[9..9 + length]
        .chunks(6)
        .find(|setting| setting[..2] == [0, 3])
        .map(|setting| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]));
    assert_eq!(max_streams, Some(7));

    // One token: a generation's stream and one Watch; a third stream is refused.
    let mut client = server.client().await;
    let mut running = client
        .generate(generate("a long drone", 600.0, 1))
        .await
        .unwrap()
        .into_inner();
    let id = running.message().await.unwrap().unwrap().generation_id;
    let watch = || pb::WatchRequest {
        generation_id: id.clone(),
        after_sequence: 0,
    };
    let _watching = client.watch(watch()).await.unwrap();
    let status = client.watch(watch()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_streams_per_tenant"),
        "{}",
        status.message()
    );
    // Polling still works, and closing a stream frees its slot.
    drop(running);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let _again = loop {
        match client.watch(watch()).await {
            Ok(stream) => break stream,
            Err(status) if std::time::Instant::now() < deadline => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("the slot was never freed: {status:?}"),
        }
    };
    client
        .cancel_generation(pb::CancelGenerationRequest { generation_id: id })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--header-read-timeout", "0.5"]).await;
    let mut silent = TcpStream::connect(&server.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    let started = std::time::Instant::now();
    let read = silent.read(&mut byte);
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "still open after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_pauses_instead_of_spinning_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_open_files(&dir.path().join("data"), 64, &[]).await;
    // More connections than descriptors: the kernel queues them, accept() fails (EMFILE).
    let flood: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(&server.addr).ok())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.cpu_time();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = server.cpu_time() - before;
    // A loop retrying at once burns a whole core (2 s here); pausing costs next to nothing.
    assert!(
        spent < Duration::from_millis(500),
        "{spent:?} of CPU in 2 s"
    );
    assert!(
        server.log().contains("cannot accept connections"),
        "{}",
        server.log()
    );
    drop(flood);
    // Descriptors free again: the server answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(channel) = server.endpoint().connect().await {
            let mut client =
                son1k::proto::v1::generation_service_client::GenerationServiceClient::new(channel);
            if client.list_models(pb::ListModelsRequest {}).await.is_ok() {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads HTTP/2 frames (type, flags, payload) until the server closes the connection or
/// `within` passes.
fn h2_frames_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let length = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        types.push(bytes[at + 3]);
        at += 9 + length;
    }
    types
}

#[tokio::test]
async fn a_connection_past_its_age_gets_a_goaway_and_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--max-connection-age",
            "1",
            "--max-connection-age-grace",
            "30",
            "--idle-timeout",
            "60",
        ],
    )
    .await;
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&preface).unwrap();
    let opened = std::time::Instant::now();
    let frames = h2_frames_until_closed(&mut stream, Duration::from_secs(20));
    const GOAWAY: u8 = 7;
    assert!(frames.contains(&GOAWAY), "frames {frames:?}");
    let closed = opened.elapsed();
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(20),
        "{closed:?}"
    );
}

#[tokio::test]
async fn a_quiet_stream_outlives_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--idle-timeout",
            "1",
            "--max-running",
            "1",
            "--max-duration",
            "600",
        ],
    )
    .await;
    let mut first = server.client().await;
    let mut running = first
        .generate(generate("a long drone", 600.0, 1))
        .await
        .unwrap()
        .into_inner();
    let running_id = running.message().await.unwrap().unwrap().generation_id;
    // A second job waits in line on a connection of its own, where nothing moves.
    let mut waiting_client = server.client().await;
    let mut waiting = waiting_client
        .generate(generate("next", 1.0, 2))
        .await
        .unwrap()
        .into_inner();
    let accepted = waiting.message().await.unwrap().unwrap();
    assert!(matches!(
        accepted.event,
        Some(son1k::proto::v1::generation_event::Event::Accepted(_))
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    first
        .cancel_generation(pb::CancelGenerationRequest {
            generation_id: running_id,
        })
        .await
        .unwrap();
    // Its stream is still there and carries the job to its end.
    let events = collect(waiting).await.expect("the quiet stream survived");
    crate::common::server::completed(&events);
}
