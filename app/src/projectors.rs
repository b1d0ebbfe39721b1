//! The projectors a process runs (`serve` in-process, `fleetledger project` on their own).

use std::time::Duration;

use anyhow::{Context, Result};
use eventstore::EventStore;
use projections::{Projector, RunOptions};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The runtime options from the configuration.
pub fn run_options(config: &Config) -> RunOptions {
    RunOptions {
        batch_size: config.projector_batch_size,
        poll_interval: Duration::from_millis(config.projector_poll_ms),
        max_backoff: Duration::from_millis(config.projector_max_backoff_ms),
        ..RunOptions::default()
    }
}

/// The projections called `only` (all when empty); an unknown name is an error.
pub fn select(only: &[String]) -> Result<Vec<std::sync::Arc<dyn projections::Projection>>> {
    if only.is_empty() {
        return Ok(projections::all());
    }
    only.iter()
        .map(|name| {
            projections::by_name(name).with_context(|| {
                format!(
                    "no projection called {name:?}; there are: {}",
                    projections::names().join(", ")
                )
            })
        })
        .collect()
}

/// Start the selected projectors and the metrics reporter; they stop when `token` is cancelled.
pub fn spawn(
    store: &EventStore,
    only: &[String],
    options: &RunOptions,
    token: &CancellationToken,
) -> Result<JoinSet<()>> {
    let mut tasks = JoinSet::new();
    let mut names = Vec::new();
    for projection in select(only)? {
        let name = projection.name();
        names.push(name.to_owned());
        let runner = Projector::postgres(store.clone(), projection, options.clone());
        let token = token.clone();
        tasks.spawn(async move {
            if let Err(e) = runner.run_until_cancelled(token).await {
                tracing::error!(projection = name, error = %e, "projector stopped");
            }
        });
    }
    tasks.spawn(projections::status::report_metrics(
        store.pool().clone(),
        names,
        Duration::from_secs(1),
        token.clone(),
    ));
    Ok(tasks)
}
