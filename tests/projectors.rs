//! Projector processes end to end: kill -9 mid-batch and restart, standby takeover, the CLI.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use eventstore::testing::TestDatabase;

fn fleetledger(db: &TestDatabase) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetledger"));
    cmd.env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct Process(Child);

impl Process {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn start_projectors(db: &TestDatabase, args: &[&str], batch: &str) -> Process {
    let child = fleetledger(db)
        .arg("project")
        .args(args)
        .env("FLEETLEDGER_PROJECTOR_BATCH", batch)
        .env("FLEETLEDGER_PROJECTOR_POLL_MS", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fleetledger project");
    Process(child)
}

fn run(db: &TestDatabase, args: &[&str]) -> Output {
    fleetledger(db)
        .args(args)
        .output()
        .expect("run fleetledger")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn all_caught_up(db: &TestDatabase, names: &[&str]) -> bool {
    let statuses = projections::status::list(&db.pool).await.unwrap();
    names.iter().all(|name| {
        statuses
            .iter()
            .any(|s| s.name == *name && s.lag_events == 0 && s.state == "running")
    })
}

#[tokio::test]
async fn kill_9_mid_batch_then_restart_equals_a_rebuild() {
    let db = TestDatabase::create().await;
    let seeded = run(
        &db,
        &[
            "seed",
            "--cars",
            "120",
            "--bookings",
            "1800",
            "--seed",
            "42",
        ],
    );
    assert!(seeded.status.success(), "{}", text(&seeded));
    let head = db.store().committed_head().await.unwrap();
    assert!(head.global_position > 10_000, "{head}");

    // Large batches, so the kill lands inside a projector's transaction.
    let mut first = start_projectors(&db, &[], "2500");
    eventually(120, "some progress", || async {
        let statuses = projections::status::list(&db.pool).await.unwrap();
        statuses
            .iter()
            .any(|s| s.position > 0 && s.position < head.global_position)
    })
    .await;
    first.kill9();
    let after_kill = projections::status::list(&db.pool).await.unwrap();
    assert!(
        after_kill.iter().any(|s| s.position < head.global_position),
        "the kill came after everything was applied; the test proves nothing: {after_kill:?}"
    );

    let _second = start_projectors(&db, &[], "2500");
    let all = projections::names();
    eventually(240, "all projections caught up after the restart", || {
        all_caught_up(&db, &all)
    })
    .await;

    // Exact counters: each event applied exactly once.
    let held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'BookingHeld'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let created: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(bookings_created), 0)::bigint FROM rm_daily_metrics",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(created, held);
    let timeline_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type IN ('booking', 'payment') \
           OR event_type IN ('CarReserved', 'ReservationChanged', 'ReservationReleased', \
                             'CarPickedUp', 'CarReturned')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let timeline: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_booking_timeline")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(timeline, timeline_events);

    // And every read model equals a fresh rebuild (all five from one read of the log).
    let out = run(
        &db,
        &["projections", "rebuild", "--all", "--verify", "--dry-run"],
    );
    assert!(out.status.success(), "{}", text(&out));
    for name in &all {
        assert!(
            text(&out).contains(&format!("verify {name}: no difference")),
            "{name}: {}",
            text(&out)
        );
    }

    // A hand-edited row is reported (exit code 3), and a rebuild repairs it.
    sqlx::query(
        "UPDATE rm_bookings SET total_minor = total_minor + 1 \
         WHERE booking_id = (SELECT booking_id FROM rm_bookings LIMIT 1)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let out = run(
        &db,
        &["projections", "rebuild", "history", "--verify", "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains(
            "DIFFERENCE in rm_bookings: 1 row(s) only in the rebuild, 1 only in the live table"
        ),
        "{}",
        text(&out)
    );
    let out = run(&db, &["projections", "rebuild", "history"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(
        &db,
        &["projections", "rebuild", "history", "--verify", "--dry-run"],
    );
    assert!(out.status.success(), "{}", text(&out));

    let status = run(&db, &["projections", "status"]);
    assert!(status.status.success(), "{}", text(&status));
    for name in &all {
        assert!(text(&status).contains(name), "{}", text(&status));
    }
}

#[tokio::test]
async fn a_standby_process_takes_over_when_the_active_one_is_killed() {
    let db = TestDatabase::create().await;
    let seeded = run(
        &db,
        &["seed", "--cars", "5", "--bookings", "20", "--seed", "1"],
    );
    assert!(seeded.status.success(), "{}", text(&seeded));

    let mut active = start_projectors(&db, &["--only", "search"], "100");
    let active_pid = active.pid();
    let owner_is = |pid: u32| {
        let pool = db.pool.clone();
        async move {
            projections::status::list(&pool)
                .await
                .unwrap()
                .iter()
                .any(|s| {
                    s.name == "search"
                        && s.state == "running"
                        && s.owner
                            .as_deref()
                            .is_some_and(|o| o.ends_with(&format!(":{pid}")))
                })
        }
    };
    eventually(60, "the first process runs search", || owner_is(active_pid)).await;
    let standby = start_projectors(&db, &["--only", "search"], "100");
    let standby_pid = standby.pid();
    // The standby stays a standby while the active one lives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        owner_is(active_pid).await,
        "the active instance kept the lease"
    );

    active.kill9();
    let more = run(
        &db,
        &["seed", "--cars", "3", "--bookings", "6", "--seed", "2"],
    );
    assert!(more.status.success(), "{}", text(&more));
    eventually(30, "the standby took over and caught up", || async {
        owner_is(standby_pid).await && all_caught_up(&db, &["search"]).await
    })
    .await;
    let cars: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_search_cars")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(cars, 8);
}

#[test]
fn unknown_projection_names_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetledger"))
        .args(["project", "--only", "nope"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no projection called \"nope\""),
        "{}",
        text(&out)
    );
}
