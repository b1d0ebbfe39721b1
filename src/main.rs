//! The `fleetledger` binary: one command per role (serve, worker, relay, migrate, verify, bench, db).
#![expect(clippy::print_stdout, reason = "a CLI: results go to stdout")]

mod app;
mod audit;
mod bench;
mod bench_projections;
mod bench_relay;
mod config;
mod db;
mod projectors;
mod relay;
mod seed;
mod telemetry;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use eventstore::embedded::EmbeddedPostgres;

use crate::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "fleetledger",
    version,
    about = "Event-sourced car-rental backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (embedded PostgreSQL when DATABASE_URL is unset).
    Serve,
    /// Print the GraphQL schema (SDL); docs/schema.graphql is this output.
    Schema,
    /// Apply the database migrations and exit.
    Migrate,
    /// Run the worker alone: hold expiry, payment confirmation, refunds.
    Worker,
    /// Run projectors as a process of their own (one active instance per projection).
    Project(projectors::ProjectArgs),
    /// Write a realistic demo history: branches, customers, cars, bookings, telemetry.
    Seed(seed::SeedOptions),
    /// Operate projections: status, rebuild [--verify].
    Projections {
        #[command(subcommand)]
        command: projectors::ProjectionsCommand,
    },
    /// Relay every event to Kafka as CloudEvents (needs KAFKA_BROKERS).
    Relay,
    /// Recompute hash chains and the log sequence (every stream, or --stream TYPE/ID).
    Verify(audit::VerifyArgs),
    /// Store and print a digest over every stream head, for auditors to keep elsewhere.
    Anchor,
    /// Write events with every stored field as JSON Lines.
    Export(audit::ExportArgs),
    /// Check the hash chains in an export file, with no database.
    VerifyExport { file: std::path::PathBuf },
    /// Print an aggregate's state rebuilt from its events, as JSON.
    Replay(audit::ReplayArgs),
    /// Benchmarks, reported as ratios against baselines run side by side.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// The embedded PostgreSQL cluster under FLEETLEDGER_DATA_DIR.
    Db {
        #[command(subcommand)]
        action: DbCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Command append throughput: our executor vs cqrs-es + postgres-es vs a raw INSERT ceiling.
    Append(bench::AppendOptions),
    /// Projection rebuild rate vs the raw read rate; commit-to-visible lag under load.
    Projections(bench_projections::ProjectionBenchOptions),
    /// Relay throughput end to end vs a bare producer's rate for the same messages (KAFKA_BROKERS).
    Relay(bench_relay::RelayBenchOptions),
}

#[derive(Subcommand, Debug)]
enum DbCommand {
    /// Start the embedded cluster (if needed) and print its connection URL.
    Start,
    /// Say whether the embedded cluster is running.
    Status,
    /// Stop the embedded cluster.
    Stop,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> Result<ExitCode> {
    match command {
        Command::Serve => serve(config).await,
        Command::Schema => {
            print!("{}", api::sdl());
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker => worker(config).await,
        Command::Project(args) => projectors::project(config, args).await,
        Command::Seed(options) => {
            let pool = db::connect_and_migrate(&config, "fleetledger-seed").await?;
            let started = std::time::Instant::now();
            let report = seed::seed(&pool, &options).await?;
            println!(
                "seeded {} cars, {} bookings, {} events in {:.1}s",
                report.cars,
                report.bookings,
                report.events,
                started.elapsed().as_secs_f64()
            );
            if report.bookings < u64::from(options.bookings) {
                println!(
                    "made {} of the {} bookings asked for: {} car(s) over {} days of history and \
                     30 days ahead hold no more without overlapping (ask for more --cars or --days)",
                    report.bookings,
                    options.bookings,
                    options.cars.max(1),
                    options.days.max(1)
                );
            }
            println!("demo accounts (password {:?}):", seed::DEMO_PASSWORD);
            for (email, role) in seed::DEMO_STAFF {
                println!("  {role:<10} {email}");
            }
            println!(
                "  CUSTOMER   customer1@seed.fleetledger.test … customer{}@seed.fleetledger.test",
                options.customers.max(1)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Projections { command } => projectors::projections(config, command).await,
        Command::Relay => relay::run(config, shutdown_signal()).await,
        Command::Migrate => {
            db::connect_and_migrate(&config, "fleetledger-migrate").await?;
            eprintln!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => audit::verify(&config, args).await,
        Command::Anchor => audit::anchor(&config).await,
        Command::Export(args) => audit::export(&config, args).await,
        Command::VerifyExport { file } => audit::verify_export(&file),
        Command::Replay(args) => audit::replay(&config, args).await,
        Command::Bench {
            which: BenchCommand::Append(options),
        } => {
            let server = db::connect_options(&config).await?;
            bench::append(server, config.executor.clone(), options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            which: BenchCommand::Projections(options),
        } => {
            let server = db::connect_options(&config).await?;
            let url = config.database_url.as_ref().map(|u| u.expose().to_owned());
            bench_projections::run(server, url, options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            which: BenchCommand::Relay(options),
        } => {
            let server = db::connect_options(&config).await?;
            bench_relay::run(server, config.kafka.clone(), options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Db { action } => embedded_db(config, action).await,
    }
}

async fn serve(config: Config) -> Result<ExitCode> {
    let shutdown = shutdown_signal();
    // One recorder per process, before anything records: the projectors' gauges and the
    // API's request metrics are all served on /metrics.
    if api::prometheus().is_none() {
        tracing::warn!("metrics recorder not installed; /metrics will be empty");
    }
    let pool = db::connect_and_migrate(&config, "fleetledger-serve").await?;
    let services = app::App::build(&config, pool)?;
    services.bootstrap_admin(&config).await?;
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let projector_token = tokio_util::sync::CancellationToken::new();
    let mut projector_tasks = if config.serve_projectors {
        projectors::spawn(
            &services.store,
            &[],
            &projectors::run_options(&config),
            &projector_token,
        )?
    } else {
        tokio::task::JoinSet::new()
    };
    // With KAFKA_BROKERS set, the relay runs here too (one instance delivers, by lease).
    if let Some(relay) = relay::projector(services.store.clone(), &config)? {
        let token = projector_token.clone();
        projector_tasks.spawn(async move {
            if let Err(e) = relay.run_until_cancelled(token).await {
                tracing::error!(error = %e, "the Kafka relay stopped");
            }
        });
    }
    let worker = services.worker.clone();
    let worker_task = tokio::spawn(async move {
        worker
            .run(std::time::Duration::from_secs(1), async {
                let _ = worker_stopped.await;
            })
            .await;
    });
    let app = api::router(services.api_state(&config)?);
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding {}", config.http_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("HTTP server")?;
    let _ = stop_worker.send(());
    let _ = worker_task.await;
    projector_token.cancel();
    while projector_tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn worker(config: Config) -> Result<ExitCode> {
    let pool = db::connect_and_migrate(&config, "fleetledger-worker").await?;
    let services = app::App::build(&config, pool)?;
    services.bootstrap_admin(&config).await?;
    let shutdown = shutdown_signal();
    tracing::info!("worker running");
    services
        .worker
        .run(std::time::Duration::from_secs(1), shutdown)
        .await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives early is not lost.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
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

async fn embedded_db(config: Config, action: DbCommand) -> Result<ExitCode> {
    let dir = config.embedded_dir();
    match action {
        DbCommand::Start => {
            let pg = EmbeddedPostgres::start(&dir).await?;
            println!("{}", pg.url());
        }
        DbCommand::Status => {
            let running = EmbeddedPostgres::is_running(&dir).await?;
            println!(
                "{}: {}",
                dir.display(),
                if running { "running" } else { "stopped" }
            );
        }
        DbCommand::Stop => {
            EmbeddedPostgres::stop(&dir).await?;
            println!("stopped");
        }
    }
    Ok(ExitCode::SUCCESS)
}
