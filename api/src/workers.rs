//! GraphQL work runs on a runtime of its own.
//!
//! Parsing, validating and resolving a request is the API's only work whose cost a client
//! chooses. It runs on a dedicated multi-threaded tokio runtime (threads named `graphql`), so a
//! request that burns CPU, even between awaits, holds those threads and not the ones that answer
//! `/healthz` and `/readyz`, accept connections and take signals: the operating system shares
//! the cores between the two, and the health endpoints keep answering while GraphQL work queues.
//! A request past its wall-clock budget is aborted (at its next await) and its task dropped.
//!
//! Database and Redis connections opened on either runtime work from both (their I/O driver is
//! the runtime that opened them, which lives as long as the process).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};

/// How a piece of GraphQL work ended short of its answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Cut {
    /// Past its budget; aborted.
    Budget,
    /// It panicked (logged); nothing of it is answered.
    Panicked,
}

/// The GraphQL runtime. Cheap to clone.
#[derive(Clone)]
pub struct Workers {
    handle: Handle,
    _owner: Arc<Owner>,
}

/// Shuts the runtime down without blocking, wherever the last handle is dropped (also from
/// inside another runtime, where a blocking shutdown would panic).
struct Owner(Option<Runtime>);

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Workers {
    /// A runtime with `threads` worker threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("graphql")
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            _owner: Arc::new(Owner(Some(runtime))),
        })
    }

    /// Run `work` there and wait for it, at most `budget`.
    pub async fn run<F>(&self, budget: Duration, work: F) -> Result<F::Output, Cut>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut task = self.handle.spawn(work);
        match tokio::time::timeout(budget, &mut task).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "GraphQL work panicked");
                Err(Cut::Panicked)
            }
            Err(_) => {
                task.abort();
                Err(Cut::Budget)
            }
        }
    }

    /// Run `work` there to its end (a WebSocket connection: its own quotas bound it).
    pub async fn run_to_end<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Err(e) = self.handle.spawn(work).await {
            tracing::error!(error = %e, "GraphQL connection task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_elsewhere_and_is_cut_at_its_budget() {
        let workers = Workers::new(1).unwrap();
        let name = workers
            .run(Duration::from_secs(5), async {
                std::thread::current().name().map(str::to_owned)
            })
            .await;
        assert_eq!(name, Ok(Some("graphql".to_owned())));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let slow = workers
            .run(Duration::from_millis(20), async move {
                // Never finishes on its own; dropping it (the abort) drops `tx`.
                let _keep = tx;
                std::future::pending::<()>().await;
            })
            .await;
        assert_eq!(slow, Err(Cut::Budget));
        assert!(rx.await.is_err(), "the aborted work was dropped");
        let panicked = workers
            .run(Duration::from_secs(5), async { panic!("boom") })
            .await;
        assert_eq!(panicked, Err(Cut::Panicked));
        // The runtime can be dropped from inside another one.
        drop(workers);
    }
}
