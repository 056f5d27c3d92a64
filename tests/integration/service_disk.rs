//! The service on a disk that fills up or turns read-only, on a small tmpfs the test mounts
//! (root only, as CI runs): the server still starts and serves what it can read, a job
//! whose writes fail ends Failed with a path-free message while its log stays readable,
//! health says NOT_SERVING and new jobs are refused until the disk recovers, stray
//! temporary files go at start, and the free-space floor refuses new jobs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::server::{collect, completed, generate, is_stage, read_until, watch, Server};
use son1k::proto::v1 as pb;
use son1k::proto::v1::generation_event::Event;
use tonic::Code;

/// A tmpfs of a few MiB mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts one at `dir`, or says why not (not root, no mount): the caller skips.
    fn mount(dir: &Path, mib: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Remounts it read-only or read-write.
    fn remount(&self, read_only: bool) {
        let mode = if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        };
        let status = Command::new("mount")
            .args(["-o", mode])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount -o {mode} failed");
    }

    /// Fills it with one file until the file system has no room.
    fn fill(&self) -> PathBuf {
        let filler = self.dir.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .stderr(std::process::Stdio::null())
            .status();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A tmpfs for the test, or `None` (the test is skipped) where mounting needs a root this
/// developer does not have; in CI (`CI` set), not mounting is a failure.
fn mounted(dir: &Path, mib: u32) -> Option<Tmpfs> {
    let tmpfs = Tmpfs::mount(dir, mib);
    if tmpfs.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the disk tests: mounting a tmpfs failed (run as root)"
        );
        eprintln!("skipped: mounting a tmpfs needs root (CI runs these as root)");
    }
    tmpfs
}

#[tokio::test]
async fn a_read_only_data_dir_still_serves_what_it_has_and_recovers_when_writable() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = mounted(&dir.path().join("disk"), 32) else {
        return;
    };
    let data = disk.dir.join("data");
    let log = dir.path().join("server.log");
    let long = ["--max-duration", "600", "--min-free-bytes", "0"];
    let mut server = Server::start_logging(&data, &log, &long).await;
    let mut client = server.client().await;
    let done = collect(
        client
            .generate(generate("kept", 1.0, 1))
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    let done_id = done[0].generation_id.clone();
    completed(&done);
    let mut running = client
        .generate(generate("cut off", 600.0, 2))
        .await
        .unwrap()
        .into_inner();
    let seen = read_until(&mut running, |e| is_stage(e, pb::Stage::Generating)).await;
    let cut_id = seen[0].generation_id.clone();
    server.kill().await;
    // A crash left a temporary file behind.
    let stray = data.join("jobs").join(&done_id).join("record.json.tmp");
    std::fs::write(&stray, b"half a record").unwrap();
    disk.remount(true);

    // Before: "No space left on device" / "Read-only file system", exit 1.
    let server = Server::start_unhealthy(&data, &log, &long).await;
    let mut client = server.client().await;
    let polled = crate::common::server::poll(&mut client, &done_id).await;
    assert_eq!(polled.state, pb::GenerationState::Completed as i32);
    let audio = client
        .get_audio(pb::GetAudioRequest {
            generation_id: done_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(audio.data.starts_with(b"RIFF"));
    // The interrupted job's repair could not be written: it is served from memory.
    let events = watch(&mut client, &cut_id, seen.last().unwrap().sequence).await;
    let Some(Event::Failed(failed)) = events.last().and_then(|e| e.event.clone()) else {
        panic!(
            "expected Failed: {:?}",
            crate::common::server::names(&events)
        );
    };
    assert_eq!(failed.code, pb::ErrorCode::Interrupted as i32);
    let status = client
        .generate(generate("refused", 1.0, 3))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("read-only"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(dir.path().to_str().unwrap()));

    // Writable again: the health probe notices, and jobs run.
    disk.remount(false);
    server.wait_health(true).await;
    completed(
        &collect(
            client
                .generate(generate("back", 1.0, 4))
                .await
                .unwrap()
                .into_inner(),
        )
        .await
        .unwrap(),
    );
    drop(server);

    // A restart on a writable disk removes the stray temporary file.
    assert!(stray.exists());
    let _server = Server::start_logging(&data, &log, &long).await;
    assert!(!stray.exists(), "the stray temporary file is still there");
}

#[tokio::test]
async fn a_full_disk_fails_the_running_job_keeps_its_log_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = mounted(&dir.path().join("disk"), 16) else {
        return;
    };
    let data = disk.dir.join("data");
    let log = dir.path().join("server.log");

    // Under the free-space floor, nothing is admitted.
    let floor = ["--min-free-bytes", "1000000000"];
    let server = Server::start_logging(&data, &log, &floor).await;
    let mut client = server.client().await;
    let status = client
        .generate(generate("no room", 1.0, 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("min_free_bytes"),
        "{}",
        status.message()
    );
    drop(server);

    let long = ["--max-duration", "600", "--min-free-bytes", "0"];
    let server = Server::start_logging(&data, &log, &long).await;
    let mut client = server.client().await;
    let mut running = client
        .generate(generate("a long drone", 600.0, 2))
        .await
        .unwrap()
        .into_inner();
    let seen = read_until(&mut running, |e| is_stage(e, pb::Stage::Generating)).await;
    let id = seen[0].generation_id.clone();
    let filler = disk.fill();

    // The job's writes fail: it ends Failed, saying why without a path (before, its stream
    // and any Watch waited forever).
    let rest = tokio::time::timeout(std::time::Duration::from_secs(60), collect(running))
        .await
        .expect("the job ended")
        .unwrap();
    let Some(Event::Failed(failed)) = rest.last().and_then(|e| e.event.clone()) else {
        panic!("expected Failed: {:?}", crate::common::server::names(&rest));
    };
    assert!(
        failed.message.contains("disk is full"),
        "{}",
        failed.message
    );
    assert!(!failed.message.contains('/'), "{}", failed.message);
    // Its live log stays readable, to the end, from the start.
    let replay = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        watch(&mut client, &id, 0),
    )
    .await
    .expect("the replay ended");
    assert_eq!(replay.first().map(|e| e.sequence), Some(1));
    assert!(matches!(
        replay.last().and_then(|e| e.event.clone()),
        Some(Event::Failed(_))
    ));
    server.wait_health(false).await;
    let status = client
        .generate(generate("refused", 1.0, 3))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Room again: serving again.
    std::fs::remove_file(filler).unwrap();
    server.wait_health(true).await;
    completed(
        &collect(
            client
                .generate(generate("room again", 1.0, 4))
                .await
                .unwrap()
                .into_inner(),
        )
        .await
        .unwrap(),
    );
}
