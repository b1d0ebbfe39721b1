//! Upgrading a deployment whose checkpoints the text-ordered reader moved back.
//!
//! Before transaction ids were read as numbers, a batch spanning 9,999 -> 10,000 was applied
//! out of order and its checkpoint went back behind events already applied: projections then
//! stopped ("payment requested twice") or re-applied events, and the relay lost some. The
//! migration that shipped with the fix marks such checkpoints; the runtime repairs each once
//! (rebuild and swap; an external sink gets the log again) and carries on by itself.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use eventstore::testing::{TestCluster, eventually};
use eventstore::{Checkpoint, RecordedEvent, Xid8};
use projections::Projector;
use projections::rebuild::{RebuildOptions, rebuild};
use projections::runtime::{ExternalSink, SinkError};
use tokio_util::sync::CancellationToken;

/// The migration that marks checkpoints for repair.
const REPAIR_MIGRATION: i64 = 20261207000001;

/// An external target that remembers what it was given.
#[derive(Default)]
struct Collect(Mutex<Vec<RecordedEvent>>);

#[async_trait::async_trait]
impl ExternalSink for Collect {
    fn name(&self) -> &str {
        "relay.test"
    }

    async fn deliver(&self, batch: &[RecordedEvent]) -> Result<(), SinkError> {
        self.0.lock().unwrap().extend_from_slice(batch);
        Ok(())
    }
}

async fn set_checkpoint(pool: &sqlx::PgPool, name: &str, to: Checkpoint) {
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, transaction_id, global_position) \
         VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
         SET transaction_id = $2, global_position = $3",
    )
    .bind(name)
    .bind(Xid8(to.transaction_id))
    .bind(to.global_position)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_moved_back_by_the_text_ordered_reader_are_repaired_after_the_upgrade() {
    let cluster = TestCluster::start_unmigrated("repair").await;
    let pool = cluster.pool.clone();
    // The schema as it was before the fix.
    let before = sqlx::migrate::Migrator {
        migrations: eventstore::MIGRATOR
            .migrations
            .iter()
            .filter(|m| m.version < REPAIR_MIGRATION)
            .cloned()
            .collect(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&pool).await.unwrap();
    // The projections under test are today's code: give the old schema the read-model columns
    // it writes (their migrations, 20261207000004, 20261207000007, 20261207000008,
    // 20261207000014, 20261207000017 and 20261207000019, add them only if missing).
    sqlx::raw_sql(
        "ALTER TABLE rm_daily_metrics ADD COLUMN earned_minor bigint NOT NULL DEFAULT 0; \
         ALTER TABLE rm_car_daily ADD COLUMN earned_minor bigint NOT NULL DEFAULT 0; \
         ALTER TABLE rm_bookings ADD COLUMN overdue_at timestamptz; \
         ALTER TABLE rm_bookings ADD COLUMN displaced_at timestamptz; \
         ALTER TABLE rm_bookings ADD COLUMN extras jsonb NOT NULL DEFAULT '[]'; \
         ALTER TABLE rm_bookings ADD COLUMN mileage jsonb; \
         ALTER TABLE rm_availability_blocks ADD COLUMN turnaround_minutes integer NOT NULL \
           DEFAULT 60; \
         ALTER TABLE rm_search_cars ADD COLUMN blocks jsonb NOT NULL DEFAULT '[]'; \
         ALTER TABLE rm_search_cars ADD COLUMN busy tstzmultirange NOT NULL DEFAULT '{}';",
    )
    .execute(&pool)
    .await
    .unwrap();
    // And the log's horizon function today's reader calls.
    let horizon = eventstore::MIGRATOR
        .migrations
        .iter()
        .find(|m| m.version == 20261207000015)
        .expect("the log_horizon migration");
    sqlx::raw_sql(&horizon.sql).execute(&pool).await.unwrap();
    let store = cluster.store();

    // A small history whose transactions straddle 10,000.
    cluster.burn_transactions(9_990).await;
    scripted_history(&store).await;
    let log = store.read_all(Checkpoint::START, 10_000).await.unwrap();
    let last_below = log
        .iter()
        .rev()
        .find(|e| e.transaction_id < 10_000)
        .map(RecordedEvent::checkpoint)
        .expect("events below 10,000");
    assert!(
        log.iter().filter(|e| e.transaction_id >= 10_000).count() >= 5,
        "events above 10,000"
    );

    // Every read model applied everything, then the old reader moved each checkpoint back
    // behind events already applied (what a batch sorted as text did), and the relay's too.
    catch_up_all(&store).await;
    for p in projections::all() {
        set_checkpoint(&pool, p.name(), last_below).await;
    }
    set_checkpoint(&pool, "relay.test", last_below).await;
    // As it was seen: carrying on from there re-applies events and stops the projection.
    let history = projections::by_name("history").unwrap();
    let stuck = Projector::postgres(store.clone(), history.clone(), options())
        .catch_up()
        .await;
    assert!(
        stuck.is_err(),
        "re-applying events already applied stops history"
    );

    // The upgrade.
    eventstore::MIGRATOR.run(&pool).await.unwrap();
    let marked: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM projection_checkpoints WHERE repair_reason IS NOT NULL ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut expected: Vec<String> = projections::names()
        .iter()
        .map(|n| (*n).to_owned())
        .collect();
    expected.push("relay.test".to_owned());
    expected.sort();
    assert_eq!(marked, expected);

    // The projectors start as usual and repair themselves.
    let token = CancellationToken::new();
    for p in projections::all() {
        tokio::spawn(
            Projector::postgres(store.clone(), p, options()).run_until_cancelled(token.clone()),
        );
    }
    let sink = Arc::new(Collect::default());
    tokio::spawn(
        Projector::external(store.clone(), sink.clone(), options())
            .run_until_cancelled(token.clone()),
    );
    let head = store.committed_head().await.unwrap();
    eventually(
        60,
        "every projection repaired, running and at the head",
        || async {
            let statuses = projections::status::list(&pool).await.unwrap();
            statuses.len() == expected.len()
                && statuses.iter().all(|s| {
                    s.state == "running"
                        && (s.transaction_id, s.position)
                            == (head.transaction_id, head.global_position)
                })
        },
    )
    .await;
    token.cancel();

    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM projection_checkpoints WHERE repair_reason IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "each repair runs once");
    // The live tables are what a rebuild from the log in commit order gives.
    let verify = RebuildOptions {
        verify: true,
        swap: false,
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
    }
    // The external target was given the whole log again, in commit order.
    let delivered = sink.0.lock().unwrap().clone();
    assert_eq!(delivered, log);
}
