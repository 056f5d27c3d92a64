//! End-to-end tests of `son1k generate --server` and `son1k cover --server`: a real
//! `son1k serve` child process on a free port, driven by the command line.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;

use crate::common::server::Server;
use crate::common::{son1k, stderr};

/// Asserts `path` is a stereo 44.1 kHz WAV file of about `seconds`.
fn assert_wav(path: &Path, seconds: f64) {
    let reader = hound::WavReader::open(path).expect("a valid WAV file");
    let spec = reader.spec();
    assert_eq!(spec.channels, 2);
    assert_eq!(spec.sample_rate, 44_100);
    let duration = reader.duration() as f64 / spec.sample_rate as f64;
    assert!(
        (duration - seconds).abs() < 0.05,
        "{duration} s, not {seconds} s"
    );
}

#[tokio::test]
async fn generate_and_cover_run_on_a_server() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = Server::start(&dir.path().join("data"), &[]).await;
    let out = tempfile::tempdir().expect("a temp dir");
    let url = server.url.as_str();

    let wav = out.path().join("x.wav");
    let wav_arg = wav.to_str().expect("utf-8 path");
    let run = son1k(&[
        "generate",
        "--server",
        url,
        "--duration",
        "2",
        "--seed",
        "7",
        "--out",
        wav_arg,
        "lofi piano",
    ]);
    assert!(
        run.status.success(),
        "{}; log: {}",
        stderr(&run),
        server.log()
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("seed 7"), "{stdout}");
    assert!(
        stdout.contains("2.00 s, 44100 Hz, 2 channel(s)"),
        "{stdout}"
    );
    assert_wav(&wav, 2.0);

    let flac = out.path().join("x.flac");
    let flac_arg = flac.to_str().expect("utf-8 path");
    let run = son1k(&[
        "generate",
        "--server",
        url,
        "--duration",
        "2",
        "--seed",
        "7",
        "--out",
        flac_arg,
        "lofi piano",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let bytes = std::fs::read(&flac).expect("the FLAC file");
    assert!(
        bytes.starts_with(b"fLaC"),
        "not FLAC: {:?}",
        &bytes[..4.min(bytes.len())]
    );

    let song = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/songs/pop-g-major-100bpm.flac"
    );
    let cover = out.path().join("y.wav");
    let cover_arg = cover.to_str().expect("utf-8 path");
    let run = son1k(&[
        "cover",
        "--server",
        url,
        "--input",
        song,
        "--duration",
        "3",
        "--out",
        cover_arg,
        "lofi",
    ]);
    assert!(
        run.status.success(),
        "{}; log: {}",
        stderr(&run),
        server.log()
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("wrote "), "{stdout}");
    assert_wav(&cover, 3.0);

    let refused = out.path().join("z.wav");
    let run = son1k(&[
        "generate",
        "--server",
        url,
        "--duration",
        "999",
        "--out",
        refused.to_str().expect("utf-8 path"),
        "x",
    ]);
    let err = stderr(&run);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("duration"), "{err}");
    assert!(err.contains("INVALID_ARGUMENT"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!refused.exists());
}

/// `--play-to` streams the previews while the job runs: to stdout as one WAV stream (the
/// command's lines moving to stderr), or to a file with its real lengths; either way the
/// whole song, in time.
#[tokio::test]
async fn previews_play_to_stdout_or_a_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = Server::start(&dir.path().join("data"), &[]).await;
    let out = tempfile::tempdir().expect("a temp dir");
    let url = server.url.as_str();
    let wav = out.path().join("x.wav");
    let wav_arg = wav.to_str().expect("utf-8 path");
    let args = |play_to: &str| {
        son1k(&[
            "generate",
            "--server",
            url,
            "--duration",
            "2",
            "--seed",
            "3",
            "--out",
            wav_arg,
            "--play-to",
            play_to,
            "lofi piano",
        ])
    };
    let run = args("-");
    assert!(
        run.status.success(),
        "{}; log: {}",
        stderr(&run),
        server.log()
    );
    let stream = &run.stdout;
    assert!(
        stream.starts_with(b"RIFF") && &stream[8..16] == b"WAVEfmt ",
        "not a WAV stream"
    );
    assert_eq!(u16::from_le_bytes([stream[22], stream[23]]), 2, "channels");
    assert_eq!(
        u32::from_le_bytes([stream[24], stream[25], stream[26], stream[27]]),
        44_100
    );
    assert_eq!(
        stream.len() - 44,
        2 * 44_100 * 2 * 2,
        "2 s of 16-bit stereo"
    );
    assert!(stream[44..].iter().any(|&b| b != 0), "silent");
    assert!(
        stderr(&run).contains("2.00 s, 44100 Hz"),
        "{}",
        stderr(&run)
    );

    let live = out.path().join("live.wav");
    let run = args(live.to_str().expect("utf-8 path"));
    assert!(run.status.success(), "{}", stderr(&run));
    assert_wav(&live, 2.0);
    assert_wav(&wav, 2.0);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("seed 3"), "{stdout}");
}

/// A TCP proxy to the server at `url` that cuts its first connection after `cut_after` bytes
/// from the server, as a dropped network would; later connections pass untouched. Returns
/// its own URL.
fn flaky_proxy(url: &str, cut_after: usize) -> String {
    let target = url.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").expect("a proxy port");
    let addr = listener.local_addr().expect("the proxy address");
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let Ok(upstream) = TcpStream::connect(&target) else {
                continue;
            };
            let (Ok(client_in), Ok(upstream_out)) = (client.try_clone(), upstream.try_clone())
            else {
                continue;
            };
            pipe(client_in, upstream_out, None);
            pipe(upstream, client, (n == 0).then_some(cut_after));
        }
    });
    format!("http://{addr}")
}

/// Copies `from` to `to` on a thread of its own, at most `limit` bytes, then closes both.
fn pipe(mut from: TcpStream, mut to: TcpStream, limit: Option<usize>) {
    std::thread::spawn(move || {
        let mut buffer = [0; 4096];
        let mut sent = 0;
        loop {
            let n = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let n = limit.map_or(n, |limit| n.min(limit - sent));
            if to.write_all(&buffer[..n]).is_err() {
                break;
            }
            sent += n;
            if limit.is_some_and(|limit| sent >= limit) {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[tokio::test]
async fn a_dropped_stream_is_re_attached_with_watch() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = Server::start(&dir.path().join("data"), &[]).await;
    // Past the job's first events, well before the end of its audio.
    let proxy = flaky_proxy(&server.url, 20_000);
    let out = tempfile::tempdir().expect("a temp dir");
    let wav = out.path().join("x.wav");
    let run = son1k(&[
        "generate",
        "--server",
        &proxy,
        "--duration",
        "2",
        "--seed",
        "7",
        "--out",
        wav.to_str().expect("utf-8 path"),
        "lofi piano",
    ]);
    let err = stderr(&run);
    assert!(run.status.success(), "{err}; log: {}", server.log());
    assert!(err.contains("re-attaching"), "{err}");
    assert_wav(&wav, 2.0);
}

#[test]
fn local_only_flags_and_bad_servers_are_clear_errors() {
    let out = tempfile::tempdir().expect("a temp dir");
    let file = out.path().join("z.wav");
    let file = file.to_str().expect("utf-8 path");

    for flag in [["--device", "cpu"], ["--max-new-tokens", "10"]] {
        let run = son1k(&[
            "generate",
            "--server",
            "http://127.0.0.1:1",
            flag[0],
            flag[1],
            "--out",
            file,
            "x",
        ]);
        let err = stderr(&run);
        assert_eq!(run.status.code(), Some(2), "{err}");
        assert!(err.contains(flag[0]) && err.contains("--server"), "{err}");
    }

    let run = son1k(&["generate", "--model-id", "synth", "--out", file, "x"]);
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));

    let run = son1k(&[
        "generate",
        "--server",
        "http://bad host",
        "--out",
        file,
        "x",
    ]);
    let err = stderr(&run);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("--server"), "{err}");

    // Nothing listens on port 1.
    let run = son1k(&[
        "generate",
        "--server",
        "http://127.0.0.1:1",
        "--out",
        file,
        "x",
    ]);
    let err = stderr(&run);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot connect") && err.contains("--server"),
        "{err}"
    );
}
