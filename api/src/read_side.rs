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

/// The read models each root query field is answered from (the log and the write side count
/// as none): while one of them has failed, the field answers `READ_MODEL_FAILED` instead of
/// a stale answer, and every other field works. One place for the whole schema; a test checks
/// it names every root query field.
pub const SERVED_BY: &[(&str, &[&str])] = {
    use crate::services::projections::{ANALYTICS, AVAILABILITY, HISTORY, SEARCH, TELEMETRY};
    &[
        ("me", &[]),
        ("branches", &[]),
        ("searchCars", &[SEARCH, AVAILABILITY]),
        ("car", &[SEARCH, AVAILABILITY]),
        ("availability", &[SEARCH, AVAILABILITY]),
        ("quote", &[SEARCH]),
        ("extrasOffered", &[]),
        ("cancellationQuote", &[HISTORY]),
        ("booking", &[HISTORY]),
        ("myBookings", &[HISTORY]),
        ("bookings", &[HISTORY]),
        ("payment", &[HISTORY]),
        ("events", &[]),
        ("stream", &[]),
        ("aggregateState", &[]),
        ("verifyStream", &[]),
        ("dailyMetrics", &[ANALYTICS]),
        ("carUtilization", &[ANALYTICS]),
        ("fleetSummary", &[ANALYTICS]),
        ("telemetry", &[TELEMETRY]),
        ("projections", &[]),
        ("stuckSteps", &[]),
    ]
};

/// Which read models have failed, read from `projection_status` at most once a second per
/// process (a request never waits on more than that one cheap query).
#[derive(Clone, Default)]
pub struct FailedReadModels(Arc<tokio::sync::Mutex<Option<Seen>>>);

/// When the failed read models were read, and which they were.
type Seen = (std::time::Instant, Vec<String>);

impl FailedReadModels {
    const FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(1);

    /// The failed read models among `names`.
    pub async fn among(
        &self,
        pool: &sqlx::PgPool,
        names: &[&str],
    ) -> Result<Vec<String>, sqlx::Error> {
        let mut cached = self.0.lock().await;
        let failed = match cached.as_ref() {
            Some((at, failed)) if at.elapsed() < Self::FRESH_FOR => failed,
            _ => {
                let failed = projections::status::failed(pool).await?;
                &cached.insert((std::time::Instant::now(), failed)).1
            }
        };
        Ok(failed
            .iter()
            .filter(|f| names.contains(&f.as_str()))
            .cloned()
            .collect())
    }
}

/// The extension that refuses a root query field while a read model it is answered from has
/// failed. Register it on the schema.
pub struct ReadModelGuard;

impl ExtensionFactory for ReadModelGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ReadModelGuard)
    }
}

#[async_trait::async_trait]
impl Extension for ReadModelGuard {
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: async_graphql::extensions::ResolveInfo<'_>,
        next: async_graphql::extensions::NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        if info.parent_type == "Query"
            && let Some((_, names)) = SERVED_BY.iter().find(|(f, _)| *f == info.name)
            && !names.is_empty()
            && let (Ok(services), Ok(failed)) = (
                ctx.data::<crate::services::Services>(),
                ctx.data::<FailedReadModels>(),
            )
        {
            let failed = failed
                .among(services.store.pool(), names)
                .await
                .map_err(|e| crate::policy::refused(crate::error::AppError::database(&e), &info))?;
            if !failed.is_empty() {
                return Err(crate::policy::refused(
                    crate::error::AppError::ReadModelFailed(failed),
                    &info,
                ));
            }
        }
        next.run(ctx, info).await
    }
}

#[cfg(test)]
mod tests {
    use super::SERVED_BY;

    #[test]
    fn every_root_query_field_says_what_it_is_answered_from() {
        let roots: Vec<String> = crate::schema::object_fields()
            .into_iter()
            .filter(|(t, _)| t == "Query")
            .map(|(_, f)| f)
            .collect();
        let mut listed: Vec<String> = SERVED_BY.iter().map(|(f, _)| (*f).to_owned()).collect();
        listed.sort();
        assert_eq!(listed, roots);
        for (field, names) in SERVED_BY {
            for name in *names {
                assert!(projections::names().contains(name), "{field}: {name}");
            }
        }
    }
}
