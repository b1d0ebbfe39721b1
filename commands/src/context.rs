//! Who issues a command, and the ids that tie its events to a request and a trace.

use eventstore::EventMetadata;
use uuid::Uuid;

/// The context every command runs in; becomes the metadata of the events it emits.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandContext {
    /// The user id or system role (`system:expiry-worker`) issuing the command.
    pub actor: String,
    /// One id per user request, shared by every event the request causes.
    pub correlation_id: Uuid,
    /// The command (or event) that caused this command.
    pub causation_id: Option<Uuid>,
    /// The distributed trace id, when the caller has one.
    pub trace_id: Option<String>,
}

impl CommandContext {
    /// A new request by `actor`: fresh correlation id, the command id as causation.
    pub fn new(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            trace_id: None,
        }
    }

    pub fn caused_by(mut self, causation_id: Uuid) -> Self {
        self.causation_id = Some(causation_id);
        self
    }

    pub fn with_trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }

    /// The event metadata; the trace id falls back to the current tracing span's id.
    pub fn metadata(&self) -> EventMetadata {
        let trace_id = self.trace_id.clone().or_else(|| {
            tracing::Span::current()
                .id()
                .map(|id| format!("{:016x}", id.into_u64()))
        });
        EventMetadata {
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            actor: Some(self.actor.clone()),
            trace_id,
        }
    }
}
