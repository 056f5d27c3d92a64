//! The page the server serves at `/`: write a prompt, watch progress, play the result;
//! upload a song, get a cover. It talks grpc-web to the same port. It is sent with a
//! Content-Security-Policy that admits only its own inline scripts (by hash), talks only to
//! this origin, and may not be framed.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The page, one self-contained file.
const INDEX_HTML: &str = include_str!("web/index.html");

/// The page's Content-Security-Policy, with the hash of each of its inline scripts.
static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    let scripts: Vec<String> = inline_scripts(INDEX_HTML)
        .map(|script| {
            let hash = Sha256::digest(script.as_bytes());
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(hash)
            )
        })
        .collect();
    format!(
        "default-src 'none'; script-src {}; style-src 'unsafe-inline'; \
         connect-src 'self'; media-src 'self' blob:; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        scripts.join(" ")
    )
});

/// The text of each `<script>` element without attributes.
fn inline_scripts(html: &str) -> impl Iterator<Item = &str> {
    html.split("<script>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</script>").map(|(script, _)| script))
}

/// `GET /`.
pub(crate) async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                CONTENT_SECURITY_POLICY.as_str(),
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        INDEX_HTML,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_of_the_page_is_inline_and_hashed() {
        let scripts: Vec<&str> = inline_scripts(INDEX_HTML).collect();
        assert_eq!(scripts.len(), INDEX_HTML.matches("<script").count());
        assert_eq!(scripts.len(), 2);
        let policy = CONTENT_SECURITY_POLICY.as_str();
        assert_eq!(policy.matches("'sha256-").count(), 2, "{policy}");
        let script_src = policy
            .split(';')
            .find(|d| d.trim().starts_with("script-src"));
        assert!(!script_src.unwrap().contains("unsafe"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"));
    }
}
