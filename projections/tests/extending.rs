//! The worked examples of docs/extending.md, built and run: an event whose payload changed shape
//! read through an upcaster, and a read model of one's own with its query. The guide quotes
//! this file; when the code it shows changes, this test is what says so.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use cqrs_es::Aggregate as _;
use domain::car::{Car, CarEvent};
use eventstore::testing::TestDatabase;
use eventstore::{
    EventMetadata, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamAppend, StreamId,
};
use projections::runtime::{ApplyError, Projection};
use projections::{Projector, search};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

// --- Example 1: an event whose payload changed shape -----------------------------------------

/// Say an older release wrote `CarRegistered` version 1 with the rate as `{"rate": 4200,
/// "currency": "EUR"}`, and today's writes version 2 with `{"daily_rate": {"minor": 4200,
/// "currency": "EUR"}}` (its `event_version()` says "2"). The lift from 1 to 2:
fn car_registered_v1_to_v2(mut payload: Value) -> Result<Value, String> {
    let object = payload
        .as_object_mut()
        .ok_or("a CarRegistered payload is an object")?;
    let minor = object.remove("rate").ok_or("v1 has a rate")?;
    let currency = object.remove("currency").ok_or("v1 has a currency")?;
    object.insert(
        "daily_rate".into(),
        json!({ "minor": minor, "currency": currency }),
    );
    Ok(payload)
}

/// What `commands::upcasters::registry()` would return with the lift registered there.
fn registry() -> eventstore::UpcasterRegistry {
    let mut registry = commands::upcasters::registry();
    registry.register("CarRegistered", 1, car_registered_v1_to_v2);
    registry
}

#[tokio::test]
async fn an_old_payload_is_lifted_on_read_for_the_aggregate_and_the_read_models() {
    let db = TestDatabase::create().await;
    let store = EventStore::with_upcasters(db.pool.clone(), registry());
    let car = Uuid::now_v7();
    // A version-1 event as the older release wrote it.
    let old = NewEvent::new(
        "CarRegistered",
        1,
        json!({ "id": car, "details": serde_json::to_value(details("Fiat", "Panda", &[])).unwrap(),
                "rate": 4_200, "currency": "EUR", "branch": "LIS" }),
    );
    store
        .append(
            &[StreamAppend::new(
                StreamId::new("car", car.to_string()),
                ExpectedVersion::NoStream,
                vec![old],
            )],
            &EventMetadata::for_actor("an older release"),
        )
        .await
        .unwrap();

    // Read back: the newest shape, while the stored row (and its hash chain) stays as written.
    let stream = StreamId::new("car", car.to_string());
    let read = store.read_stream(&stream, 1, None).await.unwrap();
    assert_eq!(read[0].event_version, 2);
    let raw = store.read_stream_raw(&stream, 1, None).await.unwrap();
    assert_eq!(raw[0].event_version, 1);
    assert_eq!(raw[0].payload["rate"], 4_200);
    assert!(store.verify_stream(&stream).await.unwrap().is_valid());

    // The aggregate decodes it as today's event.
    let event = commands::codec::decode::<Car>(&read[0]).unwrap();
    let CarEvent::CarRegistered { daily_rate, .. } = &event else {
        panic!("{event:?}");
    };
    assert_eq!(*daily_rate, eur(4_200));
    let mut state = Car::default();
    state.apply(event);
    assert_eq!(state.daily_rate, Some(eur(4_200)));

    // And so do the read models, fed by the same store.
    catch_up(&store, projections::by_name("search").unwrap()).await;
    let found = search::car(&db.pool, car).await.unwrap().unwrap();
    assert_eq!(
        (found.daily_rate_minor, found.currency.as_str()),
        (4_200, "EUR")
    );
}

// --- Example 2: a read model of one's own, with its query ------------------------------------

/// Cars in service per class: a projection owns its tables (created by its migration; here by
/// `CREATE TABLE` below), folds a batch in memory and writes it with one statement, and is
/// deterministic, so a rebuild reproduces it.
struct CarsPerClass;

const CARS_PER_CLASS_TABLE: &str = "CREATE TABLE rm_cars_per_class (
    class text PRIMARY KEY,
    cars  bigint NOT NULL
)";

#[async_trait::async_trait]
impl Projection for CarsPerClass {
    fn name(&self) -> &'static str {
        "cars_per_class"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_cars_per_class"]
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        event.aggregate_type == "car" && event.event_type == "CarRegistered"
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ApplyError> {
        let mut added: HashMap<String, i64> = HashMap::new();
        for event in events {
            let decoded = commands::codec::decode::<Car>(event)
                .map_err(|e| ApplyError::Invalid(e.to_string()))?;
            if let CarEvent::CarRegistered { details, .. } = decoded {
                *added.entry(search::enum_name(&details.class)).or_default() += 1;
            }
        }
        let (classes, counts): (Vec<String>, Vec<i64>) = added.into_iter().unzip();
        sqlx::query(
            "INSERT INTO rm_cars_per_class (class, cars) \
             SELECT * FROM unnest($1::text[], $2::bigint[]) \
             ON CONFLICT (class) DO UPDATE SET cars = rm_cars_per_class.cars + EXCLUDED.cars",
        )
        .bind(classes)
        .bind(counts)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Its query, in domain terms: what the API would call (it writes no SQL of its own).
async fn cars_per_class(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT class, cars FROM rm_cars_per_class ORDER BY class")
        .fetch_all(pool)
        .await
}

#[tokio::test]
async fn a_read_model_of_ones_own_is_fed_by_the_runtime_and_answers_its_query() {
    let db = TestDatabase::create().await;
    sqlx::raw_sql(CARS_PER_CLASS_TABLE)
        .execute(&db.pool)
        .await
        .unwrap();
    let store = db.store();
    // The scripted March: two SUVs registered, among bookings, payments and telemetry the
    // projection does not want (they still move its checkpoint).
    scripted_history(&store).await;
    let projection: Arc<dyn Projection> = Arc::new(CarsPerClass);
    let at = Projector::postgres(store.clone(), projection, options())
        .catch_up()
        .await
        .unwrap();
    assert_eq!(
        cars_per_class(&db.pool).await.unwrap(),
        [("SUV".to_owned(), 2)]
    );
    // Its checkpoint is the log's head: it saw everything, exactly once.
    assert_eq!(at, store.visible_head().await.unwrap());
}
