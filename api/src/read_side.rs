//! Saying, in an answer, that the read side is behind.
//!
//! A command that committed is never answered as a failure: when the read models it would be
//! read back from have not reached it in time (they lag, or one has stopped), the resolver
//! answers from the log instead (the aggregate's stream folded exactly as its projection folds
//! it) and notes which read models are behind. This extension gives each request its own note
//! and puts it in the response, as
//! `extensions.readSide = { "behind": ["history", ...] }`, so a client knows that a list read
//! right after may not show the change yet.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextPrepareRequest,
};
use async_graphql::{Context, Name, Request, Response, ServerResult, Value};

/// The extension: register it on the schema.
pub struct ReadSideNotes;

impl ExtensionFactory for ReadSideNotes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Notes::default())
    }
}

/// One request's read models found behind.
#[derive(Clone, Default)]
struct Notes(Arc<Mutex<BTreeSet<String>>>);

#[async_trait::async_trait]
impl Extension for Notes {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        next.run(ctx, request.data(self.clone())).await
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        let behind: Vec<Value> = match self.0.lock() {
            Ok(names) => names.iter().cloned().map(Value::String).collect(),
            Err(_) => Vec::new(),
        };
        if !behind.is_empty() {
            let note = [(Name::new("behind"), Value::List(behind))];
            response.extensions.insert(
                "readSide".to_owned(),
                Value::Object(note.into_iter().collect()),
            );
        }
        response
    }
}

/// Note in the answer to this request that `names` were behind when it was answered.
pub fn behind(ctx: &Context<'_>, names: &[String]) {
    if let Some(notes) = ctx.data_opt::<Notes>()
        && let Ok(mut set) = notes.0.lock()
    {
        set.extend(names.iter().cloned());
    }
}
