//! `fleetledger bench …`: each benchmark runs its subject beside a baseline on the same
//! machine in the same run and reports ratios (docs/benchmarks.md). A crate of its own so the
//! server's code carries none of it: the binary calls [`run`] when built with its `bench`
//! feature (the default).

#![expect(clippy::print_stdout, reason = "a benchmark's report goes to stdout")]

pub mod bench;
pub mod bench_hostile;
pub mod bench_projections;
pub mod bench_relay;
pub mod bench_search;

use anyhow::Result;
use fleetledger_app::{Config, db};

/// The benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Command append throughput: our executor vs cqrs-es + postgres-es vs a raw INSERT ceiling.
    Append(bench::AppendOptions),
    /// Projection rebuild rate vs the raw read rate; commit-to-visible lag under load.
    Projections(bench_projections::ProjectionBenchOptions),
    /// Relay throughput end to end vs a bare producer's rate for the same messages (KAFKA_BROKERS).
    Relay(bench_relay::RelayBenchOptions),
    /// What refusing the known attacks costs a running server, and /healthz's latency meanwhile
    /// beside its latency at rest (start the server with FLEETLEDGER_RATE_LIMIT=0).
    Hostile(bench_hostile::HostileBenchOptions),
    /// searchCars over HTTP at 2,000 and 20,000 cars, beside a trivial query and its own SQL.
    Search(bench_search::SearchBenchOptions),
}

/// Run one benchmark against the configured PostgreSQL server (each makes databases of its
/// own there and drops them).
pub async fn run(which: BenchCommand, config: &Config) -> Result<()> {
    let url = || config.database_url.as_ref().map(|u| u.expose().to_owned());
    match which {
        BenchCommand::Append(options) => {
            bench::append(
                db::connect_options(config).await?,
                config.executor.clone(),
                options,
            )
            .await
        }
        BenchCommand::Projections(options) => {
            bench_projections::run(db::connect_options(config).await?, url(), options).await
        }
        BenchCommand::Relay(options) => {
            bench_relay::run(
                db::connect_options(config).await?,
                config.kafka.clone(),
                options,
            )
            .await
        }
        BenchCommand::Search(options) => {
            bench_search::run(db::connect_options(config).await?, url(), options).await
        }
        BenchCommand::Hostile(options) => bench_hostile::run(options).await,
    }
}
