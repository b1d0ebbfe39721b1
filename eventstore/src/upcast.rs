//! Upcasting: old event payloads are lifted to the current shape when they are read.
//!
//! The log is never rewritten. Each upcaster lifts one `(event_type, event_version)` to
//! `event_version + 1`; reading applies them in a chain until no upcaster matches, so a v1 event
//! read by code that knows v3 goes through v1→v2 and v2→v3.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::error::EventStoreError;
use crate::model::RecordedEvent;

type LiftFn = dyn Fn(Value) -> Result<Value, String> + Send + Sync;

/// Upcasters keyed by the `(event_type, event_version)` they lift from.
#[derive(Clone, Default)]
pub struct UpcasterRegistry {
    lifts: HashMap<(String, i32), Arc<LiftFn>>,
}

impl std::fmt::Debug for UpcasterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<_> = self.lifts.keys().collect();
        keys.sort();
        f.debug_struct("UpcasterRegistry")
            .field("lifts", &keys)
            .finish()
    }
}

impl UpcasterRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register the lift of `event_type` from `from_version` to `from_version + 1`.
    pub fn register(
        &mut self,
        event_type: impl Into<String>,
        from_version: i32,
        lift: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> &mut Self {
        self.lifts
            .insert((event_type.into(), from_version), Arc::new(lift));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.lifts.is_empty()
    }

    /// Lift an event's payload to the newest version this registry knows.
    pub fn upcast(&self, mut event: RecordedEvent) -> Result<RecordedEvent, EventStoreError> {
        if self.lifts.is_empty() {
            return Ok(event);
        }
        // Each step raises the version by one, so the loop ends.
        while let Some(lift) = self
            .lifts
            .get(&(event.event_type.clone(), event.event_version))
        {
            let payload = std::mem::take(&mut event.payload);
            event.payload = lift(payload).map_err(|reason| EventStoreError::Upcast {
                event_id: event.event_id,
                event_type: event.event_type.clone(),
                event_version: event.event_version,
                reason,
            })?;
            event.event_version += 1;
        }
        Ok(event)
    }
}
