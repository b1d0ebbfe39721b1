//! `fleetledger bench projections`: rebuild rate against the raw read rate, and
//! commit-to-visible lag, in one run on one server.
//!
//! 1. A fresh database (`flbench_proj_*`, dropped at the end) gets a seeded history.
//! 2. Raw read: `COPY (SELECT every column FROM events ORDER BY transaction_id,
//!    global_position) TO STDOUT`, the fastest the log can leave PostgreSQL; and the no-skip
//!    reader (`EventStore::read_all` in batches, rows decoded to events) for reference.
//! 3. Rebuild: every projection rebuilt from position zero (fresh tables, swap), one after the
//!    other, then all five from one shared read (`projections rebuild --all`); rate = events /
//!    time.
//! 4. Lag: a `fleetledger project --only search --only availability` child process, a writer
//!    appending `--lag-rate` events/s (car reservations) for `--lag-seconds`, and a poller reading
//!    the two checkpoints every millisecond; lag = first poll that sees the event's checkpoint
//!    minus the moment its append returned. Beside it, the bare no-skip subscription in this
//!    process (on its own pool, woken by LISTEN/NOTIFY like another process) as the baseline.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use domain::car::CarEvent;
use domain::{Currency, Money, TimeWindow};
use eventstore::{Checkpoint, EventMetadata, EventStore, ExpectedVersion, StreamAppend, StreamId};
use futures::StreamExt;
use projections::rebuild::{RebuildOptions, rebuild, rebuild_many};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::bench::{drop_databases, ms, open_pool, percentile, quote_ident};
use fleetledger_app::seed::{SeedOptions, write_history};

#[derive(clap::Args, Debug, Clone)]
pub struct ProjectionBenchOptions {
    /// Bookings in the seeded history (about ten events each).
    #[arg(long, default_value_t = 100_000)]
    bookings: u32,
    /// Cars in the seeded history.
    #[arg(long, default_value_t = 2_000)]
    cars: u32,
    /// Events per rebuild transaction.
    #[arg(long, default_value_t = 5_000)]
    batch_size: i64,
    /// Sustained append rate for the lag measurement, events/s.
    #[arg(long, default_value_t = 1_000)]
    lag_rate: u32,
    /// How long the lag measurement runs.
    #[arg(long, default_value_t = 20)]
    lag_seconds: u64,
    /// Also write the markdown report here.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print one JSON object (every rate, ratio and lag figure, named) instead of the markdown
    /// report.
    #[arg(long)]
    json: bool,
}

/// `server_url` is how a child process reaches the same server (`None`: the embedded
/// cluster's unix socket, which needs no password).
pub async fn run(
    server: PgConnectOptions,
    server_url: Option<String>,
    options: ProjectionBenchOptions,
) -> Result<()> {
    let name = format!("flbench_proj_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect_with(&server)
        .await
        .context("connecting to the server")?;
    sqlx::raw_sql(&format!("CREATE DATABASE {}", quote_ident(&name)))
        .execute(&mut admin)
        .await?;
    let created = vec![name.clone()];
    let result = tokio::select! {
        r = measure(&server, server_url.as_deref(), &name, &options) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    drop_databases(&mut admin, &created).await?;
    let (report, figures) = result?;
    if options.json {
        println!("{figures}");
    } else {
        println!("{report}");
    }
    if let Some(path) = &options.output {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn measure(
    server: &PgConnectOptions,
    server_url: Option<&str>,
    database: &str,
    options: &ProjectionBenchOptions,
) -> Result<(String, serde_json::Value)> {
    let pool = open_pool(server, database, 16, true, "fleetledger-bench").await?;
    eventstore::MIGRATOR.run(&pool).await?;
    let store = EventStore::new(pool.clone());
    eprintln!(
        "seeding {} bookings on {} cars…",
        options.bookings, options.cars
    );
    let seed = SeedOptions {
        cars: options.cars,
        customers: 100,
        bookings: options.bookings,
        readings_per_rental: 4,
        days: 365,
        seed: Some(1),
        chunk: 5_000,
        branches: 4,
    };
    let customers: Vec<Uuid> = (0..100).map(|i| Uuid::from_u128(i + 1)).collect();
    let seeded = write_history(&store, &seed, &customers, Utc::now(), &|_| {}).await?;
    let events = seeded.events;
    sqlx::query("VACUUM ANALYZE events").execute(&pool).await?;
    let mut out = String::new();
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pool)
        .await?;
    writeln!(
        out,
        "- Command: `fleetledger bench projections --bookings {} --cars {} --batch-size {} --lag-rate {} --lag-seconds {}`",
        options.bookings, options.cars, options.batch_size, options.lag_rate, options.lag_seconds
    )?;
    writeln!(
        out,
        "- Data: {events} events ({} bookings, {} cars, telemetry during rentals); {}",
        seeded.bookings,
        seeded.cars,
        version.split(" on ").next().unwrap_or(&version)
    )?;

    // Raw read rates, twice each (the first warms the cache), the second reported.
    let mut copy_rate = 0.0;
    for _ in 0..2 {
        copy_rate = copy_read(&pool, events).await?;
    }
    let mut reader_rate = 0.0;
    for _ in 0..2 {
        reader_rate = reader_read(&store, options.batch_size).await?;
    }
    eprintln!("raw read: COPY {copy_rate:.0} events/s, reader {reader_rate:.0} events/s");
    let rated = |rate: f64| {
        serde_json::json!({ "events_per_s": rate, "ratio_copy": rate / copy_rate,
                            "ratio_reader": rate / reader_rate })
    };
    let mut rebuilds = serde_json::Map::new();

    writeln!(out)?;
    writeln!(
        out,
        "| What | events/s | / COPY read | / no-skip reader |\n|---|---:|---:|---:|"
    )?;
    writeln!(
        out,
        "| raw COPY read of the log | {copy_rate:.0} | 1.00× | – |"
    )?;
    writeln!(
        out,
        "| no-skip reader (`read_all`, decoded) | {reader_rate:.0} | {:.2}× | 1.00× |",
        reader_rate / copy_rate
    )?;
    let rebuild_options = RebuildOptions {
        batch_size: options.batch_size,
        verify: false,
        swap: true,
        ..RebuildOptions::default()
    };
    let mut sequential = Duration::ZERO;
    for projection in projections::all() {
        let started = Instant::now();
        let report = rebuild(&store, projection.as_ref(), &rebuild_options, &|_, _| {}).await?;
        let took = started.elapsed();
        sequential += took;
        let rate = report.events as f64 / took.as_secs_f64();
        eprintln!("rebuild {}: {rate:.0} events/s", projection.name());
        rebuilds.insert(projection.name().to_owned(), rated(rate));
        writeln!(
            out,
            "| rebuild `{}` | {rate:.0} | {:.2}× | {:.2}× |",
            projection.name(),
            rate / copy_rate,
            rate / reader_rate
        )?;
    }
    let rate = events as f64 / sequential.as_secs_f64();
    rebuilds.insert("all_one_after_another".to_owned(), rated(rate));
    writeln!(
        out,
        "| rebuild all five, one after another | {rate:.0} | {:.2}× | {:.2}× |",
        rate / copy_rate,
        rate / reader_rate
    )?;
    let started = Instant::now();
    let all = projections::all();
    let refs: Vec<&dyn projections::Projection> = all.iter().map(|p| p.as_ref()).collect();
    rebuild_many(&store, &refs, &rebuild_options, &|_, _| {}).await?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    eprintln!("rebuild all, one shared read: {rate:.0} events/s");
    rebuilds.insert("all_one_shared_read".to_owned(), rated(rate));
    writeln!(
        out,
        "| **rebuild all five, one shared read** (`projections rebuild --all`) | {rate:.0} | {:.2}× | {:.2}× |",
        rate / copy_rate,
        rate / reader_rate
    )?;

    let lag = measure_lag(server, server_url, database, &pool, options).await?;
    writeln!(out)?;
    writeln!(
        out,
        "Commit-to-visible lag at {} events/s for {} s ({} events), ms:\n",
        options.lag_rate, options.lag_seconds, lag.appended
    )?;
    writeln!(out, "| Reader | p50 | p99 | max |\n|---|---:|---:|---:|")?;
    let mut lags = serde_json::Map::new();
    for (key, label, samples) in [
        (
            "subscription",
            "no-skip subscription (baseline, no apply)",
            &lag.subscription,
        ),
        ("search", "search projection", &lag.search),
        ("availability", "availability projection", &lag.availability),
    ] {
        let mut sorted = samples.clone();
        sorted.sort_unstable();
        let millis = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1_000.0);
        lags.insert(
            key.to_owned(),
            serde_json::json!({ "p50": millis(percentile(&sorted, 50.0)),
                                "p99": millis(percentile(&sorted, 99.0)),
                                "max": millis(sorted.last().copied()) }),
        );
        writeln!(
            out,
            "| {label} | {} | {} | {} |",
            ms(percentile(&sorted, 50.0)),
            ms(percentile(&sorted, 99.0)),
            ms(sorted.last().copied())
        )?;
    }
    writeln!(
        out,
        "\nAchieved append rate: {:.0} events/s.",
        lag.achieved_rate
    )?;
    let figures = serde_json::json!({
        "projections": {
            "events": events,
            "read": { "copy_events_per_s": copy_rate, "reader_events_per_s": reader_rate,
                      "ratio_reader_copy": reader_rate / copy_rate },
            "rebuild": rebuilds,
            "lag_ms": lags,
            "lag_rate": { "asked_events_per_s": options.lag_rate,
                          "achieved_events_per_s": lag.achieved_rate },
        }
    });
    Ok((out, figures))
}

async fn copy_read(pool: &PgPool, events: u64) -> Result<f64> {
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut stream = conn
        .copy_out_raw(
            "COPY (SELECT global_position, transaction_id, event_id, aggregate_type, aggregate_id, \
               version, event_type, event_version, payload, metadata, recorded_at, hash \
             FROM events ORDER BY transaction_id, global_position) TO STDOUT",
        )
        .await?;
    let mut bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        bytes += chunk?.len();
    }
    let took = started.elapsed();
    anyhow::ensure!(bytes > 0, "COPY returned nothing");
    Ok(events as f64 / took.as_secs_f64())
}

async fn reader_read(store: &EventStore, batch: i64) -> Result<f64> {
    let started = Instant::now();
    let mut checkpoint = Checkpoint::START;
    let mut n = 0u64;
    loop {
        let events = store.read_all(checkpoint, batch).await?;
        let Some(last) = events.last() else { break };
        checkpoint = last.checkpoint();
        n += events.len() as u64;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

struct Lag {
    appended: usize,
    achieved_rate: f64,
    subscription: Vec<Duration>,
    search: Vec<Duration>,
    availability: Vec<Duration>,
}

async fn measure_lag(
    server: &PgConnectOptions,
    server_url: Option<&str>,
    database: &str,
    pool: &PgPool,
    options: &ProjectionBenchOptions,
) -> Result<Lag> {
    // Cars to reserve, registered (and projected) before the clock starts.
    let per_tick = (options.lag_rate / 100).max(1) as usize;
    let cars: Vec<Uuid> = (0..per_tick).map(|_| Uuid::now_v7()).collect();
    let store = EventStore::new(pool.clone());
    let metadata = EventMetadata::for_actor("system:bench");
    let registrations: Vec<StreamAppend> = cars
        .iter()
        .map(|car| {
            let event = CarEvent::CarRegistered {
                id: *car,
                details: domain::car::CarDetails {
                    make: "Bench".into(),
                    model: "Car".into(),
                    year: 2026,
                    class: domain::car::CarClass::Compact,
                    seats: 5,
                    transmission: domain::car::Transmission::Manual,
                    fuel: domain::car::FuelType::Petrol,
                    features: vec![],
                },
                daily_rate: Money::new(5_000, Currency::EUR),
                branch: "BER".into(),
                in_service_from: None,
            };
            Ok(StreamAppend::new(
                StreamId::new("car", car.to_string()),
                ExpectedVersion::NoStream,
                vec![commands::codec::encode(&event)?],
            ))
        })
        .collect::<Result<_>>()?;
    store.append(&registrations, &metadata).await?;

    let url = database_url(server, server_url, database);
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["project", "--only", "search", "--only", "availability"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .env("FLEETLEDGER_PROJECTOR_POLL_MS", "500")
        .kill_on_drop(true)
        .spawn()
        .context("starting the projector process")?;
    // Wait until both have caught up with the whole history.
    let head = store.committed_head().await?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let cps = checkpoints(pool).await?;
        if cps.len() == 2 && cps.iter().all(|(_, c)| *c >= head) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "projectors did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The baseline subscriber: its own store and pool, so only NOTIFY or polling wakes it.
    let sub_pool = open_pool(server, database, 2, true, "fleetledger-bench-sub").await?;
    let sub_store = EventStore::new(sub_pool);
    let sub_seen: Arc<Mutex<Vec<(Checkpoint, Instant)>>> = Arc::default();
    let sub_task = {
        let seen = sub_seen.clone();
        let mut subscription = sub_store.subscribe(sub_store.visible_head().await?);
        tokio::spawn(async move {
            while let Ok(event) = subscription.next().await {
                seen.lock().await.push((event.checkpoint(), Instant::now()));
            }
        })
    };
    // The poller: when each projection's checkpoint passes each appended event.
    let poll_stop = tokio_util::sync::CancellationToken::new();
    let poll_task = {
        let pool = pool.clone();
        let stop = poll_stop.clone();
        tokio::spawn(async move {
            let mut seen: [Vec<(Checkpoint, Instant)>; 2] = [Vec::new(), Vec::new()];
            let mut last = [Checkpoint::START; 2];
            while !stop.is_cancelled() {
                if let Ok(cps) = checkpoints(&pool).await {
                    let now = Instant::now();
                    for (name, cp) in cps {
                        let i = usize::from(name == "search");
                        if cp > last[i] {
                            last[i] = cp;
                            seen[i].push((cp, now));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen
        })
    };

    // The writer: `per_tick` reservations every 10 ms, each car's windows one after another.
    let appended: Arc<Mutex<Vec<(Checkpoint, Instant)>>> = Arc::default();
    let start = Utc::now() + chrono::Duration::days(400);
    let ticks = options.lag_seconds * 100;
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let began = Instant::now();
    let mut heads = std::collections::HashMap::new();
    for tick in 0..ticks {
        interval.tick().await;
        let from = start + chrono::Duration::hours(i64::try_from(tick).unwrap_or(0) * 2);
        let window = TimeWindow::new(from, from + chrono::Duration::hours(1))?;
        let appends: Vec<StreamAppend> = cars
            .iter()
            .map(|car| {
                let event = CarEvent::CarReserved {
                    booking_id: Uuid::now_v7(),
                    window,
                    at: Utc::now(),
                    turnaround_minutes: 60,
                };
                let stream = StreamId::new("car", car.to_string());
                let events = vec![commands::codec::encode(&event)?];
                Ok(match heads.get(car) {
                    Some(head) => StreamAppend::after(stream, *head, events),
                    None => StreamAppend::new(stream, ExpectedVersion::Any, events),
                })
            })
            .collect::<Result<_>>()?;
        let written = store.append(&appends, &metadata).await?;
        let now = Instant::now();
        let mut log = appended.lock().await;
        for event in &written {
            if let (Ok(car), Some(head)) = (event.aggregate_id.parse::<Uuid>(), event.head()) {
                heads.insert(car, head);
            }
            log.push((event.checkpoint(), now));
        }
    }
    let elapsed = began.elapsed();
    // Let everything arrive, then stop.
    let last = appended.lock().await.last().map(|(c, _)| *c);
    if let Some(last) = last {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let cps = checkpoints(pool).await?;
            let sub_done = sub_seen
                .lock()
                .await
                .last()
                .is_some_and(|(c, _)| *c >= last);
            if sub_done && cps.iter().all(|(_, c)| *c >= last) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    poll_stop.cancel();
    let seen = poll_task.await?;
    sub_task.abort();
    let _ = child.kill().await;

    let appended = appended.lock().await.clone();
    let lag_of = |seen: &[(Checkpoint, Instant)]| -> Vec<Duration> {
        appended
            .iter()
            .filter_map(|(cp, at)| {
                let i = seen.partition_point(|(c, _)| c < cp);
                seen.get(i).map(|(_, t)| t.saturating_duration_since(*at))
            })
            .collect()
    };
    let sub_seen = sub_seen.lock().await.clone();
    Ok(Lag {
        appended: appended.len(),
        achieved_rate: appended.len() as f64 / elapsed.as_secs_f64(),
        subscription: lag_of(&sub_seen),
        search: lag_of(&seen[1]),
        availability: lag_of(&seen[0]),
    })
}

async fn checkpoints(pool: &PgPool) -> Result<Vec<(String, Checkpoint)>> {
    let rows = sqlx::query(
        "SELECT name, transaction_id, global_position FROM projection_checkpoints \
         WHERE name IN ('search', 'availability')",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok((
                row.try_get(0)?,
                Checkpoint {
                    transaction_id: row.try_get::<eventstore::Xid8, _>(1)?.0,
                    global_position: row.try_get(2)?,
                },
            ))
        })
        .collect()
}

/// A URL for the child process: the server's URL with the bench database in its path.
pub fn database_url(server: &PgConnectOptions, server_url: Option<&str>, database: &str) -> String {
    if let Some(url) = server_url {
        let (base, query) = url
            .split_once('?')
            .map_or((url, None), |(b, q)| (b, Some(q)));
        let authority_end = base
            .find("://")
            .map(|i| i + 3)
            .and_then(|start| base[start..].find('/').map(|j| start + j))
            .unwrap_or(base.len());
        let mut out = format!("{}/{database}", &base[..authority_end]);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        return out;
    }
    format!(
        "postgres://{}@/{}?host={}&port={}",
        server.get_username(),
        database,
        server.get_host(),
        server.get_port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_url_names_the_bench_database() {
        let server = PgConnectOptions::new();
        assert_eq!(
            database_url(
                &server,
                Some("postgres://u:p@h:5432/postgres?sslmode=disable"),
                "b"
            ),
            "postgres://u:p@h:5432/b?sslmode=disable"
        );
        assert_eq!(
            database_url(&server, Some("postgres://u@h"), "b"),
            "postgres://u@h/b"
        );
    }
}
