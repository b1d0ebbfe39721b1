//! The log read in commit order while the cluster's transaction counter crosses a power of ten.
//!
//! Transaction ids are compared as numbers: "10000" after "9999". A reader that ordered them as
//! text applied a batch spanning 9,999 -> 10,000 out of order and moved its checkpoint back.
//! These tests run on a cluster of their own (the counter is cluster-wide), push the counter
//! across 10,000 and 100,000 while appends run, and check every way the log is read.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use eventstore::audit::{self, AnchorRef, ExportFilter};
use eventstore::testing::{TestCluster, eventually};
use eventstore::{
    Checkpoint, EventMetadata, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamAppend,
    StreamId,
};
use serde_json::json;

const WRITERS: usize = 4;

/// Appends one event per transaction to its own streams until told to stop.
fn spawn_writer(
    store: EventStore,
    writer: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut appended = 0u64;
        let mut versions: HashMap<String, i64> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let id = format!("w{writer}-s{}", appended % 3);
            let version = versions.entry(id.clone()).or_insert(0);
            store
                .append(
                    &[StreamAppend::new(
                        StreamId::new("car", &id),
                        ExpectedVersion::Exact(*version),
                        vec![NewEvent::new("Counted", 1, json!({ "n": appended }))],
                    )],
                    &EventMetadata::for_actor("digits-test"),
                )
                .await
                .expect("append");
            *version += 1;
            appended += 1;
        }
        appended
    })
}

async fn next_transaction_id(store: &EventStore) -> u64 {
    let next: eventstore::Xid8 =
        sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())")
            .fetch_one(store.pool())
            .await
            .unwrap();
    next.0
}

/// Burn ids to just below `boundary`, then let the writers alone carry the counter across it,
/// so that events land on both sides of the boundary close together.
async fn cross(cluster: &TestCluster, store: &EventStore, boundary: u64) {
    cluster.burn_transactions(boundary - 40).await;
    eventually(
        60,
        &format!("appends reach transaction {}", boundary + 40),
        || async { next_transaction_id(store).await > boundary + 40 },
    )
    .await;
}

/// The whole log through the no-skip reader, `batch` events at a time.
async fn read_everything(store: &EventStore, batch: i64) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = Checkpoint::START;
    loop {
        let got = store.read_all(after, batch).await.unwrap();
        let Some(last) = got.last() else { break };
        after = last.checkpoint();
        all.extend(got);
    }
    all
}

/// Commit order, each event once, each stream's versions 1, 2, 3…
fn assert_commit_order(events: &[RecordedEvent], total: usize, how: &str) {
    assert_eq!(events.len(), total, "{how}: every event once");
    let ids: HashSet<_> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), total, "{how}: no event twice");
    for pair in events.windows(2) {
        assert!(
            pair[0].checkpoint() < pair[1].checkpoint(),
            "{how}: {} read before {}",
            pair[0].checkpoint(),
            pair[1].checkpoint()
        );
    }
    let mut versions: HashMap<StreamId, i64> = HashMap::new();
    for e in events {
        let v = versions.entry(e.stream()).or_insert(0);
        assert_eq!(e.version, *v + 1, "{how}: {} out of order", e.stream());
        *v = e.version;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_reads_in_commit_order_across_ten_thousand_and_a_hundred_thousand() {
    let cluster = TestCluster::start("digits").await;
    let store = cluster.store();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| spawn_writer(store.clone(), w, stop.clone()))
        .collect();
    // A subscriber that follows the log live through both crossings.
    let mut subscription = store.subscribe(Checkpoint::START);

    cross(&cluster, &store, 10_000).await;
    cross(&cluster, &store, 100_000).await;
    stop.store(true, Ordering::Relaxed);
    let mut appended = 0;
    for w in writers {
        appended += w.await.unwrap();
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(total as u64, appended);
    let total = total as usize;

    // The test is only meaningful if events sit on both sides of each boundary.
    for boundary in [10_000u64, 100_000] {
        let (below, above): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE transaction_id < $1), \
                    count(*) FILTER (WHERE transaction_id >= $1) FROM events",
        )
        .bind(eventstore::Xid8(boundary))
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert!(below > 0 && above > 0, "events on both sides of {boundary}");
    }

    let head = store.committed_head().await.unwrap();
    let max: (eventstore::Xid8, i64) = sqlx::query_as(
        "SELECT transaction_id, global_position FROM events \
         WHERE transaction_id = (SELECT max(transaction_id) FROM events) \
         ORDER BY global_position DESC LIMIT 1",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        (head.transaction_id, head.global_position),
        (max.0.0, max.1)
    );
    assert!(head.transaction_id > 100_000);
    assert_eq!(
        store
            .wait_visible(head, std::time::Duration::from_secs(30))
            .await
            .unwrap(),
        Some(head)
    );
    assert_eq!(store.visible_head().await.unwrap(), head);

    // One batch spanning both boundaries, small batches, and batches of one.
    let reference = read_everything(&store, 100_000).await;
    assert_commit_order(&reference, total, "one batch");
    assert_eq!(reference.last().unwrap().checkpoint(), head);
    for batch in [1, 7, 500] {
        let read = read_everything(&store, batch).await;
        assert_eq!(read, reference, "batches of {batch}");
    }
    let until = store
        .read_until(Checkpoint::START, head, 100_000)
        .await
        .unwrap();
    assert_eq!(until, reference, "read_until");

    // The live subscriber saw the same sequence.
    let mut followed = Vec::with_capacity(total);
    while followed.len() < total {
        followed.push(subscription.next().await.unwrap());
    }
    assert_eq!(followed, reference, "subscription");

    // The export is in the same order and verifies; an anchor covers the true head.
    let mut file = Vec::new();
    let written = audit::export(&store, &ExportFilter::default(), &mut file, |_| {})
        .await
        .unwrap();
    assert_eq!(written as usize, total);
    let exported: Vec<RecordedEvent> = file
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(
        exported.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        reference.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
    let report = audit::verify_export(file.as_slice()).unwrap();
    assert!(
        report.broken.is_empty() && report.global.is_empty(),
        "{report:?}"
    );

    let anchor = audit::take_anchor(&store, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        anchor.checkpoint, head,
        "the anchor covers the newest event"
    );
    assert_eq!(anchor.events as usize, total);
    let check = audit::check_anchor(&store, &AnchorRef::Digest(anchor.digest), |_| {})
        .await
        .unwrap();
    assert!(check.matches());
    let token: AnchorRef = anchor.token().parse().unwrap();
    assert!(
        audit::check_anchor(&store, &token, |_| {})
            .await
            .unwrap()
            .matches()
    );
    let verified = audit::verify_all(&store, |_| {}).await.unwrap();
    assert!(
        verified.broken.is_empty() && verified.global.is_empty(),
        "{verified:?}"
    );
    assert_eq!(verified.events as usize, total);
}

#[tokio::test]
async fn xid8_values_round_trip_as_numbers() {
    let db = eventstore::testing::TestDatabase::create().await;
    for value in [
        0u64,
        9_999,
        10_000,
        99_999,
        100_000,
        4_294_967_296,
        (1 << 62) + 12_345,
    ] {
        let (back, text, bigger): (eventstore::Xid8, String, bool) =
            sqlx::query_as("SELECT $1, $1::text, $1 > '9999'::xid8")
                .bind(eventstore::Xid8(value))
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(back.0, value);
        assert_eq!(text, value.to_string());
        assert_eq!(bigger, value > 9_999);
    }
}
