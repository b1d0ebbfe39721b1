//! The `fleetledger` binary: one command per role (serve, worker, relay, migrate, verify, bench, db).
#![expect(clippy::print_stdout, reason = "a CLI: results go to stdout")]

mod audit;
mod projectors;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use eventstore::embedded::EmbeddedPostgres;
use fleetledger_app::{Application, Config, db, relay, seed, shutdown_signal, telemetry};

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

/// Environment every command that uses the database reads.
macro_rules! db_env {
    () => {
        "Environment:
  DATABASE_URL                    PostgreSQL URL (unset: the embedded cluster under FLEETLEDGER_DATA_DIR)
  FLEETLEDGER_DATA_DIR            where the embedded cluster and the signing key live [default: ./data]
  FLEETLEDGER_DB_MAX_CONNECTIONS  connections per process [default: 20]
  RUST_LOG                        log filter [default: info,sqlx=warn]
  FLEETLEDGER_LOG_FORMAT          `json` for JSON lines [default: text]
  (.env.example lists every variable with its default)"
    };
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server: the GraphQL API, the projectors, the worker (and the relay with
    /// KAFKA_BROKERS), on the embedded PostgreSQL when DATABASE_URL is unset.
    #[command(after_help = "Examples:
  fleetledger serve
  FLEETLEDGER_HTTP_ADDR=0.0.0.0:8080 DATABASE_URL=postgres://app@db/fleet fleetledger serve
  FLEETLEDGER_BOOTSTRAP_ADMIN_EMAIL=you@example.com FLEETLEDGER_BOOTSTRAP_ADMIN_PASSWORD='a long password' fleetledger serve

Open http://127.0.0.1:8080/ for the explorer, the API guide and the schema.

Environment (besides the database's, below):
  FLEETLEDGER_HTTP_ADDR            listen address [default: 127.0.0.1:8080]
  FLEETLEDGER_JWT_SECRET           token signing key, 32+ bytes [default: made once, kept in the data dir]
  FLEETLEDGER_BOOTSTRAP_ADMIN_EMAIL, FLEETLEDGER_BOOTSTRAP_ADMIN_PASSWORD  the first admin
  REDIS_URL                        rate limits and the hot-car lock [default: in-process]
  KAFKA_BROKERS                    also run the relay [default: off]
  FLEETLEDGER_SERVE_PROJECTORS     run the projectors here [default: true]
  FLEETLEDGER_SERVE_WORKER         run a worker here [default: true]

Environment:
  DATABASE_URL, FLEETLEDGER_DATA_DIR, FLEETLEDGER_DB_MAX_CONNECTIONS, RUST_LOG, FLEETLEDGER_LOG_FORMAT
  (.env.example lists every variable with its default)")]
    Serve,
    /// Print the GraphQL schema (SDL); docs/schema.graphql is this output.
    #[command(after_help = "Example:\n  fleetledger schema > docs/schema.graphql")]
    Schema,
    /// Print the access policy: who may read or call every field (Markdown); docs/security.md
    /// shows this table.
    #[command(after_help = "Example:\n  fleetledger policy")]
    Policy,
    /// Apply the database migrations and exit.
    #[command(after_help = concat!("Example:\n  DATABASE_URL=postgres://app@db/fleet fleetledger migrate\n\n", db_env!()))]
    Migrate,
    /// Run the worker alone: hold expiry, payment confirmation, refunds (serve runs one too;
    /// several may run, each step is run by one of them).
    #[command(after_help = concat!("Examples:\n  DATABASE_URL=postgres://app@db/fleet fleetledger worker\n  fleetledger worker status\n\n", db_env!()))]
    Worker {
        #[command(subcommand)]
        command: Option<WorkerCommand>,
    },
    /// Run projectors as a process of their own (one active instance per projection).
    #[command(after_help = concat!("Examples:\n  fleetledger project\n  fleetledger project --only search --only availability\n\n", db_env!()))]
    Project(projectors::ProjectArgs),
    /// Write a realistic demo history (branches, customers, cars, bookings, telemetry) and one
    /// demo account per role; prints the logins.
    #[command(after_help = "Examples:
  fleetledger seed
  fleetledger seed --cars 200 --customers 100 --bookings 5000 --days 365 --seed 7")]
    Seed(seed::SeedOptions),
    /// Operate projections: status, rebuild [--verify].
    #[command(after_help = "Examples:
  fleetledger projections status
  fleetledger projections rebuild --all --verify --dry-run")]
    Projections {
        #[command(subcommand)]
        command: projectors::ProjectionsCommand,
    },
    /// Relay every event to Kafka as CloudEvents, one topic per aggregate type, at least once
    /// and in order per aggregate (needs KAFKA_BROKERS; without it the command says so and
    /// exits).
    #[command(after_help = "Example:
  KAFKA_BROKERS=localhost:9092 fleetledger relay

Environment (besides the database's):
  KAFKA_BROKERS                          bootstrap servers (required)
  FLEETLEDGER_KAFKA_TOPIC_PREFIX         topic name prefix [default: fleetledger]
  FLEETLEDGER_KAFKA_PARTITIONS           partitions of topics it creates [default: 3]
  FLEETLEDGER_KAFKA_REPLICATION          replication factor of topics it creates [default: 1]
  FLEETLEDGER_KAFKA_BATCH                events per delivered batch [default: 2000]
  FLEETLEDGER_KAFKA_DELIVERY_TIMEOUT_MS  give up a delivery after [default: 30000]
  FLEETLEDGER_CLOUDEVENTS_SOURCE         the CloudEvents `source` [default: urn:fleetledger]
See docs/integrators.md.")]
    Relay,
    /// Recompute hash chains and the log sequence (every stream, or --stream TYPE/ID); exits
    /// 1 when anything is broken.
    #[command(after_help = "Examples:
  fleetledger verify --all
  fleetledger verify --stream car/0192f0c4-8a1e-7c3b-9b1a-2f5d7c1e9a10
  fleetledger verify --all --against-anchor 104233:88121:5e0c…

See docs/auditing.md.")]
    Verify(audit::VerifyArgs),
    /// Store and print a digest over every stream head, for auditors to keep elsewhere.
    #[command(after_help = "Example:\n  fleetledger anchor >> anchors-kept-elsewhere.txt")]
    Anchor,
    /// Write events with every stored field as JSON Lines (all, a position range or one
    /// stream), read in one snapshot.
    #[command(after_help = "Examples:
  fleetledger export -o log.jsonl
  fleetledger export -o car.jsonl --stream car/0192f0c4-8a1e-7c3b-9b1a-2f5d7c1e9a10
  fleetledger verify-export log.jsonl")]
    Export(audit::ExportArgs),
    /// Check the hash chains in an export file, with no database; exits 1 when anything is
    /// broken.
    #[command(after_help = "Example:\n  fleetledger verify-export log.jsonl")]
    VerifyExport {
        /// The JSON Lines file `fleetledger export` wrote.
        file: std::path::PathBuf,
    },
    /// Print an aggregate's state rebuilt from its events, as JSON: the latest, at a version
    /// or as of an instant.
    #[command(after_help = "Examples:
  fleetledger replay booking/0192f0c4-8a1e-7c3b-9b1a-2f5d7c1e9a10
  fleetledger replay car/0192f0c4-8a1e-7c3b-9b1a-2f5d7c1e9a10 --at-version 3
  fleetledger replay car/0192f0c4-8a1e-7c3b-9b1a-2f5d7c1e9a10 --as-of 2026-11-30T12:00:00Z")]
    Replay(audit::ReplayArgs),
    /// Benchmarks, reported as ratios against baselines run side by side.
    #[cfg(feature = "bench")]
    #[command(after_help = "Examples:
  fleetledger bench append --json
  fleetledger bench projections
See docs/benchmarks.md.")]
    Bench {
        #[command(subcommand)]
        which: fleetledger_bench::BenchCommand,
    },
    /// The embedded PostgreSQL cluster under FLEETLEDGER_DATA_DIR.
    #[command(after_help = "Examples:
  fleetledger db status     # running or not, and the URL to connect with
  fleetledger db start      # start it and print the URL
  fleetledger db stop")]
    Db {
        #[command(subcommand)]
        action: DbCommand,
    },
}

#[derive(Subcommand, Debug)]
enum DbCommand {
    /// Start the embedded cluster (if needed) and print its connection URL.
    Start,
    /// Say whether the embedded cluster is running, and the URL to connect with.
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
    commands::crash::arm_from_env();
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

/// What `fleetledger worker` can do besides running.
#[derive(clap::Subcommand, Debug)]
enum WorkerCommand {
    /// Print how many follow-up steps are due, waiting and stuck, and list the stuck ones
    /// (they wait for staff: GraphQL `retryStep`). Exit status 3 when any is stuck.
    #[command(after_help = "Example:\n  fleetledger worker status")]
    Status,
}

async fn run(command: Command, config: Config) -> Result<ExitCode> {
    match command {
        Command::Serve => serve(config).await,
        Command::Schema => {
            print!("{}", api::sdl());
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy => {
            print!("{}", api::policy::markdown());
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker { command: None } => worker(config).await,
        Command::Worker {
            command: Some(WorkerCommand::Status),
        } => worker_status(config).await,
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
        #[cfg(feature = "bench")]
        Command::Bench { which } => {
            fleetledger_bench::run(which, &config).await?;
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
    Application::build(config)
        .await?
        .run_until(shutdown)
        .await?;
    Ok(ExitCode::SUCCESS)
}

async fn worker(config: Config) -> Result<ExitCode> {
    let pool = db::connect_and_migrate(&config, "fleetledger-worker").await?;
    let services = fleetledger_app::App::build(&config, pool)?;
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

async fn worker_status(config: Config) -> Result<ExitCode> {
    let pool = db::connect_and_migrate(&config, "fleetledger-worker-status").await?;
    let counts = commands::worker::step_counts(&pool, chrono::Utc::now()).await?;
    println!(
        "steps: {} due, {} waiting, {} stuck",
        counts.due, counts.waiting, counts.stuck
    );
    let stuck = commands::worker::stuck_steps(&pool, None, 100).await?;
    for step in &stuck {
        println!(
            "stuck {} {} booking {} since {} after {} attempt(s): {}",
            step.id,
            step.kind,
            step.booking_id,
            step.stuck_at.to_rfc3339(),
            step.attempts,
            step.last_error.as_deref().unwrap_or("-")
        );
    }
    if counts.stuck > stuck.len() as i64 {
        println!(
            "... and {} more (GraphQL stuckSteps pages through them)",
            counts.stuck - stuck.len() as i64
        );
    }
    Ok(if counts.stuck > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

async fn embedded_db(config: Config, action: DbCommand) -> Result<ExitCode> {
    let dir = config.embedded_dir();
    match action {
        DbCommand::Start => {
            let pg = EmbeddedPostgres::start(&dir).await?;
            println!("{}", pg.url());
        }
        DbCommand::Status => {
            if EmbeddedPostgres::is_running(&dir).await? {
                // Reuses the running server: nothing is started.
                let pg = EmbeddedPostgres::start(&dir).await?;
                println!("{}: running", dir.display());
                println!("connect with: psql '{}'", pg.url());
            } else {
                println!(
                    "{}: stopped (`fleetledger db start` starts it)",
                    dir.display()
                );
            }
        }
        DbCommand::Stop => {
            EmbeddedPostgres::stop(&dir).await?;
            println!("stopped");
        }
    }
    Ok(ExitCode::SUCCESS)
}
