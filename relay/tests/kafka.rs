//! The Kafka sink and the relay projector against a real tansu broker: every event arrives as
//! the CloudEvent the log implies, in order per key, through a frozen and a restarted broker.

use std::collections::HashSet;
use std::time::Duration;

use eventstore::testing::TestDatabase;
use eventstore::{EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend, StreamId};
use projections::runtime::{ExternalSink, RunOptions, SinkError};
use relay::testing::{
    Broker, check_delivery, consume_as_group, consume_until, has_all, read_log, test_config,
};
use relay::{AGGREGATE_TYPES, KafkaSink};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Append `rounds` events to each of `streams` streams per aggregate type, a few per append.
async fn write_history(store: &EventStore, streams: usize, rounds: usize) {
    for round in 0..rounds {
        for kind in AGGREGATE_TYPES {
            for s in 0..streams {
                store
                    .append(
                        &[StreamAppend::new(
                            StreamId::new(kind, format!("{kind}-{s}")),
                            ExpectedVersion::Any,
                            vec![
                                NewEvent::new("Noted", 1, json!({"round": round, "n": 0})),
                                NewEvent::new("Noted", 1, json!({"round": round, "n": 1})),
                            ],
                        )],
                        &EventMetadata::for_actor("test"),
                    )
                    .await
                    .unwrap();
            }
        }
    }
}

fn options() -> RunOptions {
    RunOptions {
        poll_interval: Duration::from_millis(100),
        lease_poll: Duration::from_millis(200),
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        ..RunOptions::default()
    }
}

async fn status(db: &TestDatabase, name: &str) -> Option<projections::ProjectionStatus> {
    projections::status::list(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
}

async fn eventually<F, Fut>(db: &TestDatabase, secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        if tokio::time::Instant::now() >= deadline {
            let statuses = projections::status::list(&db.pool).await;
            panic!("timed out: {what}; status: {statuses:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reached(status: &projections::ProjectionStatus, head: eventstore::Checkpoint) -> bool {
    (status.transaction_id, status.position) >= (head.transaction_id, head.global_position)
}

fn ids(log: &[eventstore::RecordedEvent]) -> HashSet<String> {
    log.iter().map(|e| e.event_id.to_string()).collect()
}

#[tokio::test]
async fn a_delivered_batch_is_on_the_broker_as_cloudevents_in_order_per_key() {
    let db = TestDatabase::create().await;
    let store = db.store();
    write_history(&store, 3, 4).await;
    let log = read_log(&store).await;
    assert_eq!(log.len(), 4 * 3 * 4 * 2);

    let broker = Broker::start().await;
    let config = test_config(&broker.brokers());
    let sink = KafkaSink::new(config.clone()).unwrap();
    sink.prepare().await.unwrap();
    for batch in log.chunks(25) {
        sink.deliver(batch).await.unwrap();
    }

    let expected = ids(&log);
    let received = consume_until(&config, Duration::from_secs(30), move |r| {
        has_all(&expected, r)
    })
    .await;
    let report = check_delivery(&config, &log, &received).unwrap();
    assert_eq!(report.duplicates, 0, "{report:?}");
    assert_eq!(report.messages, log.len());
    // Each aggregate type has its topic, created with the configured partition count.
    let topics: HashSet<_> = received.iter().map(|m| m.topic.clone()).collect();
    assert_eq!(topics.len(), 4);
    let partitions: HashSet<_> = received.iter().map(|m| m.partition).collect();
    assert!(partitions.len() > 1, "all on one partition: {partitions:?}");
}

#[tokio::test]
async fn an_event_of_an_unknown_aggregate_type_is_poison() {
    let db = TestDatabase::create().await;
    let store = db.store();
    store
        .append(
            &[
                StreamAppend::new(
                    StreamId::new("car", "c"),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("Noted", 1, json!({}))],
                ),
                StreamAppend::new(
                    StreamId::new("ledger", "l"),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("Noted", 1, json!({}))],
                ),
            ],
            &EventMetadata::for_actor("test"),
        )
        .await
        .unwrap();
    let log = read_log(&store).await;
    // Never reaches a broker: the batch is refused before anything is produced.
    let sink = KafkaSink::new(test_config("127.0.0.1:9")).unwrap();
    let poison = log
        .iter()
        .position(|e| e.aggregate_type == "ledger")
        .unwrap();
    match sink.deliver(&log).await {
        Err(SinkError::Poison { index, reason }) => {
            assert_eq!(index, poison);
            assert!(reason.contains("ledger"), "{reason}");
        }
        other => panic!("expected poison, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_broker_fails_the_batch_as_transient() {
    let db = TestDatabase::create().await;
    let store = db.store();
    write_history(&store, 1, 1).await;
    let log = read_log(&store).await;
    let broker = Broker::start().await;
    let mut config = test_config(&broker.brokers());
    config.delivery_timeout = Duration::from_secs(2);
    let sink = KafkaSink::new(config).unwrap();
    sink.prepare().await.unwrap();
    broker.freeze();
    let result = sink.deliver(&log).await;
    broker.thaw();
    assert!(matches!(result, Err(SinkError::Transient(_))), "{result:?}");
    // Once the broker answers again the same batch goes through.
    sink.deliver(&log).await.unwrap();
}

/// The relay as a projector, writers appending all along; the broker freezes mid-stream (no
/// answer at all) for longer than the delivery timeout: the relay reports "stalled", and after
/// the broker comes back everything is there, in order per key, duplicates only of ids seen.
#[tokio::test]
async fn the_relay_rides_out_a_frozen_broker_without_losing_an_event() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let broker = Broker::start().await;
    let mut config = test_config(&broker.brokers());
    config.delivery_timeout = Duration::from_secs(2);
    let name = config.name.clone();
    let token = CancellationToken::new();
    let projector = relay::projector(store.clone(), config.clone(), options()).unwrap();
    let relay_task = tokio::spawn(projector.run_until_cancelled(token.clone()));

    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..30 {
                write_history(&store, 2, 1).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    eventually(&db, 30, "relay running", || async {
        status(&db, &name).await.is_some_and(|s| s.position > 0)
    })
    .await;
    broker.freeze();
    eventually(&db, 30, "relay reports the stall", || async {
        status(&db, &name)
            .await
            .is_some_and(|s| s.state == "stalled")
    })
    .await;
    let stalled = status(&db, &name).await.unwrap();
    assert!(stalled.error.is_some(), "{stalled:?}");
    broker.thaw();
    writer.await.unwrap();

    let head = store.committed_head().await.unwrap();
    eventually(&db, 60, "relay catches up", || async {
        status(&db, &name)
            .await
            .is_some_and(|s| reached(&s, head) && s.state == "running")
    })
    .await;
    let log = read_log(&store).await;
    let expected = ids(&log);
    let received = consume_until(&config, Duration::from_secs(30), move |r| {
        has_all(&expected, r)
    })
    .await;
    let report = check_delivery(&config, &log, &received).unwrap();
    eprintln!("frozen broker: {report:?}");
    token.cancel();
    relay_task.await.unwrap().unwrap();
}

/// The broker is killed and a new one starts on the same port. tansu here stores in memory, so
/// the new broker is empty: what the old one acknowledged is gone with it (a broker that loses
/// acknowledged data is outside any producer's guarantee). What the relay must do: see the
/// broker gone, stall, create its topics again on the new broker, and deliver everything after
/// the checkpoint it held when the broker died, in order per key.
#[tokio::test]
async fn the_relay_recreates_its_topics_on_a_restarted_empty_broker() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let mut broker = Broker::start().await;
    let mut config = test_config(&broker.brokers());
    config.delivery_timeout = Duration::from_secs(2);
    let name = config.name.clone();
    let token = CancellationToken::new();
    let projector = relay::projector(store.clone(), config.clone(), options()).unwrap();
    let relay_task = tokio::spawn(projector.run_until_cancelled(token.clone()));

    write_history(&store, 2, 3).await;
    let head = store.committed_head().await.unwrap();
    eventually(&db, 30, "first events relayed", || async {
        status(&db, &name).await.is_some_and(|s| reached(&s, head))
    })
    .await;
    broker.kill();
    let at_kill = status(&db, &name).await.unwrap();
    write_history(&store, 2, 3).await;
    eventually(&db, 30, "relay reports the stall", || async {
        status(&db, &name)
            .await
            .is_some_and(|s| s.state == "stalled")
    })
    .await;
    broker.restart().await;
    let head = store.committed_head().await.unwrap();
    eventually(&db, 60, "relay catches up on the new broker", || async {
        status(&db, &name)
            .await
            .is_some_and(|s| reached(&s, head) && s.state == "running")
    })
    .await;

    let log = read_log(&store).await;
    let after_kill: Vec<_> = log
        .iter()
        .filter(|e| {
            (e.transaction_id, e.global_position) > (at_kill.transaction_id, at_kill.position)
        })
        .cloned()
        .collect();
    assert_eq!(after_kill.len(), 4 * 2 * 3 * 2);
    let expected = ids(&after_kill);
    let received = consume_until(&config, Duration::from_secs(30), move |r| {
        has_all(&expected, r)
    })
    .await;
    // Everything on the new broker is in the log; every event after the checkpoint is there.
    let all_ids = ids(&log);
    assert!(received.iter().all(|m| all_ids.contains(&m.id())));
    let tail_ids = ids(&after_kill);
    let tail: Vec<_> = received
        .into_iter()
        .filter(|m| tail_ids.contains(&m.id()))
        .collect();
    check_delivery(&config, &after_kill, &tail).unwrap();
    token.cancel();
    relay_task.await.unwrap().unwrap();
}

/// A message the broker can never take (over the producer's 1 MB `message.max.bytes`) stops
/// the relay at that event instead of retrying it forever; the events before it are delivered.
#[tokio::test]
async fn an_event_too_large_for_the_broker_is_poison() {
    let db = TestDatabase::create().await;
    let store = db.store();
    write_history(&store, 1, 1).await;
    store
        .append(
            &[StreamAppend::new(
                StreamId::new("car", "huge"),
                ExpectedVersion::NoStream,
                vec![NewEvent::new(
                    "Noted",
                    1,
                    json!({"blob": "x".repeat(1_200_000)}),
                )],
            )],
            &EventMetadata::for_actor("test"),
        )
        .await
        .unwrap();
    let log = read_log(&store).await;
    let broker = Broker::start().await;
    let sink = KafkaSink::new(test_config(&broker.brokers())).unwrap();
    match sink.deliver(&log).await {
        Err(SinkError::Poison { index, reason }) => {
            assert_eq!(log[index].aggregate_id, "huge", "{reason}");
        }
        other => panic!("expected poison, got {other:?}"),
    }
}

/// The consumption path docs/integrators.md recommends: a consumer group reads everything from
/// the earliest offset and commits; after more events are relayed, the same group resumes
/// after its commit and reads only the new ones.
#[tokio::test]
async fn a_consumer_group_reads_everything_then_resumes_after_its_commit() {
    let db = TestDatabase::create().await;
    let store = db.store();
    write_history(&store, 2, 2).await;
    let first = read_log(&store).await;
    let broker = Broker::start().await;
    let config = test_config(&broker.brokers());
    let sink = KafkaSink::new(config.clone()).unwrap();
    sink.deliver(&first).await.unwrap();

    let expected = ids(&first);
    let got = consume_as_group(&config, "billing", Duration::from_secs(60), move |r| {
        has_all(&expected, r)
    })
    .await;
    check_delivery(&config, &first, &got).unwrap();

    write_history(&store, 2, 1).await;
    let all = read_log(&store).await;
    let second: Vec<_> = all[first.len()..].to_vec();
    sink.deliver(&second).await.unwrap();
    let expected = ids(&second);
    let got = consume_as_group(&config, "billing", Duration::from_secs(60), move |r| {
        has_all(&expected, r)
    })
    .await;
    let old = ids(&first);
    assert!(
        got.iter().all(|m| !old.contains(&m.id())),
        "the group read again what it had committed"
    );
    check_delivery(&config, &second, &got).unwrap();
}
