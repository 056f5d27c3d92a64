//! The page the server serves at `/`: write a prompt, watch progress, play the result;
//! upload a song, get a cover. It talks grpc-web to the same port.

use axum::http::header;
use axum::response::IntoResponse;

/// The page, one self-contained file.
const INDEX_HTML: &str = include_str!("web/index.html");

/// `GET /`.
pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
}
