//! What is read back from the log equals, bit for bit, what was appended: floats of every kind,
//! large integers and long strings, through append -> read -> verify, snapshots, and
//! export -> verify-export. (The relay's side is in relay/tests/kafka.rs.)

use eventstore::audit::{self, ExportFilter};
use eventstore::testing::TestDatabase;
use eventstore::{
    EventMetadata, EventStore, EventStoreError, ExpectedVersion, NewEvent, RecordedEvent,
    StreamAppend, StreamHead, StreamId,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

/// Floats that have tripped JSON codecs: shortest forms needing 17 digits, the extremes,
/// subnormals, integral values around 2^53, 1e16 and 2^64, and negative zero.
#[allow(
    clippy::excessive_precision,
    reason = "the literals are written as tools print them, some with more digits than needed"
)]
const AWKWARD: &[f64] = &[
    0.1,
    0.2,
    0.30000000000000004,
    1.0 / 3.0,
    2.0 / 3.0,
    1e-300,
    1e308,
    f64::MAX,
    f64::MIN,
    f64::MIN_POSITIVE,
    5e-324,
    2.2250738585072009e-308,
    -0.0,
    0.0,
    9007199254740993.0,
    9007199254740992.0,
    1e15,
    1e16,
    -1e16,
    1.2345678901234567e18,
    18446744073709549568.0,
    18446744073709551616.0,
    -9223372036854775808.0,
    -9223372036854777856.0,
    1e21,
    52.52000800000001,
    13.404954,
    123456.789e-20,
];

/// What the log keeps of an f64: itself, except that -0.0 is kept as 0.0 (a JSON number read
/// back from a decimal has no negative zero).
fn kept(x: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x }
}

fn floats_of(payload: &Value) -> Vec<f64> {
    serde_json::from_value(payload["f"].clone()).expect("floats decode")
}

async fn append_one(store: &EventStore, id: &str, payload: Value) -> RecordedEvent {
    store
        .append(
            &[StreamAppend::new(
                StreamId::new("exact", id),
                ExpectedVersion::Any,
                vec![NewEvent::new("Measured", 1, payload)],
            )],
            &EventMetadata::for_actor("exact-test"),
        )
        .await
        .expect("append")
        .remove(0)
}

/// Append, read back, compare bits, verify the chain.
async fn round_trip(store: &EventStore, floats: &[f64], text: &str, ints: &[i64]) {
    let id = uuid::Uuid::new_v4().to_string();
    let appended = append_one(store, &id, json!({ "f": floats, "s": text, "i": ints })).await;
    let stream = appended.stream();
    let read = store
        .read_stream_raw(&stream, 1, None)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(read, appended, "the row read back is the event recorded");
    let back = floats_of(&read.payload);
    assert_eq!(back.len(), floats.len());
    for (a, b) in floats.iter().zip(&back) {
        assert_eq!(kept(*a).to_bits(), b.to_bits(), "{a:e} came back as {b:e}");
    }
    assert_eq!(read.payload["s"].as_str(), Some(text));
    let ints_back: Vec<i64> = serde_json::from_value(read.payload["i"].clone()).unwrap();
    assert_eq!(ints_back, ints);
    let verification = store.verify_stream(&stream).await.unwrap();
    assert!(verification.is_valid(), "{verification:?}");
}

fn awkward_or_any() -> impl Strategy<Value = f64> {
    prop_oneof![
        proptest::sample::select(AWKWARD),
        any::<f64>().prop_filter("finite", |x| x.is_finite()),
        // Values whose shortest form needs 15 to 17 digits.
        (1u64..u64::MAX).prop_map(|bits| f64::from_bits(bits >> 2)),
    ]
}

#[test]
fn random_floats_integers_and_strings_read_back_bit_for_bit() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDatabase::create());
    let store = rt.block_on(async { db.store() });
    let mut runner = TestRunner::new(Config {
        cases: 128,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(awkward_or_any(), 1..40),
        "[^\u{0}]{0,300}",
        proptest::collection::vec(any::<i64>(), 0..6),
    );
    runner
        .run(&strategy, |(floats, text, ints)| {
            let floats: Vec<f64> = floats.into_iter().filter(|x| x.is_finite()).collect();
            rt.block_on(round_trip(&store, &floats, &text, &ints));
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn every_awkward_float_and_a_long_string_survive_append_snapshot_and_export() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let long: String = "Grüße aus Köln, 東京 → 🚗 ".repeat(20_000);
    round_trip(&store, AWKWARD, &long, &[i64::MIN, -1, 0, 1, i64::MAX]).await;

    // Snapshots keep state bit for bit too.
    let stream = StreamId::new("exact", "snapshot");
    let state = json!({ "f": AWKWARD, "u": u64::MAX });
    let head = StreamHead {
        version: 1,
        hash: [7; 32],
    };
    store.save_snapshot(&stream, head, &state).await.unwrap();
    let snapshot = store.load_snapshot(&stream).await.unwrap().unwrap();
    let back = floats_of(&snapshot.state);
    for (a, b) in AWKWARD.iter().zip(&back) {
        assert_eq!(
            kept(*a).to_bits(),
            b.to_bits(),
            "snapshot: {a:e} came back as {b:e}"
        );
    }
    assert_eq!(snapshot.state["u"].as_u64(), Some(u64::MAX));

    // The export carries the same bits and verifies without a database.
    let mut file = Vec::new();
    audit::export(&store, &ExportFilter::default(), &mut file, |_| {})
        .await
        .unwrap();
    let report = audit::verify_export(file.as_slice()).unwrap();
    assert!(report.is_intact(), "{report:?}");
    let exported: RecordedEvent =
        serde_json::from_slice(file.split(|b| *b == b'\n').next().unwrap()).unwrap();
    let back = floats_of(&exported.payload);
    for (a, b) in AWKWARD.iter().zip(&back) {
        assert_eq!(
            kept(*a).to_bits(),
            b.to_bits(),
            "export: {a:e} came back as {b:e}"
        );
    }
    let report = audit::verify_all(&store, |_| {}).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
}

#[tokio::test]
async fn a_string_with_a_nul_character_is_refused_and_nothing_is_written() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let refused = store
        .append(
            &[StreamAppend::new(
                StreamId::new("exact", "nul"),
                ExpectedVersion::NoStream,
                vec![NewEvent::new("Measured", 1, json!({ "make": "VW\u{0}" }))],
            )],
            &EventMetadata::for_actor("exact-test"),
        )
        .await
        .unwrap_err();
    match refused {
        EventStoreError::InvalidAppend(message) => {
            assert!(
                message.contains("$.make") && message.contains("NUL"),
                "{message}"
            );
        }
        other => panic!("expected InvalidAppend, got {other:?}"),
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}
