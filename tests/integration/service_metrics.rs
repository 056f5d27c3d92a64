//! The operators' view over real sockets: `/metrics` parsed by a Prometheus text-format
//! parser with counts that match the jobs and calls a test made, a scrape that needs a
//! token where calls do, and JSON logs whose job lines carry the job's span.

use crate::common::metrics::{samples, scrape, value};
use crate::common::server::{
    authed, collect, completed, generate, is_stage, name, read_until, Server,
};
use son1k::proto::v1 as pb;

const SYNTH: &str = "model=\"son1k-synth\"";

#[tokio::test]
async fn metrics_count_the_jobs_and_calls_the_node_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--max-duration", "600", "--max-running", "1"],
    )
    .await;
    let mut client = server.client().await;

    // Two jobs to the end, one refused, one cancelled while it runs.
    let mut heard = 0;
    let mut audio_bytes = 0;
    for seed in [1, 2] {
        let stream = client
            .generate(generate("bright pop", 1.0, seed))
            .await
            .unwrap()
            .into_inner();
        let events = collect(stream).await.unwrap();
        audio_bytes += completed(&events).audio_bytes;
        heard += 1;
    }
    let refused = client
        .generate(generate("far too long", 4000.0, 3))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let mut long = client
        .generate(generate("a very long piece", 600.0, 4))
        .await
        .unwrap()
        .into_inner();
    let seen = read_until(&mut long, |e| is_stage(e, pb::Stage::Generating)).await;
    let id = seen[0].generation_id.clone();
    client
        .cancel_generation(pb::CancelGenerationRequest { generation_id: id })
        .await
        .unwrap();
    let rest = collect(long).await.unwrap();
    assert_eq!(rest.last().map(name), Some("cancelled"));
    if seen.iter().chain(&rest).any(|e| name(e) == "chunk") {
        heard += 1;
    }
    client.list_models(pb::ListModelsRequest {}).await.unwrap();

    let (head, text) = scrape(&server.addr, None).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let s = samples(&text);
    let generate_ok =
        "son1k_rpcs_total{code=\"OK\",method=\"son1k.v1.GenerationService/Generate\"}";
    let expected = [
        (format!("son1k_jobs_submitted_total{{{SYNTH}}}"), 3.0),
        (format!("son1k_jobs_ended_total{{{SYNTH},state=\"completed\"}}"), 2.0),
        (format!("son1k_jobs_ended_total{{{SYNTH},state=\"cancelled\"}}"), 1.0),
        (format!("son1k_jobs_ended_total{{{SYNTH},state=\"failed\"}}"), 0.0),
        ("son1k_jobs{state=\"completed\"}".into(), 2.0),
        ("son1k_jobs{state=\"cancelled\"}".into(), 1.0),
        ("son1k_jobs{state=\"running\"}".into(), 0.0),
        ("son1k_jobs{state=\"queued\"}".into(), 0.0),
        ("son1k_queue_depth{}".into(), 0.0),
        ("son1k_slots{lane=\"pool\"}".into(), 1.0),
        ("son1k_running_slots{lane=\"pool\"}".into(), 0.0),
        ("son1k_store_writable{}".into(), 1.0),
        (format!("son1k_real_time_factor_count{{{SYNTH}}}"), 2.0),
        (format!("son1k_first_audio_seconds_count{{{SYNTH}}}"), heard as f64),
        (generate_ok.into(), 3.0),
        (
            "son1k_rpcs_total{code=\"INVALID_ARGUMENT\",method=\"son1k.v1.GenerationService/Generate\"}"
                .into(),
            1.0,
        ),
        (
            "son1k_rpcs_total{code=\"OK\",method=\"son1k.v1.GenerationService/CancelGeneration\"}"
                .into(),
            1.0,
        ),
        (
            "son1k_rpcs_total{code=\"OK\",method=\"son1k.v1.GenerationService/ListModels\"}".into(),
            1.0,
        ),
    ];
    for (key, want) in &expected {
        assert_eq!(value(&s, key), *want, "{key}");
    }
    assert!(value(&s, &format!("son1k_step_seconds_count{{{SYNTH}}}")) >= 3.0);
    // The Generate streams carried both files whole, and more.
    let streamed = value(
        &s,
        "son1k_streamed_bytes_total{method=\"son1k.v1.GenerationService/Generate\"}",
    );
    assert!(streamed > audio_bytes as f64, "{streamed} <= {audio_bytes}");
}

#[tokio::test]
async fn a_scrape_needs_a_token_where_calls_do() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "ops ops-token-0123456789abcdef\n").unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--tokens-file", tokens.to_str().unwrap()],
    )
    .await;
    let (head, body) = scrape(&server.addr, None).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(body.contains("authorization"), "{body}");
    let (head, _) = scrape(&server.addr, Some("not-a-token-of-this-server")).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    // A refused call is counted like any other.
    let mut client = server.client().await;
    let refused = client
        .list_models(authed(pb::ListModelsRequest {}, None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let (head, text) = scrape(&server.addr, Some("ops-token-0123456789abcdef")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let s = samples(&text);
    let key = "son1k_rpcs_total{code=\"UNAUTHENTICATED\",method=\"son1k.v1.GenerationService/ListModels\"}";
    assert_eq!(value(&s, key), 1.0);
}

#[tokio::test]
async fn json_logs_say_which_node_did_what_to_which_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_process(
        &dir.path().join("data"),
        &["--log-format", "json", "--node-id", "node-a"],
    )
    .await;
    let mut client = server.client().await;
    let stream = client
        .generate(generate("lofi beat", 1.0, 5))
        .await
        .unwrap()
        .into_inner();
    let events = collect(stream).await.unwrap();
    let id = events[0].generation_id.clone();
    completed(&events);

    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let of_job: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|line| line["span"]["job"] == id.as_str())
        .collect();
    let messages: Vec<&str> = of_job
        .iter()
        .filter_map(|line| line["fields"]["message"].as_str())
        .collect();
    assert_eq!(messages, ["admitted", "running", "ended"], "{log}");
    for line in of_job {
        let span = &line["span"];
        assert_eq!(span["node"], "node-a", "{line}");
        assert_eq!(span["tenant"], "local", "{line}");
        assert_eq!(span["model"], "son1k-synth", "{line}");
    }
    let ended = lines
        .iter()
        .find(|l| l["span"]["job"] == id.as_str() && l["fields"]["message"] == "ended");
    assert_eq!(ended.unwrap()["fields"]["state"], "completed");
}
