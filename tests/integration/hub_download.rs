//! Checkpoints by Hub id that the cache lacks: downloaded from the Hub's file endpoints
//! (`HF_ENDPOINT`, here a local server that answers as the Hub does) into the Hugging Face
//! cache layout, then loaded; found there again without the network; and, offline or with no
//! Hub to reach, a clear error, not a hang. Nothing leaves the machine.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::{read_wav, stderr, tiny_model};

const COMMIT: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c";

/// A Hub that serves one repository's files at `/{repo}/resolve/main/{file}`, with the
/// headers `hf-hub` reads (`x-repo-commit`, `etag`, `content-range` for ranges), and logs
/// the paths asked for.
struct LocalHub {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl LocalHub {
    fn serve(repo: &str, files: HashMap<String, Vec<u8>>) -> LocalHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (log, prefix) = (Arc::clone(&requests), format!("/{repo}/resolve/main/"));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                answer(stream, &prefix, &files, &log);
            }
        });
        LocalHub { url, requests }
    }

    fn asked(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Answers one request and closes the connection.
fn answer(
    mut stream: TcpStream,
    prefix: &str,
    files: &HashMap<String, Vec<u8>>,
    log: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap() <= 2 {
            break;
        }
        if let Some((name, value)) = header.trim().split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = value.trim().strip_prefix("bytes=").map(str::to_string);
            }
        }
    }
    log.lock().unwrap().push(path.clone());
    let Some(body) = path.strip_prefix(prefix).and_then(|name| files.get(name)) else {
        let _ = stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nx-error-code: EntryNotFound\r\n\
              content-length: 0\r\nconnection: close\r\n\r\n",
        );
        return;
    };
    let etag = format!("{:x}", Sha256::digest(body));
    let (status, start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
        Some((start, end)) => {
            let start: usize = start.parse().unwrap();
            let end = end
                .parse()
                .map_or(body.len(), |e: usize| e + 1)
                .min(body.len());
            ("206 Partial Content", start, end)
        }
        None => ("200 OK", 0, body.len()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nx-repo-commit: {COMMIT}\r\netag: \"{etag}\"\r\n\
         content-range: bytes {start}-{}/{}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        end.max(1) - 1,
        body.len(),
        end - start
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body[start..end]);
}

/// Runs `son1k` with the Hub environment given (and no other), killed after 60 s so a hang
/// fails the test instead of stalling it.
fn son1k_with(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_son1k"));
    command.args(args);
    for var in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_ENDPOINT",
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("son1k {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn generate_args<'a>(model: &'a str, out: &'a Path) -> Vec<&'a str> {
    let out = out.to_str().unwrap();
    vec![
        "generate",
        "--model",
        model,
        "--duration",
        "0.5",
        "--seed",
        "4",
        "--out",
        out,
        "jazz",
    ]
}

#[test]
fn a_checkpoint_the_cache_lacks_is_downloaded_from_the_hub_into_it_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    tiny_model(&source, false);
    let files: HashMap<String, Vec<u8>> = std::fs::read_dir(&source)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect();
    assert!(
        files.contains_key("model.safetensors"),
        "{:?}",
        files.keys()
    );
    let hub = LocalHub::serve("acme/musicgen-tiny", files.clone());
    let cache = dir.path().join("cache");
    let cache_text = cache.to_str().unwrap().to_string();
    let online = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_HUB_CACHE", cache_text.as_str()),
    ];

    // The first run downloads, then generates what the same checkpoint makes from disk.
    let downloaded = dir.path().join("downloaded.wav");
    let output = son1k_with(&online, &generate_args("acme/musicgen-tiny", &downloaded));
    assert!(output.status.success(), "{}", stderr(&output));
    let local = dir.path().join("local.wav");
    let output = son1k_with(&[], &generate_args(source.to_str().unwrap(), &local));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(read_wav(&downloaded).1, read_wav(&local).1);

    // It landed in the layout huggingface_hub writes: the branch names the commit, the
    // snapshot links each file to its blob.
    let repo = cache.join("models--acme--musicgen-tiny");
    let main = std::fs::read_to_string(repo.join("refs").join("main")).unwrap();
    assert_eq!(main.trim(), COMMIT);
    for (name, bytes) in &files {
        let link = repo.join("snapshots").join(COMMIT).join(name);
        assert!(link.is_symlink(), "{} is not a link", link.display());
        assert_eq!(&std::fs::read(&link).unwrap(), bytes, "{name}");
        let blob = repo
            .join("blobs")
            .join(format!("{:x}", Sha256::digest(bytes)));
        assert!(blob.is_file(), "no blob for {name}");
    }
    let asked = hub.asked();
    assert!(
        asked.iter().any(|p| p.ends_with("/config.json")),
        "{asked:?}"
    );

    // Found again: no request with the network allowed, and none needed offline.
    let again = dir.path().join("again.wav");
    let output = son1k_with(&online, &generate_args("acme/musicgen-tiny", &again));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        hub.asked().len(),
        asked.len(),
        "a cached file was fetched again"
    );
    let offline = [
        ("HF_HUB_CACHE", cache_text.as_str()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let output = son1k_with(&offline, &generate_args("acme/musicgen-tiny", &again));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(read_wav(&again).1, read_wav(&local).1);
    let listed = son1k_with(&offline, &["models"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("acme/musicgen-tiny"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
}

#[test]
fn offline_or_unreachable_with_nothing_cached_is_a_clear_error_naming_what_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache_text = cache.to_str().unwrap();
    let out = dir.path().join("x.wav");

    let offline = son1k_with(
        &[("HF_HUB_CACHE", cache_text), ("HF_HUB_OFFLINE", "1")],
        &generate_args("acme/musicgen-absent", &out),
    );
    let err = stderr(&offline);
    assert!(
        !offline.status.success() && !err.contains("panicked"),
        "{err}"
    );
    for needle in ["acme/musicgen-absent", cache_text, "HF_HUB_OFFLINE"] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }

    // A port nothing listens on: the download fails at once, naming the file and the Hub.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = son1k_with(
        &[("HF_HUB_CACHE", cache_text), ("HF_ENDPOINT", &endpoint)],
        &generate_args("acme/musicgen-absent", &out),
    );
    let err = stderr(&unreachable);
    assert!(
        !unreachable.status.success() && !err.contains("panicked"),
        "{err}"
    );
    for needle in [
        "cannot download config.json",
        "acme/musicgen-absent",
        &endpoint,
        cache_text,
    ] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }

    // A repository the Hub has, but not a checkpoint.
    let hub = LocalHub::serve(
        "acme/notes",
        HashMap::from([("README.md".into(), b"hi".to_vec())]),
    );
    let not_a_model = son1k_with(
        &[("HF_HUB_CACHE", cache_text), ("HF_ENDPOINT", &hub.url)],
        &generate_args("acme/notes", &out),
    );
    let err = stderr(&not_a_model);
    assert!(!not_a_model.status.success(), "{err}");
    assert!(err.contains("has no config.json"), "{err}");
    assert!(!out.exists());
}
