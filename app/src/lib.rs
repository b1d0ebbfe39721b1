//! The Fleetledger application, built once.
//!
//! [`Application::build`] makes exactly what `fleetledger serve` runs (the migrated pool, the
//! event store and services, the first admin, the HTTP listener) and [`Application::run_until`]
//! runs it (the projectors, the Kafka relay when configured, the worker, the API) until
//! shutdown, then drains. `main` calls it; so can anything that wants the real wiring.
//! The other commands' building blocks live here too: the configuration, the database
//! connection, the demo seeder and the projector and relay runners.

pub mod config;
pub mod db;
pub mod progress;
pub mod projectors;
pub mod relay;
pub mod seed;
pub mod telemetry;
mod wiring;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::{Context, Result};

pub use crate::config::{Config, Secret};
pub use crate::wiring::{App, stored_signing_key};

/// The server `fleetledger serve` runs, built and bound but not yet running.
pub struct Application {
    config: Config,
    app: App,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    first_admin: Option<String>,
}

impl Application {
    /// Connect to the database (the embedded cluster when `DATABASE_URL` is unset) and migrate
    /// it, build the services, create the first admin when configured and none exists, and
    /// bind the HTTP address (port 0: one the system picks, see [`Application::addr`]).
    pub async fn build(config: Config) -> Result<Self> {
        let pool = db::connect_and_migrate(&config, "fleetledger-serve").await?;
        let app = App::build(&config, pool)?;
        let first_admin = app.bootstrap_admin(&config).await?;
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding {}", config.http_addr))?;
        let addr = listener.local_addr()?;
        Ok(Self {
            config,
            app,
            listener,
            addr,
            first_admin,
        })
    }

    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The services the API and the worker run on.
    pub fn services(&self) -> &api::Services {
        &self.app.services
    }

    /// Run the projectors (unless `FLEETLEDGER_SERVE_PROJECTORS=false`), the relay (with
    /// `KAFKA_BROKERS`), the worker (unless `FLEETLEDGER_SERVE_WORKER=false`) and the API until `shutdown` resolves; then stop taking
    /// requests, finish those in flight, stop the worker and the projectors, and return.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let Self {
            config,
            app,
            listener,
            addr,
            first_admin,
        } = self;
        let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
        let projector_token = tokio_util::sync::CancellationToken::new();
        let mut projector_tasks = if config.serve_projectors {
            projectors::spawn(
                &app.store,
                &[],
                &projectors::run_options(&config),
                &projector_token,
            )?
        } else {
            tokio::task::JoinSet::new()
        };
        // With KAFKA_BROKERS set, the relay runs here too (one instance delivers, by lease).
        if let Some(relay) = relay::projector(app.store.clone(), &config)? {
            let token = projector_token.clone();
            projector_tasks.spawn(async move {
                if let Err(e) = relay.run_until_cancelled(token).await {
                    tracing::error!(error = %e, "the Kafka relay stopped");
                }
            });
        }
        let worker = config.serve_worker.then(|| app.worker.clone());
        let worker_task = tokio::spawn(async move {
            if let Some(worker) = worker {
                worker
                    .run(std::time::Duration::from_secs(1), async {
                        let _ = worker_stopped.await;
                    })
                    .await;
            }
        });
        let router = api::router(app.api_state(&config)?);
        // Small WebSocket messages go out at once: with Nagle's algorithm a second message
        // waits for the client's delayed acknowledgement of the first (about 40 ms).
        let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
            }
        });
        tracing::info!(
            addr = %addr,
            explorer = %format!("http://{addr}/"),
            graphql = %format!("http://{addr}/graphql"),
            metrics = %format!("http://{addr}/metrics"),
            data_dir = %config.data_dir.display(),
            database = if config.database_url.is_some() { "DATABASE_URL" } else { "embedded" },
            first_admin = first_admin.as_deref().unwrap_or("-"),
            "listening"
        );
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server");
        let _ = stop_worker.send(());
        let _ = worker_task.await;
        projector_token.cancel();
        while projector_tasks.join_next().await.is_some() {}
        tracing::info!("stopped");
        served
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives early is not lost.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term) => {}
            () = wait(interrupt) => {}
        }
        tracing::info!("shutdown requested; draining");
    }
}
