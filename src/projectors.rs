//! Running projectors (`project`, in-process in `serve`) and operating them (`projections`).

use std::process::ExitCode;

use anyhow::{Result, bail};
use eventstore::EventStore;
use fleetledger_app::progress::Progress;
use fleetledger_app::projectors::{run_options, select, spawn};
use projections::rebuild::{RebuildOptions, rebuild_many};
use tokio_util::sync::CancellationToken;

use fleetledger_app::Config;

#[derive(clap::Args, Debug)]
pub(crate) struct ProjectArgs {
    /// Run only these projections (repeatable); default: all of them.
    #[arg(long = "only", value_name = "NAME")]
    only: Vec<String>,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum ProjectionsCommand {
    /// Print every projection's state, position and lag.
    Status,
    /// Rebuild projections from position zero into fresh tables, then swap them in (several
    /// at once share one read of the log). A live projector that had failed carries on from the
    /// rebuilt position by itself.
    Rebuild(RebuildArgs),
    /// Tell a failed projection to carry on from its checkpoint (once the cause is fixed: a new
    /// version deployed, an upcaster added): the running instance that holds it takes it up
    /// within a second, no restart. Exit status 3 when it had not failed.
    #[command(after_help = "Example:\n  fleetledger projections resume history")]
    Resume {
        /// The projection (see `projections status`).
        name: String,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct RebuildArgs {
    /// The projections to rebuild (see `projections status`).
    #[arg(required_unless_present = "all")]
    names: Vec<String>,
    /// Rebuild every projection.
    #[arg(long, conflicts_with = "names")]
    all: bool,
    /// Compare the rebuilt tables with the live ones and print every difference (exit code 3
    /// when there is one).
    #[arg(long)]
    verify: bool,
    /// Build (and verify) but keep the live tables.
    #[arg(long)]
    dry_run: bool,
    /// Events applied per transaction.
    #[arg(long, default_value_t = 5_000)]
    batch_size: i64,
}

/// `fleetledger project`: projectors as a process of their own, until SIGTERM.
pub(crate) async fn project(config: Config, args: ProjectArgs) -> Result<ExitCode> {
    select(&args.only)?;
    let shutdown = fleetledger_app::shutdown_signal();
    let pool = fleetledger_app::db::connect_and_migrate(&config, "fleetledger-project").await?;
    let store = commands::upcasters::event_store(pool);
    let token = CancellationToken::new();
    let mut tasks = spawn(&store, &args.only, &run_options(&config), &token)?;
    tracing::info!(projections = ?args.only, "projectors running");
    let code = tokio::select! {
        () = shutdown => ExitCode::SUCCESS,
        _ = tasks.join_next() => {
            // A projector gives up only on what retrying cannot fix; let the supervisor see it.
            tracing::error!("a projector stopped for good; shutting down the others");
            ExitCode::FAILURE
        }
    };
    token.cancel();
    while tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(code)
}

/// `fleetledger projections ...`.
pub(crate) async fn projections(config: Config, command: ProjectionsCommand) -> Result<ExitCode> {
    let pool = fleetledger_app::db::connect_and_migrate(&config, "fleetledger-projections").await?;
    match command {
        ProjectionsCommand::Status => {
            let statuses = projections::status::list(&pool).await?;
            println!(
                "{:<14} {:<12} {:>12} {:>10} {:>12}  owner / error",
                "projection", "state", "position", "lag", "lag ms"
            );
            for s in statuses {
                let note = match (&s.error, s.failed_position) {
                    (Some(e), Some(at)) => format!("failed at position {at}: {e}"),
                    (Some(e), None) => e.clone(),
                    _ => s.owner.clone().unwrap_or_default(),
                };
                println!(
                    "{:<14} {:<12} {:>12} {:>10} {:>12.0}  {}",
                    s.name, s.state, s.position, s.lag_events, s.lag_ms, note
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ProjectionsCommand::Rebuild(args) => {
            rebuild_command(commands::upcasters::event_store(pool), args).await
        }
        ProjectionsCommand::Resume { name } => {
            select(std::slice::from_ref(&name))?;
            if projections::status::request_resume(&pool, &name).await? {
                println!(
                    "{name}: asked to resume; the instance holding it carries on from its checkpoint"
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{name}: not failed; nothing to resume");
                Ok(ExitCode::from(3))
            }
        }
    }
}

async fn rebuild_command(store: EventStore, args: RebuildArgs) -> Result<ExitCode> {
    let chosen = if args.all {
        projections::all()
    } else {
        select(&args.names)?
    };
    if args.batch_size < 1 {
        bail!("--batch-size must be at least 1");
    }
    let names: Vec<&str> = chosen.iter().map(|p| p.name()).collect();
    let bar = Progress::new(format!("rebuilding {}", names.join(", ")), "events", 0);
    let progress = |done: u64, total: u64| {
        bar.set_total(total);
        bar.set_position(done);
    };
    let options = RebuildOptions {
        batch_size: args.batch_size,
        verify: args.verify,
        swap: !args.dry_run,
        ..RebuildOptions::default()
    };
    let started = std::time::Instant::now();
    let refs: Vec<&dyn projections::Projection> = chosen.iter().map(|p| p.as_ref()).collect();
    let reports = rebuild_many(&store, &refs, &options, &progress).await?;
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    let mut differ = false;
    for report in &reports {
        println!(
            "{}: {} events applied up to {} in {:.1}s ({:.0} events/s); {}",
            report.projection,
            report.events,
            report.checkpoint,
            secs,
            report.events as f64 / secs.max(1e-9),
            if report.swapped {
                "swapped in"
            } else {
                "live tables kept (dry run)"
            }
        );
        if !report.verified {
            continue;
        }
        if report.differences.is_empty() {
            println!(
                "verify {}: no difference between the rebuilt and the live tables",
                report.projection
            );
        }
        for diff in &report.differences {
            differ = true;
            println!(
                "verify {}: DIFFERENCE in {}: {} row(s) only in the rebuild, {} only in the live table",
                report.projection, diff.table, diff.only_rebuilt, diff.only_live
            );
            for row in &diff.only_rebuilt_sample {
                println!("  + rebuilt {row}");
            }
            for row in &diff.only_live_sample {
                println!("  - live    {row}");
            }
        }
    }
    Ok(if differ {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
