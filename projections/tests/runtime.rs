//! The runtime: late commits, poison events, rebuild and verify, one active instance.

mod common;

use std::time::Duration;

use common::*;
use domain::car::CarEvent;
use eventstore::testing::TestDatabase;
use eventstore::{Checkpoint, EventMetadata, ExpectedVersion, StreamAppend, StreamId};
use projections::rebuild::{RebuildOptions, rebuild};
use projections::{Projector, RuntimeError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn registered(id: Uuid, make: &str) -> CarEvent {
    CarEvent::CarRegistered {
        id,
        details: details(make, "X", &[]),
        daily_rate: eur(4_000),
        branch: "BER".into(),
        in_service_from: None,
    }
}

async fn status_of(db: &TestDatabase, name: &str) -> projections::ProjectionStatus {
    projections::status::list(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no status for {name}"))
}

/// Poll `check` until it holds or `secs` pass.
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_late_commit_is_applied_in_commit_order() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let search = projections::by_name("search").unwrap();
    let history = projections::by_name("history").unwrap();
    let token = CancellationToken::new();
    for p in [search.clone(), history.clone()] {
        let runner = Projector::postgres(store.clone(), p, options());
        tokio::spawn(runner.run_until_cancelled(token.clone()));
    }

    // Transaction A takes the earlier position and stays open.
    let early = Uuid::now_v7();
    let late = Uuid::now_v7();
    let mut a = db.pool.begin().await.unwrap();
    let first = store
        .append_in(
            &mut a,
            &[StreamAppend::new(
                StreamId::new("car", early.to_string()),
                ExpectedVersion::NoStream,
                vec![encode(&registered(early, "Early"))],
            )],
            &EventMetadata::for_actor("test"),
        )
        .await
        .unwrap();
    // Transaction B takes a later position and commits first.
    let second = append(&store, "car", late, vec![registered(late, "Late")]).await;
    assert!(first[0].global_position < second[0].global_position);

    // While A is open, nothing of B may be applied: applying it would move the checkpoint
    // past A's event, which would then be skipped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_search_cars")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        applied, 0,
        "B was applied while A, before it, was still open"
    );

    a.commit().await.unwrap();
    store.wake_subscribers();
    eventually(10, "both cars applied", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rm_search_cars")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            == 2
    })
    .await;
    let makes: Vec<String> =
        sqlx::query_scalar("SELECT make FROM rm_search_cars ORDER BY registered_at, make")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(makes.len(), 2);
    let status = status_of(&db, "search").await;
    assert_eq!(
        (status.transaction_id, status.position),
        (second[0].transaction_id, second[0].global_position),
        "the checkpoint ends at B, which committed last"
    );
    assert!(first[0].transaction_id < second[0].transaction_id);
    token.cancel();
}

#[tokio::test]
async fn a_poison_event_stops_only_its_projection_at_that_event() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let s = scripted_history(&store).await;
    // A payment event only the history projection reads, with a payload it cannot read.
    let poison = append_raw(
        &store,
        "payment",
        s.payment,
        "PaymentAuthorized",
        serde_json::json!({"gateway": 42}),
    )
    .await;
    let after = Uuid::now_v7();
    append(&store, "car", after, vec![registered(after, "After")]).await;

    let token = CancellationToken::new();
    for p in projections::all() {
        let runner = Projector::postgres(store.clone(), p, options());
        tokio::spawn(runner.run_until_cancelled(token.clone()));
    }
    eventually(15, "history fails, the others run", || async {
        let all = projections::status::list(&db.pool).await.unwrap();
        all.len() == 5
            && all.iter().all(|s| {
                if s.name == "history" {
                    s.state == "failed"
                } else {
                    s.state == "running" && s.lag_events == 0
                }
            })
    })
    .await;
    let history = status_of(&db, "history").await;
    assert_eq!(history.failed_position, Some(poison.global_position));
    assert!(
        history.position < poison.global_position,
        "checkpoint stays before it"
    );
    assert!(history.lag_events >= 2, "the poison and the event after it");
    assert!(
        history
            .error
            .as_deref()
            .unwrap_or("")
            .contains("PaymentAuthorized"),
        "{:?}",
        history.error
    );
    // Everything before the poison was applied; nothing after it.
    let timeline: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_booking_timeline")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(timeline > 0);
    let search: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_search_cars WHERE car_id = $1")
        .bind(after)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        search, 1,
        "search went past the poison, which is not its event"
    );

    // catch_up reports the same stop.
    token.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = Projector::postgres(
        store.clone(),
        projections::by_name("history").unwrap(),
        options(),
    )
    .catch_up()
    .await
    .unwrap_err();
    assert!(
        matches!(err, RuntimeError::Poisoned { position, .. } if position == poison.global_position),
        "{err}"
    );
}

#[tokio::test]
async fn rebuild_verify_finds_nothing_on_a_consistent_database_and_a_hand_edit_otherwise() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let s = scripted_history(&store).await;
    catch_up_all(&store).await;
    let verify = RebuildOptions {
        verify: true,
        swap: false,
        batch_size: 5,
        ..RebuildOptions::default()
    };
    for p in projections::all() {
        let report = rebuild(&store, p.as_ref(), &verify, &|_, _| {})
            .await
            .unwrap();
        assert!(
            report.differences.is_empty(),
            "{}: {:?}",
            p.name(),
            report.differences
        );
        assert!(report.events > 0);
    }

    sqlx::query("UPDATE rm_search_cars SET daily_rate_minor = 1 WHERE car_id = $1")
        .bind(s.car)
        .execute(&db.pool)
        .await
        .unwrap();
    let search = projections::by_name("search").unwrap();
    let report = rebuild(&store, search.as_ref(), &verify, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.differences.len(), 1, "{:?}", report.differences);
    let diff = &report.differences[0];
    assert_eq!(diff.table, "rm_search_cars");
    assert_eq!((diff.only_rebuilt, diff.only_live), (1, 1));
    assert_eq!(diff.only_live_sample[0]["daily_rate_minor"], 1);
    assert_eq!(diff.only_rebuilt_sample[0]["daily_rate_minor"], 6_000);

    // A rebuild that swaps repairs the table, and the next verify is clean.
    let swap = RebuildOptions {
        verify: true,
        swap: true,
        batch_size: 5,
        ..RebuildOptions::default()
    };
    rebuild(&store, search.as_ref(), &swap, &|_, _| {})
        .await
        .unwrap();
    let rate: i64 =
        sqlx::query_scalar("SELECT daily_rate_minor FROM rm_search_cars WHERE car_id = $1")
            .bind(s.car)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(rate, 6_000);
    let report = rebuild(&store, search.as_ref(), &verify, &|_, _| {})
        .await
        .unwrap();
    assert!(report.differences.is_empty());
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'rebuild_%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn a_rebuild_swaps_under_a_running_projector_without_losing_or_repeating() {
    let db = TestDatabase::create().await;
    let store = db.store();
    scripted_history(&store).await;
    let analytics = projections::by_name("analytics").unwrap();
    let token = CancellationToken::new();
    let runner = Projector::postgres(store.clone(), analytics.clone(), options());
    tokio::spawn(runner.run_until_cancelled(token.clone()));

    // Keep writing while rebuilding and swapping.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                let id = Uuid::now_v7();
                append(&store, "car", id, vec![registered(id, "Busy")]).await;
            }
        })
    };
    let swap = RebuildOptions {
        verify: false,
        swap: true,
        batch_size: 3,
        ..RebuildOptions::default()
    };
    rebuild(&store, analytics.as_ref(), &swap, &|_, _| {})
        .await
        .unwrap();
    writer.await.unwrap();
    let head = store.committed_head().await.unwrap();
    eventually(15, "analytics caught up", || async {
        let s = status_of(&db, "analytics").await;
        s.position == head.global_position && s.state == "running"
    })
    .await;
    let cars: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_analytics_cars")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        cars, 42,
        "two scripted cars and forty written meanwhile, each once"
    );
    let verify = RebuildOptions {
        verify: true,
        swap: false,
        batch_size: 50,
        ..RebuildOptions::default()
    };
    let report = rebuild(&store, analytics.as_ref(), &verify, &|_, _| {})
        .await
        .unwrap();
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    token.cancel();
}

/// While a rebuild has paused a projection for its swap (caught up and compared), the rest of
/// the system keeps seeing new events: an event appended then is applied by another live
/// projection and read by a plain no-skip reader, and the paused one takes it up after the swap.
#[tokio::test]
async fn a_rebuild_with_verify_stalls_nobody_else_while_it_swaps() {
    let db = TestDatabase::create().await;
    let store = db.store();
    scripted_history(&store).await;
    let (analytics, search) = (
        projections::by_name("analytics").unwrap(),
        projections::by_name("search").unwrap(),
    );
    let token = CancellationToken::new();
    for p in [analytics.clone(), search.clone()] {
        let runner = Projector::postgres(store.clone(), p, options());
        tokio::spawn(runner.run_until_cancelled(token.clone()));
    }
    let head = store.committed_head().await.unwrap();
    let at = |name: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT global_position FROM projection_checkpoints WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    eventually(15, "both caught up", || async {
        at("analytics").await == Some(head.global_position)
            && at("search").await == Some(head.global_position)
    })
    .await;

    let seen_while_paused = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let hook = {
        let (store, db_pool, seen) = (store.clone(), db.pool.clone(), seen_while_paused.clone());
        projections::rebuild::WhilePaused(std::sync::Arc::new(move |name: String| {
            let (store, pool, seen) = (store.clone(), db_pool.clone(), seen.clone());
            Box::pin(async move {
                assert_eq!(name, "analytics");
                let id = Uuid::now_v7();
                append(&store, "car", id, vec![registered(id, "During")]).await;
                let now = store.committed_head().await.unwrap();
                // Another projection applies it, and a no-skip read returns it.
                eventually(
                    15,
                    "search applies an event appended during the swap",
                    || async {
                        let at: i64 = sqlx::query_scalar(
                        "SELECT global_position FROM projection_checkpoints WHERE name = 'search'",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                        at == now.global_position
                    },
                )
                .await;
                let read = store.read_all(Checkpoint::START, 10_000).await.unwrap();
                assert_eq!(
                    read.last().map(|e| e.global_position),
                    Some(now.global_position)
                );
                // The paused projection has not applied it.
                let paused: i64 = sqlx::query_scalar(
                    "SELECT global_position FROM projection_checkpoints WHERE name = 'analytics'",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                assert!(paused < now.global_position);
                seen.store(now.global_position, std::sync::atomic::Ordering::SeqCst);
            })
        }))
    };
    let swap = RebuildOptions {
        verify: true,
        swap: true,
        batch_size: 3,
        while_paused: Some(hook),
    };
    let report = rebuild(&store, analytics.as_ref(), &swap, &|_, _| {})
        .await
        .unwrap();
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    let during = seen_while_paused.load(std::sync::atomic::Ordering::SeqCst);
    assert!(during > 0, "the hook ran while paused");
    // Resumed, the rebuilt projection takes up what came meanwhile.
    eventually(15, "analytics resumes after the swap", || async {
        at("analytics").await == Some(during)
    })
    .await;
    let cars: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_analytics_cars")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        cars, 3,
        "two scripted cars and the one appended during the swap"
    );
    token.cancel();
}

#[tokio::test]
async fn one_instance_is_active_and_a_standby_takes_over() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let search = projections::by_name("search").unwrap();
    let first = CancellationToken::new();
    let second = CancellationToken::new();
    let mut a = options();
    a.owner = "instance-a".into();
    let mut b = options();
    b.owner = "instance-b".into();
    let task_a = tokio::spawn(
        Projector::postgres(store.clone(), search.clone(), a).run_until_cancelled(first.clone()),
    );
    eventually(10, "a runs", || async {
        projections::status::list(&db.pool)
            .await
            .unwrap()
            .iter()
            .any(|s| s.owner.as_deref() == Some("instance-a") && s.state == "running")
    })
    .await;
    let task_b = tokio::spawn(
        Projector::postgres(store.clone(), search.clone(), b).run_until_cancelled(second.clone()),
    );
    for i in 0..20 {
        let id = Uuid::now_v7();
        append(&store, "car", id, vec![registered(id, &format!("Car{i}"))]).await;
    }
    eventually(10, "a applied all", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rm_search_cars")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            == 20
    })
    .await;
    assert_eq!(
        status_of(&db, "search").await.owner.as_deref(),
        Some("instance-a")
    );
    // A stops; B takes over and applies what comes next, once.
    first.cancel();
    task_a.await.unwrap().unwrap();
    for i in 20..30 {
        let id = Uuid::now_v7();
        append(&store, "car", id, vec![registered(id, &format!("Car{i}"))]).await;
    }
    eventually(10, "b took over", || async {
        let s = status_of(&db, "search").await;
        s.owner.as_deref() == Some("instance-b") && s.lag_events == 0
    })
    .await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_search_cars")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 30);
    second.cancel();
    task_b.await.unwrap().unwrap();
    assert_eq!(status_of(&db, "search").await.state, "stopped");
}

#[tokio::test]
async fn batching_does_not_change_the_result() {
    let db = TestDatabase::create().await;
    let store = db.store();
    scripted_history(&store).await;
    let mut one_by_one = options();
    one_by_one.batch_size = 1;
    for p in projections::all() {
        Projector::postgres(store.clone(), p, one_by_one.clone())
            .catch_up()
            .await
            .unwrap();
    }
    let whole = RebuildOptions {
        verify: true,
        swap: false,
        batch_size: 10_000,
        ..RebuildOptions::default()
    };
    for p in projections::all() {
        let report = rebuild(&store, p.as_ref(), &whole, &|_, _| {})
            .await
            .unwrap();
        assert!(
            report.differences.is_empty(),
            "{}: {:?}",
            p.name(),
            report.differences
        );
    }
}

#[tokio::test]
async fn an_overlap_the_aggregate_would_refuse_stops_availability_at_that_event() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let car = Uuid::now_v7();
    let reserve = |booking| CarEvent::CarReserved {
        booking_id: booking,
        window: window(t(10, 10), t(12, 10)),
        at: t(1, 10),
        turnaround_minutes: 60,
    };
    append(
        &store,
        "car",
        car,
        vec![registered(car, "Twice"), reserve(Uuid::now_v7())],
    )
    .await;
    // Written past the aggregate, as only a bug or a hand-made event could.
    let overlapping = append(&store, "car", car, vec![reserve(Uuid::now_v7())]).await;
    let availability = projections::by_name("availability").unwrap();
    let err = Projector::postgres(store.clone(), availability, options())
        .catch_up()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Poisoned { position, .. } if *position == overlapping[0].global_position),
        "{err}"
    );
    let status = status_of(&db, "availability").await;
    assert_eq!(status.state, "failed");
    assert!(
        status.error.as_deref().unwrap_or("").contains("no_overlap"),
        "{:?}",
        status.error
    );
    let blocks: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_availability_blocks")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(blocks, 1, "the first reservation was kept");
}

/// A read model that cannot apply one event until a fix is "deployed" (the flag).
struct Picky {
    fixed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refuse: Uuid,
}

#[async_trait::async_trait]
impl projections::Projection for Picky {
    fn name(&self) -> &'static str {
        "picky"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_picky"]
    }

    fn wants(&self, event: &eventstore::RecordedEvent) -> bool {
        event.aggregate_type == "car"
    }

    async fn apply(
        &self,
        conn: &mut sqlx::PgConnection,
        events: &[&eventstore::RecordedEvent],
    ) -> Result<(), projections::ApplyError> {
        for event in events {
            if event.event_id == self.refuse
                && !self.fixed.load(std::sync::atomic::Ordering::SeqCst)
            {
                return Err(projections::ApplyError::Invalid("not yet".into()));
            }
            sqlx::query("INSERT INTO rm_picky (event_id) VALUES ($1)")
                .bind(event.event_id)
                .execute(&mut *conn)
                .await
                .map_err(projections::ApplyError::from)?;
        }
        Ok(())
    }
}

/// A failed projection carries on from its checkpoint when asked (`projections resume`), on
/// the instance holding it, without a restart; asking one that has not failed does nothing.
#[tokio::test]
async fn a_failed_projection_resumes_when_asked_without_a_restart() {
    let db = TestDatabase::create().await;
    let store = db.store();
    sqlx::query("CREATE TABLE rm_picky (event_id uuid PRIMARY KEY)")
        .execute(&db.pool)
        .await
        .unwrap();
    let (one, two) = (Uuid::now_v7(), Uuid::now_v7());
    append(&store, "car", one, vec![registered(one, "One")]).await;
    let refused = append(&store, "car", two, vec![registered(two, "Two")]).await;
    let fixed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let picky = Picky {
        fixed: fixed.clone(),
        refuse: refused[0].event_id,
    };
    let token = CancellationToken::new();
    tokio::spawn(
        Projector::postgres(store.clone(), std::sync::Arc::new(picky), options())
            .run_until_cancelled(token.clone()),
    );
    let state = || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM projection_status WHERE name = 'picky'")
            .fetch_optional(&db.pool)
            .await
            .unwrap()
    };
    eventually(15, "picky fails at the second car", || async {
        state().await.as_deref() == Some("failed")
    })
    .await;
    assert_eq!(
        status_of(&db, "picky").await.failed_position,
        Some(refused[0].global_position)
    );

    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        projections::status::request_resume(&db.pool, "picky")
            .await
            .unwrap()
    );
    eventually(15, "picky runs again and has applied both", || async {
        let s = status_of(&db, "picky").await;
        s.state == "running" && s.lag_events == 0
    })
    .await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_picky")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied, 2);
    assert!(
        !projections::status::request_resume(&db.pool, "picky")
            .await
            .unwrap()
    );
    token.cancel();
}
