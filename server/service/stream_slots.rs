//! How many streams (job events, audio) each tenant has open, so that one token cannot hold the server's
//! memory in thousands of idle streams: a stream takes a slot when it opens and gives it
//! back when its forwarding task ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use son1k_engine::EngineError;

/// Open event streams per tenant, under a limit.
#[derive(Clone, Debug)]
pub(super) struct StreamSlots {
    open: Arc<Mutex<HashMap<String, usize>>>,
    limit: usize,
}

/// One open stream of one tenant; the slot is free again when this is dropped.
#[derive(Debug)]
pub(super) struct StreamSlot {
    slots: StreamSlots,
    tenant: String,
}

impl StreamSlots {
    /// At most `limit` open streams per tenant.
    pub(super) fn new(limit: usize) -> Self {
        Self {
            open: Arc::default(),
            limit,
        }
    }

    /// Takes a slot for `tenant`, or says which limit is reached.
    pub(super) fn take(&self, tenant: &str) -> Result<StreamSlot, EngineError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(tenant.to_string()).or_default();
        if *count >= self.limit {
            return Err(EngineError::ResourceExhausted {
                message: format!(
                    "this token has {count} event streams open, the limit \
                     (max_streams_per_tenant); close one or poll with GetGeneration"
                ),
                retry_after: std::time::Duration::from_secs(1),
            });
        }
        *count += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_its_limit_and_a_closed_stream_frees_a_slot() {
        let slots = StreamSlots::new(2);
        let a = slots.take("alice").unwrap();
        let _b = slots.take("alice").unwrap();
        let error = slots.take("alice").unwrap_err().to_string();
        assert!(error.contains("max_streams_per_tenant"), "{error}");
        // Another tenant is not affected.
        let _c = slots.take("bob").unwrap();
        drop(a);
        assert!(slots.take("alice").is_ok());
        assert_eq!(slots.open.lock().unwrap().get("alice"), Some(&1));
    }
}
