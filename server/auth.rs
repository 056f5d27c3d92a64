//! Bearer tokens: a tokens file maps each token to a tenant, and an interceptor turns the
//! `authorization: Bearer <token>` metadata of every call into that tenant. Without a tokens
//! file every caller is the one local tenant (the server then listens on loopback only).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tonic::{Request, Status};

/// The tenant of a call, put in the request's extensions by the interceptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant(pub String);

/// The tenant every call belongs to when the server runs without tokens.
pub const LOCAL_TENANT: &str = "local";

/// Shortest token accepted in a tokens file, so a token cannot be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Who may call: a token -> tenant map, or nobody checked (open, loopback only).
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    tenants: Option<Arc<HashMap<String, String>>>,
}

impl Tokens {
    /// No authentication: every call is [`LOCAL_TENANT`].
    pub fn open() -> Self {
        Self::default()
    }

    /// Reads a tokens file: one `TENANT TOKEN` pair per line; blank lines and lines
    /// starting with `#` are ignored. Errors name the file and the line.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the tokens file {}", path.display()))?;
        let mut tenants = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("{}:{}", path.display(), n + 1);
            let mut words = line.split_whitespace();
            let (Some(tenant), Some(token), None) = (words.next(), words.next(), words.next())
            else {
                bail!("{}: expected `TENANT TOKEN`", at());
            };
            if token.chars().count() < MIN_TOKEN_CHARS {
                bail!(
                    "{}: the token of tenant `{tenant}` is shorter than {MIN_TOKEN_CHARS} characters",
                    at()
                );
            }
            if tenants
                .insert(token.to_string(), tenant.to_string())
                .is_some()
            {
                bail!("{}: this token is listed twice", at());
            }
        }
        if tenants.is_empty() {
            bail!("the tokens file {} lists no tokens", path.display());
        }
        Ok(Self {
            tenants: Some(Arc::new(tenants)),
        })
    }

    /// Whether calls are checked.
    pub fn required(&self) -> bool {
        self.tenants.is_some()
    }

    /// The tenant of a call's metadata.
    pub fn tenant_of(&self, authorization: Option<&str>) -> Result<Tenant, Status> {
        let Some(tenants) = &self.tenants else {
            return Ok(Tenant(LOCAL_TENANT.to_string()));
        };
        let Some(value) = authorization else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            ));
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization metadata must be `Bearer <token>`")
            })?;
        tenants
            .get(token.trim())
            .map(|tenant| Tenant(tenant.clone()))
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }

    /// The interceptor that authenticates every call of a service.
    pub fn interceptor(&self) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        let tokens = self.clone();
        move |mut request: Request<()>| {
            let authorization = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            let tenant = tokens.tenant_of(authorization)?;
            request.extensions_mut().insert(tenant);
            Ok(request)
        }
    }
}

/// The tenant the interceptor attached to a request.
pub fn tenant<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<Tenant>()
        .map(|t| t.0.clone())
        .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# comment\nalice 0123456789abcdef\nbob short\n").unwrap();
        let error = Tokens::load(&path).unwrap_err().to_string();
        assert!(error.contains("tokens:3"), "{error}");
        assert!(error.contains("16 characters"), "{error}");
    }

    #[test]
    fn a_token_maps_to_its_tenant_and_nothing_else_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "alice 0123456789abcdef\n").unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(
            tokens.tenant_of(Some("Bearer 0123456789abcdef")).unwrap(),
            Tenant("alice".into())
        );
        for bad in [None, Some("0123456789abcdef"), Some("Bearer nope")] {
            let status = tokens.tenant_of(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
        }
        assert_eq!(Tokens::open().tenant_of(None).unwrap().0, LOCAL_TENANT);
    }
}
