//! `fleetledger bench relay`: events/s relayed end to end, beside a bare producer's rate for the
//! same messages on the same broker, in one run.
//!
//! 1. A fresh database (`flbench_relay_*`, dropped at the end) gets a seeded history
//!    (`fleetledger seed`'s realistic mix of car, booking, payment and telemetry events).
//! 2. Every event is encoded as the relay would (CloudEvents JSON, key, header), untimed.
//! 3. **Raw produce**: one producer with the relay's exact settings (idempotent, `acks=all`),
//!    warmed up by one untimed message per topic, enqueues every message at once and awaits
//!    every acknowledgement: the broker's ceiling for these messages from one client.
//! 4. **Relay**: the `relay.bench` projector (lease, no-skip reader in batches of `--batch`,
//!    CloudEvents encoding, produce, await acks, checkpoint per batch) from position zero until
//!    its checkpoint reaches the log's head; the time includes taking the lease and creating
//!    the topics.
//!
//! Each phase writes to topics of its own (`flbench-<phase>-<run>.*`). With `--rounds R` the
//! two phases alternate R times (raw first in odd rounds, relay first in even ones) and the
//! median rates are reported.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use chrono::Utc;
use eventstore::{Checkpoint, EventStore, RecordedEvent};
use projections::runtime::{RunOptions, load_checkpoint};
use rand::Rng;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use relay::RelayConfig;
use relay::cloudevents::{CONTENT_TYPE, encode};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::bench::{drop_databases, open_pool, quote_ident};
use fleetledger_app::seed::{SeedOptions, seed};

#[derive(clap::Args, Debug, Clone)]
pub struct RelayBenchOptions {
    /// Cars in the seeded history.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    cars: u32,
    /// Bookings in the seeded history (about nine events each).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(1..))]
    bookings: u32,
    /// Events the relay reads and delivers per batch (one checkpoint write per batch).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(i64).range(1..))]
    batch: i64,
    /// Runs of each phase; the median rate is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Random seed of the history.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Also write the markdown report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print one JSON object (the rates, every round's, and the ratio) instead of the markdown
    /// report.
    #[arg(long)]
    json: bool,
}

struct Message {
    key: String,
    topic_suffix: String,
    value: Vec<u8>,
}

pub async fn run(
    server: PgConnectOptions,
    kafka: Option<RelayConfig>,
    options: RelayBenchOptions,
) -> Result<()> {
    let kafka = kafka.ok_or_else(|| anyhow!("{}", fleetledger_app::relay::OFF))?;
    let mut admin =
        PgConnection::connect_with(&server.clone().application_name("fleetledger-bench"))
            .await
            .context("connecting to PostgreSQL")?;
    let name = format!("flbench_relay_{:08x}", rand::rng().random::<u32>());
    let mut created = Vec::new();
    let outcome = {
        let work = measure(&mut admin, &server, &name, &mut created, &kafka, &options);
        tokio::select! {
            result = work => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    };
    let cleanup = drop_databases(&mut admin, &created).await;
    let _ = admin.close().await;
    let (report, figures) = outcome?;
    cleanup?;
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
    admin: &mut PgConnection,
    server: &PgConnectOptions,
    name: &str,
    created: &mut Vec<String>,
    kafka: &RelayConfig,
    options: &RelayBenchOptions,
) -> Result<(String, serde_json::Value)> {
    sqlx::raw_sql(&format!("CREATE DATABASE {}", quote_ident(name)))
        .execute(&mut *admin)
        .await
        .with_context(|| format!("creating database {name}"))?;
    created.push(name.to_owned());
    let pool = open_pool(server, name, 10, true, "fleetledger-bench-relay").await?;
    eventstore::MIGRATOR.run(&pool).await.context("migrating")?;
    let seeded = seed(
        &pool,
        &SeedOptions {
            cars: options.cars,
            customers: 50,
            bookings: options.bookings,
            readings_per_rental: 4,
            days: 90,
            seed: Some(options.seed),
            chunk: 2_000,
            branches: 4,
        },
    )
    .await?;
    let store = EventStore::new(pool.clone());
    let head = store.committed_head().await?;
    let events = read_everything(&store, head).await?;
    let messages: Vec<Message> = events
        .iter()
        .map(|e| {
            Ok(Message {
                key: e.aggregate_id.clone(),
                topic_suffix: e.aggregate_type.clone(),
                value: encode(e, &kafka.source)?,
            })
        })
        .collect::<Result<_, serde_json::Error>>()?;
    let bytes: usize = messages.iter().map(|m| m.value.len()).sum();
    eprintln!(
        "seeded {} events ({} bookings); average message {} bytes",
        messages.len(),
        seeded.bookings,
        bytes / messages.len().max(1)
    );

    let run_id = format!("{:08x}", rand::rng().random::<u32>());
    let mut raw_rates = Vec::new();
    let mut relay_rates = Vec::new();
    for round in 0..options.rounds {
        let raw_first = round % 2 == 0;
        for phase in [raw_first, !raw_first] {
            let mut config = kafka.clone();
            if phase {
                config.topic_prefix = format!("flbench-raw-{run_id}-{round}");
                let elapsed = raw_produce(&config, &messages).await?;
                let rate = messages.len() as f64 / elapsed.as_secs_f64();
                eprintln!("round {round}: raw produce {rate:.0} events/s");
                raw_rates.push(rate);
            } else {
                config.topic_prefix = format!("flbench-relay-{run_id}-{round}");
                config.name = format!("relay.bench.{round}");
                config.batch_size = options.batch;
                let elapsed = relay_all(&store, &config, head).await?;
                let rate = messages.len() as f64 / elapsed.as_secs_f64();
                eprintln!("round {round}: relay {rate:.0} events/s");
                relay_rates.push(rate);
            }
        }
    }
    pool.close().await;
    let raw = median(&mut raw_rates);
    let relayed = median(&mut relay_rates);
    let mut report = String::new();
    let _ = writeln!(
        report,
        "| events | avg message | relay batch | rounds | relay end to end | raw produce (same messages, same producer settings) | relay / raw |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|");
    let _ = writeln!(
        report,
        "| {} | {} B | {} | {} | {:.0} events/s | {:.0} events/s | {:.2} |",
        messages.len(),
        bytes / messages.len().max(1),
        options.batch,
        options.rounds,
        relayed,
        raw,
        relayed / raw
    );
    let _ = writeln!(
        report,
        "\nAll rates: relay {relay_rates:.0?}, raw {raw_rates:.0?} (events/s). Measured {}.",
        Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let figures = serde_json::json!({
        "relay": {
            "events": messages.len(),
            "average_message_bytes": bytes / messages.len().max(1),
            "batch": options.batch,
            "ours_events_per_s": relayed,
            "raw_produce_events_per_s": raw,
            "ratio_raw": relayed / raw,
            "rounds": { "ours": relay_rates, "raw": raw_rates },
        }
    });
    Ok((report, figures))
}

async fn read_everything(store: &EventStore, head: Checkpoint) -> Result<Vec<RecordedEvent>> {
    let mut events = Vec::new();
    let mut after = Checkpoint::START;
    let deadline = Instant::now() + Duration::from_secs(120);
    while after < head {
        let batch = store.read_all(after, 5_000).await?;
        match batch.last() {
            Some(last) => after = last.checkpoint(),
            None if Instant::now() > deadline => {
                anyhow::bail!("the log stays behind its committed head (a long transaction?)")
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
        events.extend(batch);
    }
    Ok(events)
}

/// Enqueue every message, await every acknowledgement.
async fn raw_produce(config: &RelayConfig, messages: &[Message]) -> Result<Duration> {
    relay::topics::ensure_topics(config).await?;
    let producer = relay::sink::producer(config)?;
    let topics: Vec<(String, String)> = relay::AGGREGATE_TYPES
        .iter()
        .map(|t| (t.to_string(), format!("{}.{t}", config.topic_prefix)))
        .collect();
    // Untimed: connect, get a producer id and every topic's metadata, as the relay has done by
    // the time it produces its second batch.
    let warm_up: Vec<_> = topics
        .iter()
        .map(|(_, topic)| {
            producer.send(
                FutureRecord::<str, [u8]>::to(topic)
                    .key("warm-up")
                    .payload(b"{}"),
                Duration::from_secs(30),
            )
        })
        .collect();
    for result in futures::future::join_all(warm_up).await {
        result.map_err(|(e, _)| anyhow!("warm-up message: {e}"))?;
    }
    let started = Instant::now();
    let mut pending = Vec::with_capacity(messages.len());
    for m in messages {
        let topic = topics
            .iter()
            .find(|(t, _)| *t == m.topic_suffix)
            .map(|(_, name)| name.as_str())
            .ok_or_else(|| anyhow!("no topic for {}", m.topic_suffix))?;
        loop {
            let record = FutureRecord::to(topic)
                .key(m.key.as_str())
                .payload(m.value.as_slice())
                .headers(OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some(CONTENT_TYPE),
                }));
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    for result in futures::future::join_all(pending).await {
        match result {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(anyhow!("raw produce failed: {e}")),
            Err(_) => return Err(anyhow!("raw produce: message dropped")),
        }
    }
    Ok(started.elapsed())
}

/// Run the relay projector from the start until its checkpoint reaches `head`.
async fn relay_all(store: &EventStore, config: &RelayConfig, head: Checkpoint) -> Result<Duration> {
    let options = RunOptions {
        poll_interval: Duration::from_millis(100),
        ..RunOptions::default()
    };
    let token = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(
        relay::projector(store.clone(), config.clone(), options)?
            .run_until_cancelled(token.clone()),
    );
    let deadline = started + Duration::from_secs(600);
    loop {
        if load_checkpoint(store.pool(), &config.name).await? >= head {
            break;
        }
        if task.is_finished() || Instant::now() > deadline {
            token.cancel();
            return Err(anyhow!(
                "the relay stopped or stalled before reaching the head"
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    token.cancel();
    task.await.context("relay task")?.context("relay")?;
    Ok(elapsed)
}

fn median(rates: &mut [f64]) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or(0.0)
}
