//! What the registry keeps per tenant: an index of its jobs, newest first (so a listing
//! costs its page, not the tenant's history), the bytes of audio it stores, and its
//! submission allowance (a token bucket). The quotas they enforce are configuration values.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::error::EngineError;

/// A position in a tenant's listing: jobs come newest first, by creation time then id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListCursor {
    created_unix_ms: i64,
    id: String,
}

impl ListCursor {
    /// The cursor just past a job.
    pub(crate) fn after(created_unix_ms: i64, id: &str) -> Self {
        Self {
            created_unix_ms,
            id: id.to_string(),
        }
    }

    /// Reads a page token the engine gave (`<created ms>.<id>`).
    pub fn parse(token: &str) -> Result<Self, EngineError> {
        let invalid = || {
            EngineError::invalid(
                "page_token",
                "is not a token this server gave (pass the next_page_token of a listing)",
            )
        };
        let (created, id) = token.split_once('.').ok_or_else(invalid)?;
        let created_unix_ms = created.parse().map_err(|_| invalid())?;
        if !super::job::is_job_id(id) {
            return Err(invalid());
        }
        Ok(Self {
            created_unix_ms,
            id: id.to_string(),
        })
    }

    /// The page token that names this cursor.
    pub fn token(&self) -> String {
        format!("{}.{}", self.created_unix_ms, self.id)
    }
}

/// One tenant's books.
#[derive(Debug)]
struct Books {
    /// Its jobs by (creation time, id); the listing walks it backwards.
    jobs: BTreeSet<ListCursor>,
    /// Bytes of finished audio it stores.
    stored_bytes: u64,
    /// Submissions it may make now (refilled continuously up to the per-minute limit).
    allowance: f64,
    refilled: Instant,
}

/// Every tenant's books and the quotas they are held to.
#[derive(Debug)]
pub(crate) struct Tenants {
    books: HashMap<String, Books>,
    max_jobs: usize,
    max_bytes: u64,
    per_minute: u32,
}

impl Tenants {
    /// Tenants that may each store `max_jobs` jobs and `max_bytes` of audio, and submit
    /// `per_minute` jobs a minute (in bursts of as many).
    pub(super) fn new(max_jobs: usize, max_bytes: u64, per_minute: u32) -> Self {
        Self {
            books: HashMap::new(),
            max_jobs,
            max_bytes,
            per_minute: per_minute.max(1),
        }
    }

    fn books(&mut self, tenant: &str) -> &mut Books {
        let per_minute = f64::from(self.per_minute);
        self.books
            .entry(tenant.to_string())
            .or_insert_with(|| Books {
                jobs: BTreeSet::new(),
                stored_bytes: 0,
                allowance: per_minute,
                refilled: Instant::now(),
            })
    }

    /// Records a job of `tenant`.
    pub(super) fn add_job(&mut self, tenant: &str, created_unix_ms: i64, id: &str) {
        self.books(tenant)
            .jobs
            .insert(ListCursor::after(created_unix_ms, id));
    }

    /// Records `bytes` of audio that `tenant` now stores.
    pub(super) fn add_bytes(&mut self, tenant: &str, bytes: u64) {
        let books = self.books(tenant);
        books.stored_bytes = books.stored_bytes.saturating_add(bytes);
    }

    /// Forgets an expired job and its audio.
    pub(super) fn remove_job(&mut self, tenant: &str, created_unix_ms: i64, id: &str, bytes: u64) {
        let Some(books) = self.books.get_mut(tenant) else {
            return;
        };
        books.jobs.remove(&ListCursor::after(created_unix_ms, id));
        books.stored_bytes = books.stored_bytes.saturating_sub(bytes);
        if books.jobs.is_empty() && books.allowance >= f64::from(self.per_minute) {
            self.books.remove(tenant);
        }
    }

    /// Up to `size` of the tenant's job ids, newest first, after `cursor`; and the cursor
    /// of the next page when there is one.
    pub(super) fn page(
        &self,
        tenant: &str,
        cursor: Option<&ListCursor>,
        size: usize,
    ) -> (Vec<String>, Option<ListCursor>) {
        let Some(books) = self.books.get(tenant) else {
            return (Vec::new(), None);
        };
        let older = match cursor {
            Some(cursor) => books.jobs.range(..cursor),
            None => books.jobs.range(..),
        };
        let mut page = older.rev().take(size.saturating_add(1));
        let ids: Vec<&ListCursor> = page.by_ref().take(size).collect();
        let more = page.next().is_some();
        let next = more.then(|| ids.last().map(|&last| last.clone())).flatten();
        (ids.into_iter().map(|c| c.id.clone()).collect(), next)
    }

    /// Whether `tenant` may submit one more job: under its stored quotas (counting its
    /// `reserved` admission slots as jobs) and its rate. Takes one submission from its
    /// allowance when it may. `oldest_expiry` is when its oldest finished job expires, for
    /// the retry hint of a full store.
    pub(super) fn admit(
        &mut self,
        tenant: &str,
        reserved: usize,
        oldest_expiry: impl Fn(&str) -> Option<Duration>,
    ) -> Result<(), EngineError> {
        let (max_jobs, max_bytes, per_minute) = (self.max_jobs, self.max_bytes, self.per_minute);
        let books = self.books(tenant);
        let stored = books.jobs.len() + reserved;
        let full = if stored >= max_jobs {
            Some(format!(
                "this token stores {stored} generations, the limit (max_stored_jobs_per_tenant)"
            ))
        } else if books.stored_bytes >= max_bytes {
            Some(format!(
                "this token stores {} MiB of audio, the limit is {} MiB \
                 (max_stored_bytes_per_tenant)",
                books.stored_bytes >> 20,
                max_bytes >> 20
            ))
        } else {
            None
        };
        if let Some(message) = full {
            return Err(EngineError::ResourceExhausted {
                message,
                retry_after: oldest_expiry(tenant).unwrap_or(Duration::from_secs(60)),
            });
        }
        let now = Instant::now();
        let rate = f64::from(per_minute) / 60.0;
        let elapsed = now.duration_since(books.refilled).as_secs_f64();
        books.allowance = (books.allowance + elapsed * rate).min(f64::from(per_minute));
        books.refilled = now;
        if books.allowance < 1.0 {
            let wait = (1.0 - books.allowance) / rate;
            return Err(EngineError::ResourceExhausted {
                message: format!(
                    "this token submitted more than {per_minute} generations a minute \
                     (max_submits_per_minute)"
                ),
                retry_after: Duration::from_secs_f64(wait.max(1.0)),
            });
        }
        books.allowance -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> String {
        format!("{n:032x}")
    }

    #[test]
    fn pages_walk_the_index_newest_first_each_job_once() {
        let mut tenants = Tenants::new(100, u64::MAX, 1000);
        for n in 0..23u32 {
            // Two jobs share each millisecond: the id breaks the tie.
            tenants.add_job("alice", i64::from(n / 2), &id(n));
        }
        tenants.add_job("bob", 5, &id(99));
        let mut seen = Vec::new();
        let mut cursor: Option<ListCursor> = None;
        loop {
            let (ids, next) = tenants.page("alice", cursor.as_ref(), 5);
            assert!(ids.len() <= 5);
            seen.extend(ids);
            match next {
                // A cursor survives its text form.
                Some(next) => cursor = Some(ListCursor::parse(&next.token()).unwrap()),
                None => break,
            }
        }
        let expected: Vec<String> = (0..23u32).rev().map(id).collect();
        assert_eq!(seen, expected);
        assert!(ListCursor::parse("12.nope").is_err());
        assert!(ListCursor::parse(&id(1)).is_err());
        tenants.remove_job("alice", 11, &id(22), 0);
        assert_eq!(tenants.page("alice", None, 1).0, [id(21)]);
    }

    #[test]
    fn stored_jobs_bytes_and_the_submission_rate_are_limited_per_tenant() {
        let hint = |_: &str| Some(Duration::from_secs(7));
        let mut tenants = Tenants::new(2, 1000, 600);
        tenants.add_job("a", 1, &id(1));
        tenants.add_job("a", 2, &id(2));
        match tenants.admit("a", 0, hint) {
            Err(EngineError::ResourceExhausted {
                message,
                retry_after,
            }) => {
                assert!(message.contains("max_stored_jobs_per_tenant"), "{message}");
                assert_eq!(retry_after, Duration::from_secs(7));
            }
            other => panic!("{other:?}"),
        }
        tenants.remove_job("a", 1, &id(1), 0);
        tenants.add_bytes("a", 1000);
        let error = tenants.admit("a", 0, hint).unwrap_err().to_string();
        assert!(error.contains("max_stored_bytes_per_tenant"), "{error}");
        // Another tenant is not affected; a burst of a minute's worth, then refusals.
        let mut slow = Tenants::new(100, u64::MAX, 3);
        for _ in 0..3 {
            slow.admit("b", 0, hint).unwrap();
        }
        match slow.admit("b", 0, hint) {
            Err(EngineError::ResourceExhausted {
                message,
                retry_after,
            }) => {
                assert!(message.contains("max_submits_per_minute"), "{message}");
                assert!(retry_after >= Duration::from_secs(19), "{retry_after:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(tenants.admit("c", 0, hint).is_ok());
    }
}
