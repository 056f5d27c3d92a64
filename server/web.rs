//! The studio the server serves at `/`: The Generator (a prompt in, live progress, music out)
//! and Ghost Studio (a song in, a cover out). It is a bundle built from `server/web/` (code
//! generated from `proto/` with a maintained grpc-web client) and committed, so building Son1k
//! needs no Node; the binary embeds its three files. It talks grpc-web to the same port and is
//! sent with a Content-Security-Policy that admits only its own script and style, talks only
//! to this origin, and may not be framed.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One file of the studio.
struct Asset {
    /// Its path on the server and its name in the bundle's directory (without the slash).
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// The bundle as built into this binary.
const ASSETS: [Asset; 3] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("web/dist/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("web/dist/app.js"),
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("web/dist/app.css"),
    },
];

/// The studio's Content-Security-Policy: its own script and style only (no inline code), calls
/// to this origin only, audio from this origin or the page's own blobs.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; media-src 'self' blob:; img-src 'self' data: blob:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Where the studio's files come from.
#[derive(Clone, Debug, Default)]
pub enum WebRoot {
    /// The bundle built into the binary.
    #[default]
    Embedded,
    /// A directory holding `index.html`, `app.js` and `app.css`, read on every request: for
    /// working on the page (`son1k serve --web-dir server/web/dist`). Only those three names
    /// are ever read from it.
    Directory(PathBuf),
}

/// The routes of the studio's files.
pub(crate) fn routes(root: WebRoot) -> Router {
    let root = Arc::new(root);
    let mut router = Router::new();
    for (index, asset) in ASSETS.iter().enumerate() {
        router = router.route(
            asset.path,
            get(move |State(root): State<Arc<WebRoot>>| serve(root, index)),
        );
    }
    router.with_state(root)
}

/// `GET` of the studio's `index`-th file.
async fn serve(root: Arc<WebRoot>, index: usize) -> Response {
    let asset = &ASSETS[index];
    let body: Vec<u8> = match root.as_ref() {
        WebRoot::Embedded => asset.bytes.to_vec(),
        WebRoot::Directory(dir) => {
            let name = match asset.path {
                "/" => "index.html",
                path => path.trim_start_matches('/'),
            };
            let path = dir.join(name);
            match tokio::fs::read(&path).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    let message = format!("--web-dir: cannot read {}: {error}", path.display());
                    return (StatusCode::NOT_FOUND, message).into_response();
                }
            }
        }
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_the_bundles_own_script_and_style() {
        let html = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        // No inline code: the policy admits none, so any would be dead.
        assert!(!html.contains("<script>"), "an inline script");
        assert!(!html.contains("<style"), "an inline style");
        assert!(!html.contains(" style="), "an inline style attribute");
        // Relative, so the studio also works behind a proxy that serves it under a prefix.
        assert!(
            html.contains("src=\"app.js\""),
            "the page does not load app.js"
        );
        assert!(
            html.contains("href=\"app.css\""),
            "the page does not load app.css"
        );
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
    }
}
