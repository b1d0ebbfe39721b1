//! `fleetledger bench append`: command append throughput of our executor, of cqrs-es 0.5 +
//! postgres-es 0.5 on the same aggregate, and of a raw INSERT ceiling, in one run on one server.
//!
//! Three scenarios, each timing only `ChangeDailyRate` commands (one event each) on cars
//! registered beforehand:
//! - **sequential**: one task issues `--sequential` commands one after another, round-robin over
//!   `ceil(sequential / per-task)` cars, so streams grow as long as in the next scenario;
//! - **distinct**: `--tasks` tasks, each on its own car, `--per-task` commands each;
//! - **hot**: `--tasks` tasks × `--hot-per-task` commands, all on ONE car.
//!
//! Fairness: each system gets its own pool of `--pool-size` connections (opened, warmed up by
//! an untimed run, then closed before the next system starts); systems never run concurrently
//! and see the scenarios in the same order; a `CHECKPOINT` (best effort) precedes every timed
//! phase so no system pays for another's dirty pages. With `--rounds R` every (system, scenario)
//! is run R times and the median rate is reported.
//!
//! The bench works in two fresh databases it creates on the given server (`flbench_ours_*` for
//! our executor and the raw ceiling, which use distinct aggregate ids; `flbench_pges_*` with the
//! postgres-es schema) and drops them with `DROP DATABASE … WITH (FORCE)` when it ends, fails or
//! is interrupted with Ctrl-C. It touches no other database.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use commands::{CommandContext, ExecuteError, Executor, ExecutorConfig};
use cqrs_es::AggregateError;
use domain::car::{Car, CarClass, CarCommand, CarDetails, CarEvent, FuelType, Transmission};
use domain::{Currency, Money};
use eventstore::EventStore;
use postgres_es::PostgresCqrs;
use rand::Rng;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use uuid::Uuid;

/// The schema postgres-es 0.5 expects (its repository's `db/init.sql`, tables `events` and
/// `snapshots` only; the view table, test user and sample row of that file are left out).
const POSTGRES_ES_SCHEMA: &str = "
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);
";

/// The raw ceiling's statement: one row per command, every value computed before the timer
/// starts, no load, no check, no RETURNING.
const RAW_INSERT: &str = "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, \
     event_type, event_version, payload, metadata, recorded_at, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// The raw ceiling stores this instead of a chained sha256 (the column requires 32 bytes); the
/// ceiling measures the INSERT alone, not the hash chain.
const RAW_DUMMY_HASH: [u8; 32] = [0x5a; 32];

/// The registration rate; every rate change uses a unique rate above it, so none is a no-op.
const REGISTER_RATE: i64 = 5_000;

#[derive(clap::Args, Debug, Clone)]
pub struct AppendOptions {
    /// Commands issued one after another by a single task.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    sequential: u32,
    /// Concurrent tasks in the distinct-aggregate and hot-aggregate scenarios.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    tasks: u32,
    /// Commands per task on its own car (distinct aggregates).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    per_task: u32,
    /// Commands per task on the one shared car (hot aggregate).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    hot_per_task: u32,
    /// Connections in each system's pool (every system gets its own pool of this size).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pool_size: u32,
    /// Runs of every (system, scenario); the median rate is reported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Untimed warm-up commands per task before each system's first timed phase.
    #[arg(long, default_value_t = 10)]
    warmup: u32,
    /// Override the executor's retry.max_attempts (FLEETLEDGER_RETRY_MAX_ATTEMPTS) for the bench.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    retry_max_attempts: Option<u32>,
    /// Whether pools ping a connection before handing it out (sqlx's default, as `serve` uses).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    test_before_acquire: bool,
    /// Also write the markdown report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print one JSON object (each scenario's median rate per system and our ratios to the
    /// others) instead of the markdown report.
    #[arg(long)]
    json: bool,
}

pub async fn append(
    server: PgConnectOptions,
    executor: ExecutorConfig,
    options: AppendOptions,
) -> Result<()> {
    let mut executor = executor;
    if let Some(attempts) = options.retry_max_attempts {
        executor.retry.max_attempts = attempts;
    }
    let mut admin =
        PgConnection::connect_with(&server.clone().application_name("fleetledger-bench"))
            .await
            .context("connecting to PostgreSQL")?;
    let facts = MachineFacts::gather(&mut admin).await?;

    let suffix = format!("{:08x}", rand::rng().random::<u32>());
    let names = Names {
        ours: format!("flbench_ours_{suffix}"),
        pges: format!("flbench_pges_{suffix}"),
    };
    let mut created: Vec<String> = Vec::new();
    let outcome = {
        let run = run_all(
            &mut admin,
            &server,
            &executor,
            &options,
            &names,
            &mut created,
        );
        tokio::select! {
            result = run => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    };
    let cleanup = drop_databases(&mut admin, &created).await;
    let _ = admin.close().await;

    let results = match (outcome, cleanup) {
        (Ok(results), Ok(())) => results,
        (Err(e), cleanup) => {
            if let Err(c) = cleanup {
                eprintln!("also: {c:#}");
            }
            return Err(e);
        }
        (Ok(_), Err(c)) => return Err(c),
    };

    let report = render(&results, &facts, &executor, &options);
    if options.json {
        println!("{}", as_json(&results));
    } else {
        println!("{report}");
    }
    if let Some(path) = &options.output {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    let failed: usize = Scenario::ALL
        .iter()
        .flat_map(|s| results.get(System::Ours, *s))
        .map(|m| m.failed)
        .sum();
    if failed > 0 {
        anyhow::bail!(
            "{failed} of our commands failed (gave up after {} attempts); every command must succeed",
            executor.retry.max_attempts
        );
    }
    Ok(())
}

struct Names {
    ours: String,
    pges: String,
}

/// `{"append": {"sequential": {"ours": …, "postgres_es": …, "raw": …, "ratio_raw": …,
/// "ratio_postgres_es": …}, "distinct": …, "hot": …}, "failed": …}`: median commands/s over the
/// rounds, and ours divided by each baseline.
fn as_json(results: &Results) -> Value {
    let mut scenarios = serde_json::Map::new();
    for scenario in Scenario::ALL {
        let rate = |system| results.median_rate(system, scenario);
        let (ours, pges, raw) = (
            rate(System::Ours),
            rate(System::PostgresEs),
            rate(System::Raw),
        );
        let ratio = |base: Option<f64>| match (ours, base) {
            (Some(o), Some(b)) if b > 0.0 => Some(o / b),
            _ => None,
        };
        let name = match scenario {
            Scenario::Sequential => "sequential",
            Scenario::Distinct => "distinct",
            Scenario::Hot => "hot",
        };
        scenarios.insert(
            name.to_owned(),
            serde_json::json!({
                "ours": ours, "postgres_es": pges, "raw": raw,
                "ratio_raw": ratio(raw), "ratio_postgres_es": ratio(pges),
            }),
        );
    }
    let failed: usize = Scenario::ALL
        .iter()
        .flat_map(|s| results.get(System::Ours, *s))
        .map(|m| m.failed)
        .sum();
    serde_json::json!({ "append": scenarios, "failed": failed })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum System {
    Ours,
    PostgresEs,
    Raw,
}

impl System {
    const ALL: [System; 3] = [System::Ours, System::PostgresEs, System::Raw];

    fn label(self) -> &'static str {
        match self {
            System::Ours => "ours",
            System::PostgresEs => "postgres-es",
            System::Raw => "raw INSERT",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Scenario {
    Sequential,
    Distinct,
    Hot,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::Sequential, Scenario::Distinct, Scenario::Hot];

    fn label(self, options: &AppendOptions) -> String {
        match self {
            Scenario::Sequential => format!(
                "sequential (1 task, {} cmds over {} cars)",
                options.sequential,
                sequential_cars(options)
            ),
            Scenario::Distinct => format!(
                "{} tasks, distinct aggregates ({} × {})",
                options.tasks, options.tasks, options.per_task
            ),
            Scenario::Hot => format!(
                "{} tasks, one hot aggregate ({} × {})",
                options.tasks, options.tasks, options.hot_per_task
            ),
        }
    }
}

fn sequential_cars(options: &AppendOptions) -> u32 {
    options.sequential.div_ceil(options.per_task).max(1)
}

/// One timed run of one scenario by one system.
#[derive(Clone, Debug, Default)]
struct Measurement {
    /// Commands that committed.
    ok: usize,
    /// Commands refused for a concurrent writer (postgres-es has no retry).
    conflicts: usize,
    /// Our commands that gave up after the last retry.
    failed: usize,
    /// Our retries (attempts beyond the first), summed.
    retries: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU used while the phase ran (Linux only).
    cpu: Option<CpuUse>,
}

impl Measurement {
    /// Committed commands per second.
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }

    fn attempted(&self) -> usize {
        self.ok + self.conflicts + self.failed
    }
}

#[derive(Default)]
struct Results {
    runs: HashMap<(System, Scenario), Vec<Measurement>>,
}

impl Results {
    fn get(&self, system: System, scenario: Scenario) -> &[Measurement] {
        self.runs
            .get(&(system, scenario))
            .map_or(&[], Vec::as_slice)
    }

    fn median_rate(&self, system: System, scenario: Scenario) -> Option<f64> {
        let mut rates: Vec<f64> = self
            .get(system, scenario)
            .iter()
            .map(Measurement::rate)
            .collect();
        if rates.is_empty() {
            return None;
        }
        rates.sort_by(f64::total_cmp);
        let n = rates.len();
        Some(if n % 2 == 1 {
            rates[n / 2]
        } else {
            (rates[n / 2 - 1] + rates[n / 2]) / 2.0
        })
    }

    /// Counts summed over rounds, latencies merged.
    fn total(&self, system: System, scenario: Scenario) -> Measurement {
        let mut total = Measurement::default();
        for (i, m) in self.get(system, scenario).iter().enumerate() {
            total.ok += m.ok;
            total.conflicts += m.conflicts;
            total.failed += m.failed;
            total.retries += m.retries;
            total.elapsed += m.elapsed;
            total.latencies.extend_from_slice(&m.latencies);
            total.cpu = if i == 0 {
                m.cpu
            } else {
                total.cpu.zip(m.cpu).map(|(a, b)| a + b)
            };
        }
        total.latencies.sort();
        total
    }
}

async fn run_all(
    admin: &mut PgConnection,
    server: &PgConnectOptions,
    executor: &ExecutorConfig,
    options: &AppendOptions,
    names: &Names,
    created: &mut Vec<String>,
) -> Result<Results> {
    for name in [&names.ours, &names.pges] {
        sqlx::raw_sql(&format!("CREATE DATABASE {}", quote_ident(name)))
            .execute(&mut *admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        created.push(name.clone());
        eprintln!("created database {name}");
    }
    {
        let pool = open_pool(server, &names.ours, 1, true, "fleetledger-bench-setup").await?;
        eventstore::MIGRATOR
            .run(&pool)
            .await
            .context("applying our migrations")?;
        pool.close().await;
        let pool = open_pool(server, &names.pges, 1, true, "fleetledger-bench-setup").await?;
        sqlx::raw_sql(POSTGRES_ES_SCHEMA)
            .execute(&pool)
            .await
            .context("creating the postgres-es tables")?;
        pool.close().await;
    }

    let mut checkpoint = Checkpointer { enabled: true };
    let mut results = Results::default();
    let mut rates = RateCounter::default();
    for round in 1..=options.rounds {
        for system in System::ALL {
            let database = match system {
                System::Ours | System::Raw => &names.ours,
                System::PostgresEs => &names.pges,
            };
            let application = format!("fleetledger-bench-{}", system.label().replace(' ', "-"));
            let pool = open_pool(
                server,
                database,
                options.pool_size,
                options.test_before_acquire,
                &application,
            )
            .await?;
            let engine = Engine::new(system, pool.clone(), executor.clone())?;
            if options.warmup > 0 {
                let plan = Plan::distinct(options.tasks, options.warmup, &mut rates, system);
                run_plan(&engine, plan)
                    .await
                    .with_context(|| format!("{}: warm-up", system.label()))?;
            }
            for scenario in Scenario::ALL {
                let plan = match scenario {
                    Scenario::Sequential => Plan::sequential(
                        options.sequential,
                        sequential_cars(options),
                        &mut rates,
                        system,
                    ),
                    Scenario::Distinct => {
                        Plan::distinct(options.tasks, options.per_task, &mut rates, system)
                    }
                    Scenario::Hot => {
                        Plan::hot(options.tasks, options.hot_per_task, &mut rates, system)
                    }
                };
                checkpoint.run(admin).await;
                let measurement = run_plan(&engine, plan)
                    .await
                    .with_context(|| format!("{}: {scenario:?}", system.label()))?;
                eprintln!(
                    "round {round}/{}: {:<11} {:<10} {:>5} ok {:>4} conflicts {:>4} failed in {:>7.3}s = {:>8.0} cmd/s",
                    options.rounds,
                    system.label(),
                    format!("{scenario:?}").to_lowercase(),
                    measurement.ok,
                    measurement.conflicts,
                    measurement.failed,
                    measurement.elapsed.as_secs_f64(),
                    measurement.rate(),
                );
                results
                    .runs
                    .entry((system, scenario))
                    .or_default()
                    .push(measurement);
            }
            drop(engine);
            pool.close().await;
        }
    }
    Ok(results)
}

pub async fn open_pool(
    server: &PgConnectOptions,
    database: &str,
    size: u32,
    test_before_acquire: bool,
    application: &str,
) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(size)
        .test_before_acquire(test_before_acquire)
        .connect_with(
            server
                .clone()
                .database(database)
                .application_name(application),
        )
        .await
        .with_context(|| format!("connecting to database {database}"))
}

pub async fn drop_databases(admin: &mut PgConnection, created: &[String]) -> Result<()> {
    let mut failed = Vec::new();
    for name in created.iter().rev() {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
        match sqlx::raw_sql(&sql).execute(&mut *admin).await {
            Ok(_) => eprintln!("dropped database {name}"),
            Err(e) => {
                eprintln!("could not drop database {name}: {e}");
                failed.push(name.clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "databases left behind (drop them by hand): {}",
            failed.join(", ")
        ))
    }
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `CHECKPOINT` before each timed phase; turned off after the first refusal (it needs
/// superuser or pg_checkpoint).
struct Checkpointer {
    enabled: bool,
}

impl Checkpointer {
    async fn run(&mut self, admin: &mut PgConnection) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sqlx::raw_sql("CHECKPOINT").execute(&mut *admin).await {
            eprintln!("CHECKPOINT refused ({e}); continuing without checkpoints between phases");
            self.enabled = false;
        }
    }
}

struct MachineFacts {
    cores: usize,
    server_version: String,
    fsync: String,
    synchronous_commit: String,
    command_line: String,
}

impl MachineFacts {
    async fn gather(admin: &mut PgConnection) -> Result<Self> {
        let server_version = show(admin, "server_version").await?;
        let fsync = show(admin, "fsync").await?;
        let synchronous_commit = show(admin, "synchronous_commit").await?;
        Ok(Self {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            server_version,
            fsync,
            synchronous_commit,
            command_line: std::env::args()
                .map(|a| shell_quote(&a))
                .collect::<Vec<_>>()
                .join(" "),
        })
    }
}

async fn show(admin: &mut PgConnection, setting: &str) -> Result<String> {
    let row = sqlx::query(&format!("SHOW {setting}"))
        .fetch_one(&mut *admin)
        .await
        .with_context(|| format!("SHOW {setting}"))?;
    Ok(row.try_get::<String, _>(0)?)
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Hands out unique daily rates so no rate change is ever a no-op.
struct RateCounter {
    next: i64,
}

impl Default for RateCounter {
    fn default() -> Self {
        Self {
            next: REGISTER_RATE * 2,
        }
    }
}

impl RateCounter {
    fn next(&mut self) -> i64 {
        self.next += 1;
        self.next
    }
}

/// A raw ceiling row, computed before the timer starts.
#[derive(Clone, Debug)]
struct RawRow {
    event_id: Uuid,
    /// `None` in the hot scenario: taken from the in-process counter at run time.
    version: Option<i64>,
    payload: Value,
    recorded_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
struct Job {
    car: usize,
    rate: i64,
    raw: Option<RawRow>,
}

/// What to run: the cars (registered untimed) and one job list per task.
struct Plan {
    cars: Vec<String>,
    tasks: Vec<Vec<Job>>,
}

impl Plan {
    fn sequential(commands: u32, cars: u32, rates: &mut RateCounter, system: System) -> Self {
        let ids = new_cars(cars);
        let jobs = (0..commands as usize)
            .map(|i| (i % ids.len(), rates.next()))
            .collect();
        Self::with_versions(ids, vec![jobs], system)
    }

    fn distinct(tasks: u32, per_task: u32, rates: &mut RateCounter, system: System) -> Self {
        let ids = new_cars(tasks);
        let jobs = (0..tasks as usize)
            .map(|t| (0..per_task).map(|_| (t, rates.next())).collect())
            .collect();
        Self::with_versions(ids, jobs, system)
    }

    fn hot(tasks: u32, per_task: u32, rates: &mut RateCounter, system: System) -> Self {
        let ids = new_cars(1);
        let tasks = (0..tasks)
            .map(|_| {
                (0..per_task)
                    .map(|_| {
                        let rate = rates.next();
                        Job {
                            car: 0,
                            rate,
                            raw: (system == System::Raw).then(|| raw_row(rate, None)),
                        }
                    })
                    .collect()
            })
            .collect();
        Self { cars: ids, tasks }
    }

    /// Jobs where each car is used by one task only, so its versions are known up front.
    fn with_versions(cars: Vec<String>, tasks: Vec<Vec<(usize, i64)>>, system: System) -> Self {
        let mut versions = vec![1i64; cars.len()];
        let tasks = tasks
            .into_iter()
            .map(|jobs| {
                jobs.into_iter()
                    .map(|(car, rate)| {
                        let raw = (system == System::Raw).then(|| {
                            versions[car] += 1;
                            raw_row(rate, Some(versions[car]))
                        });
                        Job { car, rate, raw }
                    })
                    .collect()
            })
            .collect();
        Self { cars, tasks }
    }
}

fn new_cars(n: u32) -> Vec<String> {
    (0..n).map(|_| Uuid::new_v4().to_string()).collect()
}

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::USD)
}

fn raw_row(rate: i64, version: Option<i64>) -> RawRow {
    // The previous rate is not tracked for the ceiling; `from` only gives the payload its size.
    let payload = serde_json::json!({ "from": usd(rate - 1), "to": usd(rate) });
    RawRow {
        event_id: Uuid::now_v7(),
        version,
        payload,
        recorded_at: Utc::now(),
    }
}

fn car_details() -> CarDetails {
    CarDetails {
        make: "Toyota".into(),
        model: "Corolla".into(),
        year: 2024,
        class: CarClass::Compact,
        seats: 5,
        transmission: Transmission::Automatic,
        fuel: FuelType::Hybrid,
        features: vec!["bluetooth".into(), "gps".into()],
    }
}

enum Outcome {
    Ok {
        retries: u32,
    },
    /// Refused for a concurrent writer (postgres-es), or given up on after every retry (ours).
    Conflict,
}

/// One of the three systems, ready to run commands. Cheap to clone.
#[derive(Clone)]
enum Engine {
    Ours(Executor<Car>),
    PostgresEs(Arc<PostgresCqrs<Car>>),
    Raw { pool: PgPool, metadata: Value },
}

impl Engine {
    fn new(system: System, pool: PgPool, config: ExecutorConfig) -> Result<Self> {
        Ok(match system {
            System::Ours => Engine::Ours(Executor::new(EventStore::new(pool), (), config)),
            System::PostgresEs => {
                Engine::PostgresEs(Arc::new(postgres_es::postgres_cqrs(pool, vec![], ())))
            }
            System::Raw => Engine::Raw {
                pool,
                metadata: serde_json::to_value(CommandContext::new("bench").metadata())
                    .context("event metadata as JSON")?,
            },
        })
    }

    async fn register(&self, car: &str) -> Result<()> {
        let id = Uuid::parse_str(car).context("car id")?;
        let command = CarCommand::Register {
            id,
            details: car_details(),
            daily_rate: usd(REGISTER_RATE),
            branch: "LIS".into(),
        };
        match self {
            Engine::Ours(executor) => {
                executor
                    .execute(car, command, &CommandContext::new("bench"))
                    .await
                    .map_err(|e| anyhow!(e))?;
            }
            Engine::PostgresEs(cqrs) => {
                cqrs.execute_with_metadata(car, command, pges_metadata())
                    .await
                    .map_err(|e| anyhow!(e))?;
            }
            Engine::Raw { pool, metadata } => {
                let event = CarEvent::CarRegistered {
                    id,
                    details: car_details(),
                    daily_rate: usd(REGISTER_RATE),
                    branch: "LIS".into(),
                    in_service_from: None,
                };
                let encoded = commands::codec::encode(&event).map_err(|e| anyhow!(e))?;
                let row = RawRow {
                    event_id: encoded.event_id,
                    version: Some(1),
                    payload: encoded.payload,
                    recorded_at: Utc::now(),
                };
                raw_insert(pool, metadata, car, 1, &encoded.event_type, &row).await?;
            }
        }
        Ok(())
    }

    async fn change_rate(&self, car: &str, job: &Job, hot_version: &AtomicI64) -> Result<Outcome> {
        let command = CarCommand::ChangeDailyRate {
            daily_rate: usd(job.rate),
        };
        match self {
            Engine::Ours(executor) => match executor
                .execute(car, command, &CommandContext::new("bench"))
                .await
            {
                Ok(committed) => Ok(Outcome::Ok {
                    retries: committed.attempts.saturating_sub(1),
                }),
                Err(ExecuteError::Conflict { .. }) => Ok(Outcome::Conflict),
                Err(e) => Err(anyhow!(e)),
            },
            Engine::PostgresEs(cqrs) => match cqrs
                .execute_with_metadata(car, command, pges_metadata())
                .await
            {
                Ok(()) => Ok(Outcome::Ok { retries: 0 }),
                Err(AggregateError::AggregateConflict) => Ok(Outcome::Conflict),
                Err(e) => Err(anyhow!(e)),
            },
            Engine::Raw { pool, metadata } => {
                let row = job.raw.as_ref().context("raw row not prepared")?;
                let version = match row.version {
                    Some(v) => v,
                    None => hot_version.fetch_add(1, Ordering::Relaxed) + 1,
                };
                raw_insert(pool, metadata, car, version, "DailyRateChanged", row).await?;
                Ok(Outcome::Ok { retries: 0 })
            }
        }
    }
}

/// The metadata cqrs-es stores with each event: the same facts ours records.
fn pges_metadata() -> HashMap<String, String> {
    HashMap::from([
        ("actor".to_owned(), "bench".to_owned()),
        ("correlation_id".to_owned(), Uuid::now_v7().to_string()),
    ])
}

async fn raw_insert(
    pool: &PgPool,
    metadata: &Value,
    car: &str,
    version: i64,
    event_type: &str,
    row: &RawRow,
) -> Result<()> {
    sqlx::query(RAW_INSERT)
        .bind(row.event_id)
        .bind("car")
        .bind(car)
        .bind(version)
        .bind(event_type)
        .bind(1i32)
        .bind(&row.payload)
        .bind(metadata)
        .bind(row.recorded_at)
        .bind(&RAW_DUMMY_HASH[..])
        .execute(pool)
        .await
        .with_context(|| format!("raw INSERT of car/{car} version {version}"))?;
    Ok(())
}

/// Register the plan's cars (untimed), then run its tasks concurrently and time them.
async fn run_plan(engine: &Engine, plan: Plan) -> Result<Measurement> {
    for car in &plan.cars {
        engine
            .register(car)
            .await
            .with_context(|| format!("registering car {car}"))?;
    }
    let cars = Arc::new(plan.cars);
    // The hot car's stream holds its registration (version 1); raw rows continue from there.
    let hot_version = Arc::new(AtomicI64::new(1));
    let cpu_before = CpuSample::now();
    let started = Instant::now();
    // A JoinSet aborts the tasks still running when it is dropped: on an error or Ctrl-C no
    // task keeps writing while the databases are dropped.
    let mut running = tokio::task::JoinSet::new();
    for jobs in plan.tasks {
        let engine = engine.clone();
        let cars = Arc::clone(&cars);
        let hot_version = Arc::clone(&hot_version);
        running.spawn(async move { run_task(&engine, &cars, jobs, &hot_version).await });
    }
    let mut total = Measurement::default();
    while let Some(joined) = running.join_next().await {
        let m = joined.map_err(|e| anyhow!("bench task ended abnormally: {e}"))??;
        total.ok += m.ok;
        total.conflicts += m.conflicts;
        total.failed += m.failed;
        total.retries += m.retries;
        total.latencies.extend(m.latencies);
    }
    total.elapsed = started.elapsed();
    total.cpu = cpu_before.zip(CpuSample::now()).map(|(a, b)| b.since(a));
    Ok(total)
}

async fn run_task(
    engine: &Engine,
    cars: &[String],
    jobs: Vec<Job>,
    hot_version: &AtomicI64,
) -> Result<Measurement> {
    let mut m = Measurement {
        latencies: Vec::with_capacity(jobs.len()),
        ..Measurement::default()
    };
    for job in &jobs {
        let car = cars.get(job.car).context("job names no car")?;
        let started = Instant::now();
        let outcome = engine.change_rate(car, job, hot_version).await?;
        m.latencies.push(started.elapsed());
        match (outcome, engine) {
            (Outcome::Ok { retries }, _) => {
                m.ok += 1;
                m.retries += u64::from(retries);
            }
            (Outcome::Conflict, Engine::Ours(_)) => m.failed += 1,
            (Outcome::Conflict, _) => m.conflicts += 1,
        }
    }
    Ok(m)
}

/// CPU time used during a phase: by this process (the bench and the client library) and by the
/// whole machine (which, when PostgreSQL runs here, includes the server).
#[derive(Clone, Copy, Debug, Default)]
struct CpuUse {
    process: Duration,
    machine: Duration,
}

impl std::ops::Add for CpuUse {
    type Output = CpuUse;
    fn add(self, other: CpuUse) -> CpuUse {
        CpuUse {
            process: self.process + other.process,
            machine: self.machine + other.machine,
        }
    }
}

/// Cumulative CPU ticks from /proc (USER_HZ, 100 per second on Linux).
#[derive(Clone, Copy, Debug)]
struct CpuSample {
    process: u64,
    machine: u64,
}

impl CpuSample {
    const TICK: Duration = Duration::from_millis(10);

    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let all = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = all
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
        let busy = [0usize, 1, 2, 5, 6, 7]
            .iter()
            .map(|&i| ticks.get(i).copied().unwrap_or(0))
            .sum();
        Some(Self {
            process: utime + stime,
            machine: busy,
        })
    }

    fn since(self, earlier: CpuSample) -> CpuUse {
        let ticks = |n: u64| Self::TICK * u32::try_from(n).unwrap_or(u32::MAX);
        CpuUse {
            process: ticks(self.process.saturating_sub(earlier.process)),
            machine: ticks(self.machine.saturating_sub(earlier.machine)),
        }
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

pub fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "–".to_owned(),
        |d| format!("{:.2}", d.as_secs_f64() * 1000.0),
    )
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"))
}

fn fmt_rate(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_owned(), |r| format!("{r:.0}"))
}

fn render(
    results: &Results,
    facts: &MachineFacts,
    executor: &ExecutorConfig,
    options: &AppendOptions,
) -> String {
    let mut out = String::new();
    let rounds = if options.rounds == 1 {
        "1 round".to_owned()
    } else {
        format!("median of {} rounds", options.rounds)
    };
    let _ = writeln!(out, "## fleetledger bench append\n");
    let _ = writeln!(out, "- Command: `{}`", facts.command_line);
    let _ = writeln!(
        out,
        "- Machine: {} cores; PostgreSQL {} (fsync={}, synchronous_commit={})",
        facts.cores, facts.server_version, facts.fsync, facts.synchronous_commit
    );
    let _ = writeln!(
        out,
        "- Each system: its own pool of {} connections (test_before_acquire={}), untimed warm-up of {} × {} commands, \
         systems run one after another, CHECKPOINT before each timed phase; {rounds}",
        options.pool_size, options.test_before_acquire, options.tasks, options.warmup
    );
    let _ = writeln!(
        out,
        "- Ours: retry max_attempts={}, backoff {:?}..{:?}, snapshot_every={}, cache_capacity={}, lock_stripes={}",
        executor.retry.max_attempts,
        executor.retry.base_delay,
        executor.retry.max_delay,
        executor.snapshot_every,
        executor.cache_capacity,
        executor.lock_stripes
    );
    let _ = writeln!(
        out,
        "- postgres-es: `postgres_cqrs(pool, vec![], ())` (event store, no snapshots, no queries, no retry)"
    );
    let _ = writeln!(
        out,
        "- Raw INSERT: one single-row INSERT per command into our `events` table, values precomputed, \
         dummy 32-byte hash (no chain), hot versions from an in-process counter"
    );
    let _ = writeln!(
        out,
        "- Timed: only `ChangeDailyRate` commands (one event each) on cars registered beforehand\n"
    );

    let _ = writeln!(
        out,
        "| Scenario | ours cmd/s | postgres-es cmd/s | raw INSERT cmd/s | ours / postgres-es | ours / raw |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for scenario in Scenario::ALL {
        let ours = results.median_rate(System::Ours, scenario);
        let pges = results.median_rate(System::PostgresEs, scenario);
        let raw = results.median_rate(System::Raw, scenario);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            scenario.label(options),
            fmt_rate(ours),
            fmt_rate(pges),
            fmt_rate(raw),
            fmt_ratio(ratio(ours, pges)),
            fmt_ratio(ratio(ours, raw)),
        );
    }
    let per_round = if options.rounds == 1 {
        ""
    } else {
        " (summed over rounds)"
    };
    let ours = results.total(System::Ours, Scenario::Hot);
    let pges = results.total(System::PostgresEs, Scenario::Hot);
    let raw = results.total(System::Raw, Scenario::Hot);
    let _ = writeln!(
        out,
        "\nHot aggregate{per_round}: ours {} ok / {} failed of {}, {} retries in all; postgres-es {} ok / {} conflicts \
         of {} (no retry); raw {} ok of {}. Hot cmd/s counts committed commands only.",
        ours.ok,
        ours.failed,
        ours.attempted(),
        ours.retries,
        pges.ok,
        pges.conflicts,
        pges.attempted(),
        raw.ok,
        raw.attempted(),
    );

    let _ = writeln!(out, "\nPer-command latency, ms (p50 / p99, all rounds):\n");
    let _ = writeln!(out, "| Scenario | ours | postgres-es | raw INSERT |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for scenario in Scenario::ALL {
        let cell = |system| {
            let t = results.total(system, scenario);
            format!(
                "{} / {}",
                ms(percentile(&t.latencies, 50.0)),
                ms(percentile(&t.latencies, 99.0))
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            scenario.label(options),
            cell(System::Ours),
            cell(System::PostgresEs),
            cell(System::Raw),
        );
    }

    let _ = writeln!(
        out,
        "\nCPU per command, µs (bench process / whole machine incl. a local PostgreSQL; /proc, 10 ms ticks):\n"
    );
    let _ = writeln!(out, "| Scenario | ours | postgres-es | raw INSERT |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for scenario in Scenario::ALL {
        let cell = |system| {
            let t = results.total(system, scenario);
            let per = |d: Duration| d.as_secs_f64() * 1e6 / t.attempted().max(1) as f64;
            t.cpu.map_or_else(
                || "–".to_owned(),
                |cpu| format!("{:.0} / {:.0}", per(cpu.process), per(cpu.machine)),
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            scenario.label(options),
            cell(System::Ours),
            cell(System::PostgresEs),
            cell(System::Raw),
        );
    }

    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let distinct = ratio(
        results.median_rate(System::Ours, Scenario::Distinct),
        results.median_rate(System::PostgresEs, Scenario::Distinct),
    );
    let sequential = ratio(
        results.median_rate(System::Ours, Scenario::Sequential),
        results.median_rate(System::PostgresEs, Scenario::Sequential),
    );
    let _ = writeln!(out, "\nGoals:");
    let _ = writeln!(
        out,
        "- ≥ 2× postgres-es with {} tasks on distinct aggregates: {} ({})",
        options.tasks,
        verdict(distinct.is_some_and(|r| r >= 2.0)),
        fmt_ratio(distinct)
    );
    let _ = writeln!(
        out,
        "- never below postgres-es sequentially: {} ({})",
        verdict(sequential.is_some_and(|r| r >= 1.0)),
        fmt_ratio(sequential)
    );
    let _ = writeln!(
        out,
        "- every hot-aggregate command of ours succeeding: {} ({} of {})",
        verdict(ours.failed == 0 && ours.ok > 0),
        ours.ok,
        ours.attempted()
    );
    out
}
