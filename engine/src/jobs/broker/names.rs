//! What the broker's streams, buckets, subjects and keys are called. A tenant and a client's
//! request id appear only as digests, so any string is a legal, fixed-length key and no
//! subject carries a caller's text.

use sha2::{Digest, Sha256};

/// The work queue: one message per job waiting for (or held by) a node.
pub const WORK_STREAM: &str = "SON1K_WORK";
/// Its subjects: `son1k.work.<tenant digest>`.
pub const WORK_SUBJECTS: &str = "son1k.work.*";
/// A minute of submissions, one subject per tenant (its rate limit).
pub const SUBMITS_STREAM: &str = "SON1K_SUBMITS";
/// Its subjects: `son1k.submits.<tenant digest>`.
pub const SUBMITS_SUBJECTS: &str = "son1k.submits.*";
/// The durable pull consumer every node takes work from.
pub const WORKERS: &str = "workers";
/// Every job's event log, one subject per job.
pub const EVENTS_STREAM: &str = "SON1K_EVENTS";
/// Its subjects: `son1k.ev.<job id>`.
pub const EVENTS_SUBJECTS: &str = "son1k.ev.*";
/// Job records, keyed `<tenant digest>.<job id>`.
pub const JOBS_BUCKET: &str = "son1k_jobs";
/// Idempotency keys, keyed `<tenant digest>.<request id digest>`.
pub const REQUESTS_BUCKET: &str = "son1k_requests";
/// Each tenant's stored audio (its completed jobs' sizes), keyed `<tenant digest>`.
pub const USAGE_BUCKET: &str = "son1k_usage";
/// Finished audio files, named by job id.
pub const AUDIO_STORE: &str = "son1k_audio";
/// Covers' songs, decoded, named by job id, until the job ends.
pub const INPUTS_STORE: &str = "son1k_inputs";

/// 32 hex digits of the SHA-256 of `text`.
fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The subject a tenant's work messages go to; the stream's per-subject limit is the
/// tenant's limit of unfinished jobs.
pub fn work_subject(tenant: &str) -> String {
    format!("son1k.work.{}", digest(tenant))
}

/// The subject a tenant's submissions are counted on; the stream's per-subject limit is
/// the tenant's submissions a minute.
pub fn submits_subject(tenant: &str) -> String {
    format!("son1k.submits.{}", digest(tenant))
}

/// The subject of a job's events (`job` is a checked 32-hex-digit id).
pub fn events_subject(job: &str) -> String {
    format!("son1k.ev.{job}")
}

/// The key of a job's record; the tenant's prefix lists its jobs.
pub fn record_key(tenant: &str, job: &str) -> String {
    format!("{}.{job}", digest(tenant))
}

/// The prefix of every record key of `tenant`.
pub fn tenant_prefix(tenant: &str) -> String {
    digest(tenant)
}

/// The key of a tenant's idempotency key.
pub fn request_key(tenant: &str, request_id: &str) -> String {
    format!("{}.{}", digest(tenant), digest(request_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_strings_become_fixed_digests_and_tenants_never_share_keys() {
        let odd = "tenant with spaces.and.dots*>";
        let subject = work_subject(odd);
        assert_eq!(subject.len(), "son1k.work.".len() + 32);
        assert!(subject["son1k.work.".len()..]
            .chars()
            .all(|c| c.is_ascii_hexdigit()));
        assert_ne!(work_subject("a"), work_subject("b"));
        assert_ne!(request_key("a", "r"), request_key("b", "r"));
        assert_eq!(record_key("a", "j").split('.').count(), 2);
        assert!(record_key("a", "j").starts_with(&tenant_prefix("a")));
    }
}
