//! The studio in a real browser: `server/web/test/studio.mjs` drives headless Chromium
//! (Debian's `chromium`, through `playwright-core`) against `son1k serve` processes of this
//! build, whose page is the bundle embedded in the binary. It generates and checks the audio
//! element's length, reloads mid-job, makes a cover, shows a wrong token's error, lists the
//! history, checks phone width and Spanish, and saves screenshots of both pages (into
//! `target/studio-screenshots/`, or `SON1K_SCREENSHOTS`).
//!
//! It needs Node, `npm ci` in `server/web` and Chromium, which `.ci/run` installs. Where they
//! are missing the test says so and passes, unless `SON1K_REQUIRE_BROWSER=1` (set by
//! `.ci/run`) makes their absence a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The browser the test drives.
fn chromium() -> PathBuf {
    std::env::var_os("SON1K_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// What is missing to run the browser test, if anything.
fn missing(web: &Path) -> Option<String> {
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed".into());
    }
    if !web.join("node_modules/playwright-core").is_dir() {
        return Some(format!(
            "playwright-core is not installed: run `npm ci` in {}",
            web.display()
        ));
    }
    if !chromium().is_file() {
        return Some(format!(
            "{} is not installed (apt install chromium)",
            chromium().display()
        ));
    }
    None
}

#[test]
fn the_studio_works_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let web = root.join("server/web");
    if let Some(what) = missing(&web) {
        let required = std::env::var("SON1K_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        assert!(!required, "the browser test cannot run: {what}");
        eprintln!("SKIPPED the studio's browser test: {what}");
        return;
    }
    let screenshots = std::env::var_os("SON1K_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/studio-screenshots"));
    let mut child = Command::new("node")
        .arg("test/studio.mjs")
        .current_dir(&web)
        .env("SON1K_BIN", env!("CARGO_BIN_EXE_son1k"))
        .env("SON1K_SCREENSHOTS", &screenshots)
        .env("SON1K_CHROMIUM", chromium())
        .env_remove("SON1K_TEST_WEB_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    // The script takes about 35 s on 2 cores; a hang fails here rather than stalling CI.
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().expect("waiting for node").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().expect("node's output");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{log}");
    assert!(output.status.success(), "the browser test failed:\n{log}");
    for shot in [
        "generator-desktop.png",
        "generator-phone.png",
        "studio-desktop.png",
        "studio-phone.png",
    ] {
        let png = std::fs::read(screenshots.join(shot)).expect("the screenshot was saved");
        assert!(png.starts_with(b"\x89PNG"), "{shot} is not a PNG");
    }
}
