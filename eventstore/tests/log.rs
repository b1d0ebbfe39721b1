//! The event log against a real PostgreSQL: concurrency, atomicity, commit order, subscriptions,
//! snapshots, upcasting and the hash chain.

use std::sync::Arc;
use std::time::Duration;

use eventstore::testing::TestDatabase;
use eventstore::{
    Checkpoint, EventMetadata, EventStore, EventStoreError, ExpectedVersion, NewEvent,
    RecordedEvent, StreamAppend, StreamHead, StreamId, SubscribeOptions, UpcasterRegistry,
};
use serde_json::json;
use tokio::sync::{Barrier, mpsc};

fn meta() -> EventMetadata {
    EventMetadata::for_actor("test")
}

fn ev(n: i64) -> NewEvent {
    NewEvent::new("Counted", 1, json!({ "n": n }))
}

fn car(id: &str) -> StreamId {
    StreamId::new("car", id)
}

fn append(stream: &StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend::new(stream.clone(), expected, events)
}

async fn count_events(store: &EventStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Wait until readers can see `upto`. Readers are held back by any open transaction in the
/// whole cluster, and other tests run beside this one on the same server.
async fn wait_visible(store: &EventStore, upto: Checkpoint) {
    let seen = store
        .wait_visible(upto, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(seen.is_some(), "{upto} never became visible");
}

fn fast_poll() -> SubscribeOptions {
    SubscribeOptions {
        poll_interval: Duration::from_millis(50),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..SubscribeOptions::default()
    }
}

/// Receive `n` events from a channel, or fail after a deadline.
async fn receive(rx: &mut mpsc::Receiver<RecordedEvent>, n: usize) -> Vec<RecordedEvent> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => got.push(e),
            Ok(None) => panic!("subscription ended after {} of {n} events", got.len()),
            Err(_) => panic!("only {} of {n} events arrived in time", got.len()),
        }
    }
    got
}

fn spawn_subscriber(
    store: EventStore,
    after: Checkpoint,
) -> (mpsc::Receiver<RecordedEvent>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(10_000);
    let handle = tokio::spawn(async move {
        let mut sub = store.subscribe_with(after, fast_poll());
        loop {
            let event = sub.next().await.expect("subscription failed");
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    (rx, handle)
}

#[tokio::test]
async fn append_assigns_versions_positions_and_reads_back() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let s = car("c1");
    let written = store
        .append(
            &[append(&s, ExpectedVersion::NoStream, vec![ev(1), ev(2)])],
            &meta(),
        )
        .await
        .unwrap();
    assert_eq!(
        written.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(written[0].global_position < written[1].global_position);
    assert_eq!(written[0].transaction_id, written[1].transaction_id);

    let more = store
        .append(
            &[append(&s, ExpectedVersion::Exact(2), vec![ev(3)])],
            &meta(),
        )
        .await
        .unwrap();
    assert_eq!(more[0].version, 3);

    let read = store.read_stream(&s, 1, None).await.unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!(&read[..2], &written[..]);
    assert_eq!(read[2], more[0]);
    assert_eq!(
        store.read_stream(&s, 2, Some(2)).await.unwrap(),
        vec![written[1].clone()]
    );

    let metadata = read[0].typed_metadata().unwrap();
    assert_eq!(metadata.actor.as_deref(), Some("test"));
    assert_eq!(
        store.stream_head(&s).await.unwrap(),
        more[0].head().unwrap()
    );
}

#[tokio::test]
async fn two_writers_at_the_same_expected_version_exactly_one_wins() {
    let db = TestDatabase::create().await;
    // Independent pools: two real connections racing.
    let a = EventStore::new(db.new_pool("writer-a", 2).await);
    let b = EventStore::new(db.new_pool("writer-b", 2).await);
    for round in 0..20 {
        let s = car(&format!("race-{round}"));
        a.append(
            &[append(&s, ExpectedVersion::NoStream, vec![ev(0)])],
            &meta(),
        )
        .await
        .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let run = |store: EventStore, barrier: Arc<Barrier>, s: StreamId| async move {
            barrier.wait().await;
            store
                .append(
                    &[append(&s, ExpectedVersion::Exact(1), vec![ev(1)])],
                    &meta(),
                )
                .await
        };
        let (ra, rb) = tokio::join!(
            run(a.clone(), barrier.clone(), s.clone()),
            run(b.clone(), barrier.clone(), s.clone())
        );
        let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {ra:?} / {rb:?}");
        let loser = if ra.is_err() { ra } else { rb };
        match loser {
            Err(EventStoreError::OptimisticConcurrency {
                stream,
                expected,
                actual,
            }) => {
                assert_eq!(stream, s);
                assert_eq!(expected, ExpectedVersion::Exact(1));
                assert_eq!(actual, 2);
            }
            other => panic!("expected a concurrency conflict, got {other:?}"),
        }
        assert_eq!(a.read_stream(&s, 1, None).await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn a_multi_stream_append_with_one_conflict_writes_nothing() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let booking = StreamId::new("booking", "b1");
    let carid = car("c1");
    store
        .append(
            &[append(
                &carid,
                ExpectedVersion::NoStream,
                vec![ev(1), ev(2)],
            )],
            &meta(),
        )
        .await
        .unwrap();
    let before = count_events(&store).await;

    // The second stream is stale (expects 1, is at 2): detected before writing.
    let err = store
        .append(
            &[
                append(&booking, ExpectedVersion::NoStream, vec![ev(1)]),
                append(&carid, ExpectedVersion::Exact(1), vec![ev(3)]),
            ],
            &meta(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EventStoreError::OptimisticConcurrency { stream, actual: 2, .. } if *stream == carid),
        "{err:?}"
    );

    // A stale head passed as known (so no read happens first): the unique key catches it.
    let first = store.read_stream(&carid, 1, Some(1)).await.unwrap();
    let stale = first[0].head().unwrap();
    let err = store
        .append(
            &[
                append(&booking, ExpectedVersion::NoStream, vec![ev(1)]),
                StreamAppend::after(carid.clone(), stale, vec![ev(3)]),
            ],
            &meta(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EventStoreError::OptimisticConcurrency { stream, expected: ExpectedVersion::Exact(1), actual: 2 } if *stream == carid),
        "{err:?}"
    );
    assert_eq!(
        count_events(&store).await,
        before,
        "nothing from either stream"
    );
    assert!(
        store
            .read_stream(&booking, 1, None)
            .await
            .unwrap()
            .is_empty()
    );

    // NoStream on an existing stream is a conflict too.
    let err = store
        .append(
            &[append(&carid, ExpectedVersion::NoStream, vec![ev(9)])],
            &meta(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EventStoreError::OptimisticConcurrency { actual: 2, .. }
        ),
        "{err:?}"
    );

    // Both streams at the right versions: both written, in one transaction.
    let written = store
        .append(
            &[
                append(&booking, ExpectedVersion::NoStream, vec![ev(1)]),
                append(&carid, ExpectedVersion::Exact(2), vec![ev(3)]),
            ],
            &meta(),
        )
        .await
        .unwrap();
    assert_eq!(written.len(), 2);
    assert_eq!(written[0].transaction_id, written[1].transaction_id);
}

#[tokio::test]
async fn a_conflict_inside_a_transaction_leaves_it_usable() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let s = car("c1");
    store
        .append(
            &[append(&s, ExpectedVersion::NoStream, vec![ev(1)])],
            &meta(),
        )
        .await
        .unwrap();
    let stale = store.read_stream(&s, 1, Some(1)).await.unwrap()[0]
        .head()
        .unwrap();
    store
        .append(
            &[append(&s, ExpectedVersion::Exact(1), vec![ev(2)])],
            &meta(),
        )
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let err = store
        .append_in(
            &mut tx,
            &[StreamAppend::after(s.clone(), stale, vec![ev(3)])],
            &meta(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EventStoreError::OptimisticConcurrency { actual: 2, .. }
        ),
        "{err:?}"
    );
    store
        .append_in(
            &mut tx,
            &[append(&car("c2"), ExpectedVersion::NoStream, vec![ev(4)])],
            &meta(),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count_events(&store).await, 3);
}

#[tokio::test]
async fn any_version_appends_race_without_losing_events() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let s = car("busy");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let s = s.clone();
            tokio::spawn(async move {
                store
                    .append(&[append(&s, ExpectedVersion::Any, vec![ev(i)])], &meta())
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    let events = store.read_stream(&s, 1, None).await.unwrap();
    assert_eq!(events.len(), ok);
    assert!(ok >= 1);
    assert!(store.verify_stream(&s).await.unwrap().is_valid());
}

#[tokio::test]
async fn bad_appends_are_refused_and_write_nothing() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let s = car("c1");
    let cases: Vec<Vec<StreamAppend>> = vec![
        vec![],
        vec![append(&s, ExpectedVersion::NoStream, vec![])],
        vec![
            append(&s, ExpectedVersion::NoStream, vec![ev(1)]),
            append(&s, ExpectedVersion::Any, vec![ev(2)]),
        ],
        vec![append(
            &s,
            ExpectedVersion::NoStream,
            vec![NewEvent::new("X", 0, json!({}))],
        )],
        vec![append(
            &s,
            ExpectedVersion::NoStream,
            vec![NewEvent::new("X", 1, json!({"nul": "a\u{0}b"}))],
        )],
    ];
    for case in cases {
        let err = store.append(&case, &meta()).await.unwrap_err();
        assert!(matches!(err, EventStoreError::InvalidAppend(_)), "{err:?}");
    }
    let once = NewEvent::new("X", 1, json!({}));
    store
        .append(
            &[append(&s, ExpectedVersion::NoStream, vec![once.clone()])],
            &meta(),
        )
        .await
        .unwrap();
    let err = store
        .append(
            &[append(
                &car("c2"),
                ExpectedVersion::NoStream,
                vec![once.clone()],
            )],
            &meta(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, EventStoreError::DuplicateEventId(id) if id == once.event_id),
        "{err:?}"
    );
    assert_eq!(count_events(&store).await, 1);
}

#[tokio::test]
async fn read_all_pages_in_commit_order() {
    let db = TestDatabase::create().await;
    let store = db.store();
    for i in 0..25 {
        store
            .append(
                &[append(
                    &car(&format!("c{}", i % 3)),
                    ExpectedVersion::Any,
                    vec![ev(i)],
                )],
                &meta(),
            )
            .await
            .unwrap();
    }
    let last = store.read_stream(&car("c0"), 9, Some(9)).await.unwrap()[0].checkpoint();
    wait_visible(&store, last).await;
    let mut seen = Vec::new();
    let mut after = Checkpoint::START;
    loop {
        let page = store.read_all(after, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap().checkpoint();
        seen.extend(page);
    }
    let ns: Vec<i64> = seen
        .iter()
        .map(|e| e.payload["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (0..25).collect::<Vec<_>>());
    assert!(
        seen.windows(2)
            .all(|w| w[0].checkpoint() < w[1].checkpoint())
    );
    assert_eq!(store.visible_head().await.unwrap(), after);
}

/// Transaction A takes a position and stays open; B commits a later one. Readers must deliver
/// neither until A commits, then both, A first.
#[tokio::test]
async fn a_late_commit_is_never_skipped() {
    let db = TestDatabase::create().await;
    let store = db.store();
    store
        .append(
            &[append(
                &car("before"),
                ExpectedVersion::NoStream,
                vec![ev(0)],
            )],
            &meta(),
        )
        .await
        .unwrap();
    let (mut rx, sub) = spawn_subscriber(
        EventStore::new(db.new_pool("subscriber", 4).await),
        Checkpoint::START,
    );
    let first = receive(&mut rx, 1).await;

    // A: its own connection, transaction left open after the insert.
    let mut tx_a = db.pool.begin().await.unwrap();
    let a = store
        .append_in(
            &mut tx_a,
            &[append(&car("a"), ExpectedVersion::NoStream, vec![ev(1)])],
            &meta(),
        )
        .await
        .unwrap();
    // B: another connection, commits at once with a later position.
    let b = store
        .append(
            &[append(&car("b"), ExpectedVersion::NoStream, vec![ev(2)])],
            &meta(),
        )
        .await
        .unwrap();
    assert!(a[0].global_position < b[0].global_position);

    let visible = store.read_all(first[0].checkpoint(), 100).await.unwrap();
    assert!(
        visible.is_empty(),
        "read_all went past the open transaction: {visible:?}"
    );
    // Give the subscriber many poll rounds and wake-ups to (wrongly) deliver B.
    store.wake_subscribers();
    let early = tokio::time::timeout(Duration::from_millis(800), rx.recv()).await;
    assert!(
        early.is_err(),
        "subscription delivered past the open transaction: {early:?}"
    );

    tx_a.commit().await.unwrap();
    store.wake_subscribers();
    let got = receive(&mut rx, 2).await;
    assert_eq!(got[0].event_id, a[0].event_id);
    assert_eq!(got[1].event_id, b[0].event_id);
    wait_visible(&store, got[1].checkpoint()).await;
    let all = store.read_all(first[0].checkpoint(), 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        [a[0].event_id, b[0].event_id]
    );
    sub.abort();
}

/// A transaction that declares it appends no events (a projector's batch) holds back no reader
/// of the log, however long it stays open; the same transaction undeclared holds them all back.
#[tokio::test]
async fn a_quiet_transaction_holds_back_no_reader() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let mut quiet = db.pool.begin().await.unwrap();
    eventstore::quiet::declare(&mut quiet).await.unwrap();
    // It has a transaction id, as a projector's batch has once it writes its rows.
    let _: eventstore::Xid8 = sqlx::query_scalar("SELECT pg_current_xact_id()")
        .fetch_one(&mut *quiet)
        .await
        .unwrap();
    let first = store
        .append(
            &[append(&car("q"), ExpectedVersion::NoStream, vec![ev(1)])],
            &meta(),
        )
        .await
        .unwrap();
    wait_visible(&store, first[0].checkpoint()).await;
    let read: Vec<_> = store
        .read_all(Checkpoint::START, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(read, [first[0].event_id]);

    // Not declared, an open transaction with an id holds every reader back.
    let mut loud = db.pool.begin().await.unwrap();
    let _: eventstore::Xid8 = sqlx::query_scalar("SELECT pg_current_xact_id()")
        .fetch_one(&mut *loud)
        .await
        .unwrap();
    let second = store
        .append(
            &[append(&car("r"), ExpectedVersion::NoStream, vec![ev(2)])],
            &meta(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.read_all(first[0].checkpoint(), 10).await.unwrap(),
        Vec::<RecordedEvent>::new()
    );
    loud.rollback().await.unwrap();
    wait_visible(&store, second[0].checkpoint()).await;
    quiet.rollback().await.unwrap();
}

/// Positions taken in one order, transactions started in the other: commit order wins.
#[tokio::test]
async fn commit_order_follows_transactions_not_positions() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let mut tx_a = db.pool.begin().await.unwrap();
    // A gets its transaction id first but inserts last.
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *tx_a)
        .await
        .unwrap();
    let b = store
        .append(
            &[append(&car("b"), ExpectedVersion::NoStream, vec![ev(2)])],
            &meta(),
        )
        .await
        .unwrap();
    let a = store
        .append_in(
            &mut tx_a,
            &[append(&car("a"), ExpectedVersion::NoStream, vec![ev(1)])],
            &meta(),
        )
        .await
        .unwrap();
    assert!(a[0].global_position > b[0].global_position);
    assert!(
        store
            .read_all(Checkpoint::START, 10)
            .await
            .unwrap()
            .is_empty()
    );
    tx_a.commit().await.unwrap();
    wait_visible(&store, b[0].checkpoint().max(a[0].checkpoint())).await;
    let all = store.read_all(Checkpoint::START, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        [a[0].event_id, b[0].event_id]
    );
}

#[tokio::test]
async fn a_subscription_survives_a_killed_connection_without_gap_or_duplicate() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let sub_store = EventStore::new(db.new_pool("fl-subscriber", 4).await);
    let (mut rx, sub) = spawn_subscriber(sub_store, Checkpoint::START);

    let write = |from: i64, to: i64| {
        let store = store.clone();
        async move {
            for i in from..to {
                store
                    .append(
                        &[append(
                            &car(&format!("c{}", i % 5)),
                            ExpectedVersion::Any,
                            vec![ev(i)],
                        )],
                        &meta(),
                    )
                    .await
                    .unwrap();
            }
        }
    };
    write(0, 50).await;
    let mut got = receive(&mut rx, 50).await;

    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'fl-subscriber'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(
        !killed.is_empty() && killed.iter().all(|k| *k),
        "no subscriber connection was killed"
    );

    write(50, 100).await;
    got.extend(receive(&mut rx, 50).await);
    let ns: Vec<i64> = got
        .iter()
        .map(|e| e.payload["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (0..100).collect::<Vec<_>>());
    // And nothing more arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
    sub.abort();
}

#[tokio::test]
async fn snapshots_keep_the_newest() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let s = car("c1");
    assert!(store.load_snapshot(&s).await.unwrap().is_none());
    let h2 = StreamHead {
        version: 2,
        hash: [2; 32],
    };
    let h1 = StreamHead {
        version: 1,
        hash: [1; 32],
    };
    store.save_snapshot(&s, h2, &json!({"v": 2})).await.unwrap();
    store.save_snapshot(&s, h1, &json!({"v": 1})).await.unwrap();
    let snap = store.load_snapshot(&s).await.unwrap().unwrap();
    assert_eq!(snap.head, h2);
    assert_eq!(snap.state, json!({"v": 2}));
}

#[tokio::test]
async fn upcasters_lift_old_payloads_on_read_only() {
    let db = TestDatabase::create().await;
    let s = car("c1");
    db.store()
        .append(
            &[append(
                &s,
                ExpectedVersion::NoStream,
                vec![NewEvent::new("RateChanged", 1, json!({"cents": 4500}))],
            )],
            &meta(),
        )
        .await
        .unwrap();
    let written = db.store().read_stream_raw(&s, 1, None).await.unwrap();
    wait_visible(&db.store(), written[0].checkpoint()).await;
    let mut upcasters = UpcasterRegistry::new();
    upcasters
        .register("RateChanged", 1, |mut p| {
            let cents = p["cents"].take();
            Ok(json!({"amount_minor": cents, "currency": "USD"}))
        })
        .register("RateChanged", 2, |mut p| {
            p["note"] = json!("v3");
            Ok(p)
        });
    let store = EventStore::with_upcasters(db.pool.clone(), upcasters);
    let read = store.read_stream(&s, 1, None).await.unwrap();
    assert_eq!(read[0].event_version, 3);
    assert_eq!(
        read[0].payload,
        json!({"amount_minor": 4500, "currency": "USD", "note": "v3"})
    );
    let all = store.read_all(Checkpoint::START, 10).await.unwrap();
    assert_eq!(all[0].payload, read[0].payload);
    // The stored row is untouched and its chain still verifies.
    let raw = store.read_stream_raw(&s, 1, None).await.unwrap();
    assert_eq!(raw[0].event_version, 1);
    assert_eq!(raw[0].payload, json!({"cents": 4500}));
    assert!(store.verify_stream(&s).await.unwrap().is_valid());

    let mut failing = UpcasterRegistry::new();
    failing.register("RateChanged", 1, |_| Err("no currency known".into()));
    let store = EventStore::with_upcasters(db.pool.clone(), failing);
    let err = store.read_stream(&s, 1, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            EventStoreError::Upcast {
                event_version: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_log_is_append_only_and_verify_names_the_first_altered_version() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let s = car("c1");
    let payloads = [
        json!({"n": 1, "rate": 0.1, "name": "Škoda \"Octavia\"", "tags": ["a", "b"]}),
        json!({"big": 12345678901234567890u64, "neg": -1.5e-7, "nested": {"z": null, "a": true}}),
        json!({"n": 3}),
        json!({"n": 4}),
    ];
    for p in &payloads {
        store
            .append(
                &[append(
                    &s,
                    ExpectedVersion::Any,
                    vec![NewEvent::new("Noted", 1, p.clone())],
                )],
                &meta(),
            )
            .await
            .unwrap();
    }
    let ok = store.verify_stream(&s).await.unwrap();
    assert!(ok.is_valid(), "{ok:?}");
    assert_eq!(ok.events, 4);

    for sql in [
        "UPDATE events SET payload = '{}' WHERE version = 2",
        "DELETE FROM events WHERE version = 4",
        "TRUNCATE events",
    ] {
        let err = sqlx::query(sql).execute(store.pool()).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }

    // A superuser disables the trigger and alters event 3.
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query(
        "UPDATE events SET payload = '{\"n\": 33}' WHERE aggregate_id = 'c1' AND version = 3",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let broken = store.verify_stream(&s).await.unwrap();
    assert_eq!(broken.first_broken_version, Some(3), "{broken:?}");

    // Deleting event 2 as well: the gap is now the first break.
    sqlx::query("DELETE FROM events WHERE aggregate_id = 'c1' AND version = 2")
        .execute(store.pool())
        .await
        .unwrap();
    let broken = store.verify_stream(&s).await.unwrap();
    assert_eq!(broken.first_broken_version, Some(2), "{broken:?}");
}
