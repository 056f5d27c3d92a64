//! Slots for decoding uploads: a few at once overall (each takes a core), fewer per tenant,
//! so one tenant's flood of covers waits behind itself instead of stalling everyone's. The
//! wait is bounded: past it the upload is refused with a retry hint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::EngineError;

/// Decode slots overall and per tenant.
#[derive(Clone)]
pub(crate) struct DecodeSlots {
    overall: Arc<Semaphore>,
    overall_limit: usize,
    /// One semaphore per tenant that is decoding or waiting; removed when unused.
    tenants: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    tenant_limit: usize,
    wait: Duration,
}

/// A held decode slot, given back when dropped.
pub(crate) struct DecodeSlot {
    overall: Option<OwnedSemaphorePermit>,
    tenant_permit: Option<OwnedSemaphorePermit>,
    /// The tenant's semaphore, as the map holds it.
    semaphore: Arc<Semaphore>,
    slots: DecodeSlots,
    tenant: String,
}

impl DecodeSlots {
    /// `overall` decodes at once, `per_tenant` of them for one tenant, waiting at most
    /// `wait` for a slot.
    pub(super) fn new(overall: usize, per_tenant: usize, wait: Duration) -> Self {
        Self {
            overall: Arc::new(Semaphore::new(overall)),
            overall_limit: overall,
            tenants: Arc::default(),
            tenant_limit: per_tenant,
            wait,
        }
    }

    /// Waits for a slot for `tenant`, at most the configured wait.
    pub(super) async fn acquire(&self, tenant: &str) -> Result<DecodeSlot, EngineError> {
        let deadline = Instant::now() + self.wait;
        let semaphore = {
            let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
            let semaphore = tenants
                .entry(tenant.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.tenant_limit)));
            Arc::clone(semaphore)
        };
        // From here on the slot's drop cleans up the tenant's entry, whatever happens.
        let mut slot = DecodeSlot {
            overall: None,
            tenant_permit: None,
            semaphore,
            slots: self.clone(),
            tenant: tenant.to_string(),
        };
        let busy = |message: String| EngineError::ResourceExhausted {
            message,
            retry_after: self.wait,
        };
        let stopped = |_| EngineError::Unavailable("the engine has stopped".into());
        slot.tenant_permit = Some(
            tokio::time::timeout_at(deadline, Arc::clone(&slot.semaphore).acquire_owned())
                .await
                .map_err(|_| {
                    busy(format!(
                        "this token's earlier uploads took every one of its {} decode slots \
                         (max_decodes_per_tenant) for {} s",
                        self.tenant_limit,
                        self.wait.as_secs_f64()
                    ))
                })?
                .map_err(stopped)?,
        );
        slot.overall = Some(
            tokio::time::timeout_at(deadline, Arc::clone(&self.overall).acquire_owned())
                .await
                .map_err(|_| {
                    busy(format!(
                        "all {} decode slots were busy for {} s (decode_wait)",
                        self.overall_limit,
                        self.wait.as_secs_f64()
                    ))
                })?
                .map_err(stopped)?,
        );
        Ok(slot)
    }
}

impl Drop for DecodeSlot {
    fn drop(&mut self) {
        self.overall.take();
        self.tenant_permit.take();
        let mut tenants = self
            .slots
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only the map and this slot hold it: nobody else decodes or waits for this tenant.
        if tenants
            .get(&self.tenant)
            .is_some_and(|semaphore| Arc::strong_count(semaphore) == 2)
        {
            tenants.remove(&self.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tenant_waits_behind_its_own_uploads_not_others_and_the_wait_is_bounded() {
        let slots = DecodeSlots::new(2, 1, Duration::from_secs(30));
        let alice = slots.acquire("alice").await.unwrap();
        // Bob decodes while Alice's first upload holds her only slot.
        let bob = slots.acquire("bob").await.unwrap();
        let started = Instant::now();
        let error = slots.acquire("alice").await.err().unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert!(
            error.to_string().contains("max_decodes_per_tenant"),
            "{error}"
        );
        // Both overall slots are taken: Carol waits, bounded, then is told why.
        let error = slots.acquire("carol").await.err().unwrap();
        assert!(error.to_string().contains("decode_wait"), "{error}");
        drop(bob);
        let _carol = slots.acquire("carol").await.unwrap();
        drop(alice);
        let _alice = slots.acquire("alice").await.unwrap();
        // Tenants that hold nothing leave nothing behind.
        let tenants = slots.tenants.lock().unwrap();
        assert_eq!(tenants.len(), 2, "{:?}", tenants.keys().collect::<Vec<_>>());
    }
}
