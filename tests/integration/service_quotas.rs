//! Per-tenant quotas over real sockets: stored jobs, stored bytes and the submission rate
//! are each refused with RESOURCE_EXHAUSTED naming the limit and a retry hint, for the
//! tenant over it only; listings page through a tenant's own jobs by cursor.

use crate::common::server::{authed, collect, completed, generate, Server};
use son1k::proto::v1 as pb;
use tonic::Code;

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-9876543210xyz";

/// A server with Alice's and Bob's tokens and `extra` flags.
async fn start(dir: &tempfile::TempDir, extra: &[&str]) -> Server {
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("alice {ALICE}\nbob {BOB}\n")).unwrap();
    let mut flags = vec!["--tokens-file", tokens.to_str().unwrap()];
    flags.extend(extra);
    Server::start(&dir.path().join("data"), &flags).await
}

/// Runs a 1 s job for `token` to its end; its id.
async fn run_job(client: &mut crate::common::server::Client, token: &str, seed: u64) -> String {
    let events = collect(
        client
            .generate(authed(generate("tango", 1.0, seed), Some(token)))
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    completed(&events);
    events[0].generation_id.clone()
}

/// Asserts a refused submission names `limit` and carries a retry hint.
async fn assert_refused(client: &mut crate::common::server::Client, token: &str, limit: &str) {
    let status = client
        .generate(authed(generate("one too many", 1.0, 99), Some(token)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(limit), "{}", status.message());
    assert!(crate::common::server::retry_after_secs(&status) >= 1);
}

#[tokio::test]
async fn stored_jobs_and_bytes_are_limited_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &["--max-stored-jobs-per-tenant", "2"]).await;
    let mut client = server.client().await;
    run_job(&mut client, ALICE, 1).await;
    run_job(&mut client, ALICE, 2).await;
    assert_refused(&mut client, ALICE, "max_stored_jobs_per_tenant").await;
    run_job(&mut client, BOB, 3).await;
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &["--max-stored-bytes-per-tenant", "1000"]).await;
    let mut client = server.client().await;
    run_job(&mut client, ALICE, 1).await;
    assert_refused(&mut client, ALICE, "max_stored_bytes_per_tenant").await;
    run_job(&mut client, BOB, 2).await;
}

#[tokio::test]
async fn submissions_are_rate_limited_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &["--max-submits-per-minute", "3"]).await;
    let mut client = server.client().await;
    for seed in 0..3 {
        run_job(&mut client, ALICE, seed).await;
    }
    assert_refused(&mut client, ALICE, "max_submits_per_minute").await;
    run_job(&mut client, BOB, 9).await;
}

#[tokio::test]
async fn listings_page_by_cursor_through_the_tenants_own_jobs_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[]).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for seed in 0..12 {
        ids.push(run_job(&mut client, ALICE, seed).await);
    }
    run_job(&mut client, BOB, 100).await;
    let list = |page_token: String| {
        authed(
            pb::ListGenerationsRequest {
                page_size: 5,
                page_token,
            },
            Some(ALICE),
        )
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_generations(list(token))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.generations.len() <= 5);
        seen.extend(page.generations.into_iter().map(|g| g.generation_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once, Alice's only");
    let status = client
        .list_generations(list("not-a-token".into()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("page_token"));
}
