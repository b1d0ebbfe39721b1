//! Auditors' commands: verify, anchor, export, verify-export, replay.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use commands::history::{AsOf, state_at};
use eventstore::audit::{self, AnchorRef, AuditReport, ExportFilter};
use eventstore::{EventStore, StreamId};
use fleetledger_app::progress::Progress;

use fleetledger_app::Config;
use fleetledger_app::db;

#[derive(clap::Args, Debug)]
pub(crate) struct VerifyArgs {
    /// One stream, as TYPE/ID (e.g. car/0193…).
    #[arg(long, value_name = "TYPE/ID", conflicts_with = "all")]
    stream: Option<String>,
    /// Every stream (the default).
    #[arg(long)]
    all: bool,
    /// Also check that nothing before this anchor changed: TX:POS:DIGEST, a digest or a position.
    #[arg(long, value_name = "ANCHOR")]
    against_anchor: Option<AnchorRef>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ExportArgs {
    #[arg(long)]
    from_position: Option<i64>,
    #[arg(long)]
    to_position: Option<i64>,
    #[arg(long, value_name = "TYPE/ID")]
    stream: Option<String>,
    /// Output file (JSON Lines).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ReplayArgs {
    /// The stream, as TYPE/ID.
    stream: String,
    #[arg(long, conflicts_with = "as_of")]
    at_version: Option<i64>,
    /// An RFC 3339 instant, e.g. 2026-11-22T10:00:00Z.
    #[arg(long)]
    as_of: Option<DateTime<Utc>>,
}

fn parse_stream(s: &str) -> Result<StreamId> {
    let (kind, id) = s
        .split_once('/')
        .filter(|(k, i)| !k.is_empty() && !i.is_empty())
        .with_context(|| format!("{s:?}: a stream is TYPE/ID, e.g. car/0193…"))?;
    Ok(StreamId::new(kind, id))
}

async fn open_store(config: &Config, role: &str) -> Result<EventStore> {
    Ok(commands::upcasters::event_store(
        db::connect_and_migrate(config, role).await?,
    ))
}

fn progress(len: u64, what: &str) -> Progress {
    Progress::new(what, "events", len)
}

fn print_report(report: &AuditReport) {
    for broken in &report.broken {
        println!(
            "BROKEN {}: first broken version {}: {}",
            broken.stream,
            broken.first_broken_version.unwrap_or_default(),
            broken.detail.as_deref().unwrap_or("")
        );
    }
    for problem in &report.global {
        println!("BROKEN log: {problem}");
    }
    for (stream, start) in &report.excerpts {
        println!(
            "note: {stream} starts at version {start} in this file; its first event is taken as given"
        );
    }
    println!(
        "{} streams, {} events verified, {} broken{}",
        report.streams,
        report.events,
        report.broken.len(),
        if report.global.is_empty() {
            ""
        } else {
            ", log sequence broken"
        }
    );
}

pub(crate) async fn verify(config: &Config, args: VerifyArgs) -> Result<ExitCode> {
    let store = open_store(config, "fleetledger-verify").await?;
    let report = match &args.stream {
        Some(s) => {
            let result = store.verify_stream(&parse_stream(s)?).await?;
            let mut report = AuditReport {
                streams: 1,
                events: result.events,
                ..AuditReport::default()
            };
            if !result.is_valid() {
                report.broken.push(result);
            }
            report
        }
        None => {
            let bar = progress(audit::count_events(&store).await?, "verifying");
            let report = audit::verify_all(&store, |n| bar.set_position(n)).await?;
            bar.finish();
            report
        }
    };
    print_report(&report);
    let mut intact = report.is_intact();
    if let Some(anchor) = &args.against_anchor {
        let bar = progress(audit::count_events(&store).await?, "checking the anchor");
        let check = audit::check_anchor(&store, anchor, |n| bar.set_position(n)).await?;
        bar.finish();
        if check.matches() {
            println!(
                "anchor {} matches: nothing before it was changed, removed or inserted",
                hex::encode(check.expected)
            );
        } else {
            intact = false;
            if check.expected == check.recomputed {
                println!(
                    "BROKEN anchor: the digest {} matches the stored heads, but {} chain(s) \
                     before it do not recompute from their events",
                    hex::encode(check.expected),
                    check.broken_chains.len()
                );
            } else {
                println!(
                    "BROKEN anchor: expected {}, recomputed {}",
                    hex::encode(check.expected),
                    hex::encode(check.recomputed)
                );
            }
            for stream in &check.changed_streams {
                println!("BROKEN anchor: {stream}");
            }
            for chain in &check.broken_chains {
                println!(
                    "BROKEN anchor: {} does not recompute from version {}: {}",
                    chain.stream,
                    chain.first_broken_version.unwrap_or(0),
                    chain.detail.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(crate) async fn anchor(config: &Config) -> Result<ExitCode> {
    let store = open_store(config, "fleetledger-anchor").await?;
    let anchor = audit::take_anchor(&store, std::time::Duration::from_secs(60)).await?;
    eprintln!(
        "anchor over {} streams, {} events, at position {} (keep this line somewhere else):",
        anchor.streams, anchor.events, anchor.checkpoint.global_position
    );
    println!("{}", anchor.token());
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn export(config: &Config, args: ExportArgs) -> Result<ExitCode> {
    let store = open_store(config, "fleetledger-export").await?;
    let filter = ExportFilter {
        from_position: args.from_position,
        to_position: args.to_position,
        stream: args.stream.as_deref().map(parse_stream).transpose()?,
    };
    let file = File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut out = BufWriter::new(file);
    let bar = progress(audit::count_events(&store).await?, "exporting");
    let written = audit::export(&store, &filter, &mut out, |n| bar.set_position(n)).await?;
    bar.finish();
    eprintln!("{written} events written to {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn verify_export(path: &Path) -> Result<ExitCode> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let report = audit::verify_export(BufReader::new(file)).map_err(anyhow::Error::msg)?;
    print_report(&report);
    Ok(if report.is_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(crate) async fn replay(config: &Config, args: ReplayArgs) -> Result<ExitCode> {
    let store = open_store(config, "fleetledger-replay").await?;
    let stream = parse_stream(&args.stream)?;
    let as_of = match (args.at_version, args.as_of) {
        (Some(v), _) => AsOf::Version(v),
        (None, Some(t)) => AsOf::Instant(t),
        (None, None) => AsOf::Latest,
    };
    match state_at(&store, &stream, as_of).await? {
        Some(state) => {
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("{stream} has no events");
            Ok(ExitCode::from(1))
        }
    }
}
