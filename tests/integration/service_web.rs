//! Browsers' path over real sockets: the page, a CORS preflight, and a grpc-web stream
//! over HTTP/1.1 that carries the same events as gRPC.

use crate::common::server::{audio_file, collect, generate, http1, names, Server};
use prost::Message;
use son1k::proto::v1 as pb;

const TOKEN: &str = "studio-token-0123456789";

/// A grpc-web request for `method` with one message, from a page on another origin.
fn grpc_web_request(addr: &str, method: &str, message: &impl Message) -> Vec<u8> {
    let payload = message.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    body.extend_from_slice(&payload);
    let mut request = format!(
        "POST /son1k.v1.GenerationService/{method} HTTP/1.1\r\nHost: {addr}\r\n\
         Origin: http://studio.example\r\nContent-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\nAccept: application/grpc-web+proto\r\n\
         Authorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

/// Splits a grpc-web response body into messages and the trailer block.
fn frames(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let (mut messages, mut trailers) = (Vec::new(), String::new());
    while !body.is_empty() {
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let payload = &body[5..5 + len];
        if flag & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(payload));
        } else {
            messages.push(payload.to_vec());
        }
        body = &body[5 + len..];
    }
    (messages, trailers)
}

#[tokio::test]
async fn grpc_web_over_http1_streams_the_same_events_as_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("studio {TOKEN}\n")).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--tokens-file", tokens.to_str().unwrap()],
    )
    .await;

    // The page.
    let (head, body) = http1(
        &server.addr,
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr
        )
        .into_bytes(),
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("src=\"app.js\""));
    // Its script, embedded in the binary: the grpc-web client.
    let (head, body) = http1(
        &server.addr,
        format!(
            "GET /app.js HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr
        )
        .into_bytes(),
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(head.contains("script-src 'self'"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("application/grpc-web+proto"));

    // A CORS preflight from another origin, asking to send a bearer token.
    let (head, _) = http1(
        &server.addr,
        format!(
            "OPTIONS /son1k.v1.GenerationService/Generate HTTP/1.1\r\nHost: {}\r\n\
             Origin: http://studio.example\r\nAccess-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: authorization, content-type, x-grpc-web\r\n\
             Connection: close\r\n\r\n",
            server.addr
        )
        .into_bytes(),
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: http://studio.example"),
        "{head}"
    );
    let allowed = head
        .lines()
        .find(|l| l.starts_with("access-control-allow-headers:"))
        .unwrap_or_default();
    for header in ["authorization", "content-type", "x-grpc-web"] {
        assert!(allowed.contains(header), "{allowed}");
    }

    // The stream itself.
    let request = generate("samba with percussion", 3.0, 21);
    let (head, body) = http1(
        &server.addr,
        grpc_web_request(&server.addr, "Generate", &request),
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/grpc-web+proto"),
        "{head}"
    );
    let exposed = head
        .lines()
        .find(|l| l.starts_with("access-control-expose-headers:"))
        .unwrap_or_default();
    assert!(
        exposed.contains("grpc-status") && exposed.contains("grpc-message"),
        "{head}"
    );
    let (messages, trailers) = frames(&body);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let web: Vec<pb::GenerationEvent> = messages
        .iter()
        .map(|m| pb::GenerationEvent::decode(m.as_slice()).unwrap())
        .collect();

    let grpc = collect(
        server
            .client()
            .await
            .generate(crate::common::server::authed(request, Some(TOKEN)))
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    assert_eq!(names(&web), names(&grpc));
    assert_eq!(
        web.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        grpc.iter().map(|e| e.sequence).collect::<Vec<_>>()
    );
    // The same seed makes the same file.
    assert_eq!(audio_file(&web), audio_file(&grpc));

    // Errors reach browsers as grpc-status in the headers of a trailers-only response.
    let (head, _) = http1(
        &server.addr,
        grpc_web_request(&server.addr, "Generate", &generate("", 3.0, 1)),
    )
    .await;
    assert!(head.contains("grpc-status: 3"), "{head}");
    assert!(head.contains("prompt"), "{head}");
}

/// A CORS preflight from `origin`; whether the server allows it.
async fn preflight_allows(addr: &str, origin: &str) -> bool {
    let (head, _) = http1(
        addr,
        format!(
            "OPTIONS /son1k.v1.GenerationService/ListModels HTTP/1.1\r\nHost: {addr}\r\n\
             Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: content-type, x-grpc-web\r\n\
             Connection: close\r\n\r\n"
        )
        .into_bytes(),
    )
    .await;
    head.contains(&format!("access-control-allow-origin: {origin}"))
}

#[tokio::test]
async fn an_open_server_admits_only_pages_served_from_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]).await;
    for origin in [
        "http://localhost:3000",
        "http://127.0.0.1:8080",
        "http://[::1]:5173",
    ] {
        assert!(preflight_allows(&server.addr, origin).await, "{origin}");
    }
    for origin in [
        "http://studio.example",
        "http://localhost.evil.example",
        "null",
    ] {
        assert!(!preflight_allows(&server.addr, origin).await, "{origin}");
    }
}
