//! `fleetledger relay` as a process: says why when Kafka is not configured, and loses nothing
//! when killed with SIGKILL mid-stream and started again (duplicates only of ids already sent).

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eventstore::testing::TestDatabase;
use eventstore::{
    Checkpoint, EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend, StreamId,
};
use relay::RelayConfig;
use relay::testing::{Broker, check_delivery, consume_until, has_all, read_log, test_config};
use serde_json::json;

fn fleetledger() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetledger"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("KAFKA_BROKERS")
        .env("RUST_LOG", "info");
    cmd
}

/// A relay process, killed with SIGKILL when dropped.
struct RelayProcess(Child);

impl RelayProcess {
    fn start(db: &TestDatabase, config: &RelayConfig) -> Self {
        let show = std::env::var_os("TEST_LOG").is_some();
        let child = fleetledger()
            .arg("relay")
            .env("DATABASE_URL", db.url())
            .env("KAFKA_BROKERS", &config.brokers)
            .env("FLEETLEDGER_KAFKA_TOPIC_PREFIX", &config.topic_prefix)
            .env("FLEETLEDGER_KAFKA_PARTITIONS", "3")
            .env("FLEETLEDGER_KAFKA_DELIVERY_TIMEOUT_MS", "5000")
            .env("FLEETLEDGER_KAFKA_BATCH", "50")
            .stdout(Stdio::null())
            .stderr(if show {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        Self(child)
    }

    fn kill_9(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn checkpoint(db: &TestDatabase) -> Checkpoint {
    projections::runtime::load_checkpoint(&db.pool, "relay.kafka")
        .await
        .unwrap()
}

async fn wait_for_checkpoint(db: &TestDatabase, what: &str, done: impl Fn(Checkpoint) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let at = checkpoint(db).await;
        if done(at) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: {what}; checkpoint {at}; status {:?}",
            projections::status::list(&db.pool).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn append_round(store: &EventStore, round: usize) {
    for kind in relay::AGGREGATE_TYPES {
        for s in 0..3 {
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

#[test]
fn relay_without_kafka_brokers_says_why() {
    let out = fleetledger().arg("relay").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("KAFKA_BROKERS is not set"), "{stderr}");
}

/// Writers append all along; the relay process is killed with SIGKILL three times at moments
/// when it has delivered some events and not others, and started again each time. At the end
/// the broker holds every event of the log, in order per key; the only extra messages repeat
/// ids already delivered.
#[tokio::test]
async fn a_relay_killed_with_sigkill_mid_stream_loses_nothing() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let broker = Broker::start().await;
    let config = test_config(&broker.brokers());

    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for round in 0..60 {
                append_round(&store, round).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut relay = RelayProcess::start(&db, &config);
    for kill in 0..3 {
        let before = checkpoint(&db).await;
        wait_for_checkpoint(&db, "the relay delivers", |at| at > before).await;
        // Let it get into the middle of the next batches, then kill it without warning.
        tokio::time::sleep(Duration::from_millis(150 * (kill + 1))).await;
        relay.kill_9();
        relay = RelayProcess::start(&db, &config);
    }
    writer.await.unwrap();
    let head = store.committed_head().await.unwrap();
    wait_for_checkpoint(&db, "the relay catches up", |at| at >= head).await;
    drop(relay);

    let log = read_log(&store).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        (log.len(), count),
        (60 * 4 * 3 * 2, 60 * 4 * 3 * 2),
        "head {head}"
    );
    let expected: HashSet<String> = log.iter().map(|e| e.event_id.to_string()).collect();
    let received = consume_until(&config, Duration::from_secs(60), move |r| {
        has_all(&expected, r)
    })
    .await;
    let report = check_delivery(&config, &log, &received).unwrap();
    eprintln!("kill -9 x3: {report:?}");
}
