//! One tail of the log per process, fanned out in memory: every subscriber gets exactly the
//! events its filter keeps, in commit order, whether it starts at the head, in the past, or
//! falls behind by more than the channel holds.

use std::time::Duration;

use eventstore::testing::TestDatabase;
use eventstore::{
    Checkpoint, EventMetadata, EventStore, ExpectedVersion, LogTail, NewEvent, RecordedEvent,
    StreamAppend, StreamId, SubscribeOptions,
};
use futures::{Stream, StreamExt};
use serde_json::json;
use uuid::Uuid;

fn options() -> SubscribeOptions {
    SubscribeOptions {
        poll_interval: Duration::from_millis(50),
        ..SubscribeOptions::default()
    }
}

/// Append `n` events, one per transaction, to the stream `kind/id`.
async fn append(store: &EventStore, kind: &str, id: &str, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let stream = StreamId::new(kind, id);
        let done = store
            .append(
                &[StreamAppend::new(
                    stream,
                    ExpectedVersion::Any,
                    vec![NewEvent::new("Counted", 1, json!({ "kind": kind }))],
                )],
                &EventMetadata::for_actor("test"),
            )
            .await
            .unwrap();
        ids.push(done[0].event_id);
    }
    ids
}

/// The checkpoint of the event `id` (read from the table: the visible head may lag it while
/// other tests' transactions run on the same server).
async fn checkpoint_of(store: &EventStore, id: Uuid) -> Checkpoint {
    let (transaction_id, global_position): (eventstore::Xid8, i64) =
        sqlx::query_as("SELECT transaction_id, global_position FROM events WHERE event_id = $1")
            .bind(id)
            .fetch_one(store.pool())
            .await
            .unwrap();
    Checkpoint {
        transaction_id: transaction_id.0,
        global_position,
    }
}

/// The next `n` events of `stream`, failing after a deadline.
async fn take(
    stream: &mut (impl Stream<Item = Result<RecordedEvent, eventstore::EventStoreError>> + Unpin),
    n: usize,
) -> Vec<Uuid> {
    let mut got = Vec::new();
    while got.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived", got.len()))
            .expect("the stream ended")
            .unwrap();
        got.push(next.event_id);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_what_it_keeps_in_commit_order() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let before = append(&store, "car", "old", 3).await;
    let tail = LogTail::new(store.clone(), options());
    // Forty subscribers after those, half of them for cars, half for bookings.
    let head = checkpoint_of(&store, *before.last().unwrap()).await;
    let mut cars: Vec<_> = (0..20)
        .map(|_| Box::pin(tail.subscribe(head, |e| e.aggregate_type == "car")))
        .collect();
    let mut bookings: Vec<_> = (0..20)
        .map(|_| Box::pin(tail.subscribe(head, |e| e.aggregate_type == "booking")))
        .collect();
    // One from the start of the log: the history first, then the live events.
    let mut everything = Box::pin(tail.subscribe(Checkpoint::START, |_| true));
    let car_ids = append(&store, "car", "c1", 5).await;
    let booking_ids = append(&store, "booking", "b1", 4).await;
    for s in &mut cars {
        assert_eq!(take(s, 5).await, car_ids);
    }
    for s in &mut bookings {
        assert_eq!(take(s, 4).await, booking_ids);
    }
    let all: Vec<Uuid> = before
        .iter()
        .chain(&car_ids)
        .chain(&booking_ids)
        .copied()
        .collect();
    assert_eq!(take(&mut everything, 12).await, all);
    // Nothing more, nothing twice.
    let more = append(&store, "car", "c2", 1).await;
    assert_eq!(take(&mut everything, 1).await, more);
    assert_eq!(take(&mut cars[0], 1).await, more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_reads_the_gap_from_the_log() {
    let db = TestDatabase::create().await;
    let store = db.store();
    // A channel of two events: a subscriber that does not read for a while loses its place in
    // it, and must read what it missed from the log instead.
    let tail = LogTail::with_capacity(store.clone(), options(), 2);
    let head = Checkpoint::START;
    let mut slow = Box::pin(tail.subscribe(head, |_| true));
    let mut fast = Box::pin(tail.subscribe(head, |_| true));
    let first = append(&store, "car", "c", 1).await;
    assert_eq!(take(&mut slow, 1).await, first);
    let burst = append(&store, "car", "c", 30).await;
    // The fast one keeps up; the tail has published everything once it has.
    assert_eq!(take(&mut fast, 31).await[1..], burst[..]);
    assert_eq!(take(&mut slow, 30).await, burst);
    let after = append(&store, "car", "c", 2).await;
    assert_eq!(take(&mut slow, 2).await, after);
}
