//! `fleetledger serve` (API, projectors, relay in one process) while the cluster's transaction
//! counter crosses 10,000 and 100,000 under live traffic.
//!
//! A reader that ordered transaction ids as text applied the batch spanning a boundary out of
//! order, moved its checkpoint back, stopped the history and analytics projections, made the
//! server unready for good, and the relay lost and repeated events. Here every path that reads
//! the log in commit order is driven across both boundaries on a cluster of the test's own.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{ADMIN, PASSWORD, Serve, gql, in_days};
use eventstore::testing::{TestCluster, eventually};
use eventstore::{Checkpoint, Xid8};
use futures::{SinkExt, StreamExt};
use relay::testing::{Broker, check_delivery, consume_until, has_all, read_log, test_config};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn next_transaction_id(cluster: &TestCluster) -> u64 {
    let next: Xid8 = sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())")
        .fetch_one(&cluster.pool)
        .await
        .unwrap();
    next.0
}

fn fleetledger(cluster: &TestCluster, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fleetledger"))
        .args(args)
        .env("DATABASE_URL", cluster.url())
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_projectors_and_relay_cross_ten_thousand_and_a_hundred_thousand() {
    let cluster = TestCluster::start("serve-digits").await;
    let broker = Broker::start().await;
    let config = test_config(&broker.brokers());
    let serve = Serve::start(
        &cluster.url(),
        &[
            ("KAFKA_BROKERS", &config.brokers),
            ("FLEETLEDGER_KAFKA_TOPIC_PREFIX", &config.topic_prefix),
            ("FLEETLEDGER_KAFKA_PARTITIONS", "3"),
            ("FLEETLEDGER_KAFKA_BATCH", "50"),
            ("FLEETLEDGER_PROJECTOR_BATCH", "25"),
        ],
    );
    let addr = serve.addr.clone();
    eventually(60, "serve is ready", || async {
        reqwest::get(format!("http://{addr}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    let login = gql(
        &addr,
        None,
        "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
        json!({ "e": ADMIN, "p": PASSWORD }),
    )
    .await;
    let admin = login["login"]["token"].as_str().unwrap().to_owned();
    gql(
        &addr,
        Some(&admin),
        "mutation { addBranch(input: { code: \"BER\", name: \"Berlin Hbf\", city: \"Berlin\", \
           position: { latitude: 52.525, longitude: 13.369 } }) { code } }",
        json!({}),
    )
    .await;

    // Across 10,000: cars added through the API, each answered once the read models have it.
    assert!(next_transaction_id(&cluster).await < 9_900);
    cluster.burn_transactions(9_985).await;
    let mut cars = Vec::new();
    for i in 0..30 {
        let added = gql(
            &addr,
            Some(&admin),
            "mutation($i: CarInput!) { addCar(input: $i) { id } }",
            json!({ "i": {
                "make": "Skoda", "model": format!("Octavia {i}"), "year": 2024, "class": "COMPACT",
                "seats": 5, "transmission": "MANUAL", "fuel": "PETROL", "dailyRate": "49.90",
                "currency": "EUR", "branchCode": "BER" } }),
        )
        .await;
        cars.push(added["addCar"]["id"].as_str().unwrap().to_owned());
        // Read your writes: the car is searchable as soon as the mutation answered.
        let found = gql(
            &addr,
            None,
            "query($id: UUID!) { car(id: $id) { id model } }",
            json!({ "id": cars[i] }),
        )
        .await;
        assert_eq!(found["car"]["model"], format!("Octavia {i}"));
    }
    assert!(next_transaction_id(&cluster).await > 10_000);

    // Across 100,000: bookings by a customer, each retried with its idempotency key.
    let registered = gql(
        &addr,
        None,
        "mutation { register(input: { email: \"rita@digits.test\", password: \"rita's long password\", \
           name: \"Rita\" }) { token } }",
        json!({}),
    )
    .await;
    let customer = registered["register"]["token"].as_str().unwrap().to_owned();
    cluster.burn_transactions(99_985).await;
    let book = "mutation($i: BookingRequestInput!, $k: String) { \
                  requestBooking(input: $i, idempotencyKey: $k) { id status } }";
    for (n, car) in cars.iter().enumerate() {
        let vars = json!({
            "i": { "carId": car, "pickupAt": in_days(3), "returnAt": in_days(5) },
            "k": format!("booking-{n}"),
        });
        let first = gql(&addr, Some(&customer), book, vars.clone()).await;
        assert_eq!(first["requestBooking"]["status"], "HELD");
        let again = gql(&addr, Some(&customer), book, vars).await;
        assert_eq!(again, first, "a retry answers what the first request did");
    }
    assert!(next_transaction_id(&cluster).await > 100_000);
    let mine = gql(
        &addr,
        Some(&customer),
        "{ myBookings(first: 100) { totalCount } }",
        json!({}),
    )
    .await;
    assert_eq!(mine["myBookings"]["totalCount"], 30);

    // The log really holds events on both sides of both boundaries.
    for boundary in [10_000u64, 100_000] {
        let (below, above): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE transaction_id < $1), \
                    count(*) FILTER (WHERE transaction_id >= $1) FROM events",
        )
        .bind(Xid8(boundary))
        .fetch_one(&cluster.pool)
        .await
        .unwrap();
        assert!(below > 0 && above > 0, "events on both sides of {boundary}");
    }

    // Every projection and the relay reach the head and keep running; the server is ready.
    let store = cluster.store();
    let head = store.committed_head().await.unwrap();
    let pool = cluster.pool.clone();
    eventually(
        60,
        "every projection and the relay at the head, running",
        || async {
            let statuses = projections::status::list(&pool).await.unwrap();
            statuses.len() == projections::names().len() + 1
                && statuses.iter().all(|s| {
                    s.state == "running"
                        && Checkpoint {
                            transaction_id: s.transaction_id,
                            global_position: s.position,
                        } == head
                })
        },
    )
    .await;
    let ready = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());

    // A subscription from the start of the log catches up in commit order.
    let log = read_log(&store).await;
    let mut request = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let send = |v: Value| Message::text(v.to_string());
    ws.send(send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {admin}") } })))
        .await
        .unwrap();
    ws.send(send(json!({ "id": "1", "type": "subscribe",
        "payload": { "query": "subscription { events { eventId } }" } })))
        .await
        .unwrap();
    let mut followed = Vec::new();
    while followed.len() < log.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("the subscription keeps delivering")
            .unwrap()
            .unwrap();
        let Message::Text(text) = message else {
            continue;
        };
        let value: Value = serde_json::from_str(text.as_str()).unwrap();
        if value["type"] == "next" {
            followed.push(
                value["payload"]["data"]["events"]["eventId"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    let expected: Vec<String> = log.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(
        followed, expected,
        "the subscription's catch-up is the log in commit order"
    );

    // Every event reached Kafka once, in stream order.
    let ids = log.iter().map(|e| e.event_id.to_string()).collect();
    let received = consume_until(&config, Duration::from_secs(60), move |r| has_all(&ids, r)).await;
    let report = check_delivery(&config, &log, &received).unwrap();
    assert_eq!(report.duplicates, 0, "nothing was published twice");
    assert_eq!(report.messages, log.len());

    // A rebuild from the log agrees with the live read models.
    let rebuild = fleetledger(
        &cluster,
        &["projections", "rebuild", "--all", "--verify", "--dry-run"],
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&rebuild.stdout),
        String::from_utf8_lossy(&rebuild.stderr)
    );
    assert!(rebuild.status.success(), "{said}");

    // An anchor covers the true head and checks out.
    let anchor = fleetledger(&cluster, &["anchor"]);
    assert!(anchor.status.success());
    let token = String::from_utf8(anchor.stdout).unwrap().trim().to_owned();
    assert!(
        token.starts_with(&format!(
            "{}:{}:",
            head.transaction_id, head.global_position
        )),
        "{token} vs {head}"
    );
    let verify = fleetledger(&cluster, &["verify", "--all", "--against-anchor", &token]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
