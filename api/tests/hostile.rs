//! The API against hostile clients: every request's cost bounded before it is paid, limits that
//! cannot be side-stepped (batches, aliases, WebSocket), no personal data to the wrong people,
//! bad text refused as input, and headers that keep browsers and caches from leaking answers.

mod common;

use common::{Options, TestApp, at, ws_connect, ws_next, ws_subscribe};
use serde_json::{Value, json};

#[tokio::test]
async fn a_cars_live_position_is_shown_to_staff_analysts_and_integrators_only() {
    let app = TestApp::start().await;
    app.add_branch("BER", 52.52, 13.40).await;
    let car = app.add_car("BER", "Skoda", "40.00").await;
    app.ok(
        Some(&app.admin_token),
        "mutation($c: UUID!, $r: [TelemetryReadingInput!]!) { recordTelemetry(carId: $c, readings: $r) { accepted } }",
        json!({ "c": car, "r": [{ "recordedAt": at(0, -1), "position": { "latitude": 52.5, "longitude": 13.4 },
                                  "speedKph": 48.0, "odometerKm": 1200.0 }] }),
    )
    .await;
    let query =
        "query($c: UUID!) { car(id: $c) { id lastTelemetry { position { latitude } speedKph } } }";
    let (customer, _) = app.register("renter@fleet.test").await;
    for token in [None, Some(customer.as_str())] {
        let (status, body) = app.post(token, query, json!({ "c": car })).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["data"]["car"]["lastTelemetry"],
            Value::Null,
            "{body:#}"
        );
        let code = &body["errors"][0]["extensions"]["code"];
        assert!(code == "FORBIDDEN" || code == "UNAUTHENTICATED", "{body:#}");
    }
    let integrator = app.user_with_role("feed@fleet.test", "INTEGRATOR").await;
    let analyst = app.user_with_role("numbers@fleet.test", "ANALYST").await;
    assert_eq!(
        app.code(Some(&analyst), query, json!({ "c": car })).await,
        "FORBIDDEN"
    );
    // The customer who has the car out right now sees where it is.
    let booked = app
        .ok(
            Some(&customer),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
            json!({ "i": { "carId": car, "pickupAt": at(0, 2), "returnAt": at(2, 0) } }),
        )
        .await;
    let booking = booked["requestBooking"]["id"].clone();
    app.ok(
        Some(&customer),
        "mutation($b: UUID!) { payBooking(bookingId: $b, method: { kind: CARD, token: \"tok_visa\" }) { status } }",
        json!({ "b": booking }),
    )
    .await;
    app.ok(
        Some(&app.admin_token),
        "mutation($b: UUID!) { pickUpCar(bookingId: $b, odometerKm: 1300, fuelPercent: 80) { status } }",
        json!({ "b": booking }),
    )
    .await;
    for token in [&app.admin_token, &integrator, &customer] {
        // The telemetry read model follows the log: wait for the reading to show.
        let speed = common::eventually(20, || async {
            let data = app.ok(Some(token), query, json!({ "c": car })).await;
            data["car"]["lastTelemetry"]["speedKph"].as_f64()
        })
        .await;
        assert_eq!(speed, 48.0);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn batches_aliases_and_websocket_operations_all_count() {
    let app = TestApp::with(Options {
        rate_limit: 6,
        ..Options::default()
    })
    .await;
    let url = app.url("/graphql");
    let one = json!({ "query": "{ branches { code } }" });

    // More operations in one batch than allowed: refused whole, before any runs.
    let big: Vec<Value> = (0..11).map(|_| one.clone()).collect();
    let res = app.http.post(&url).json(&big).send().await.unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"],
        json!({ "code": "BATCH_TOO_LARGE", "limit": "batch", "max": 10 })
    );
    assert_eq!(
        body["errors"][0]["message"],
        "a batch may hold at most 10 operations; this one holds 11"
    );

    // Password guesses multiplied by aliases: one login per document.
    let guesses: String = (0..5)
        .map(|i| format!("g{i}: login(email: \"admin@fleet.test\", password: \"guess-{i}-xxxxxxx\") {{ token }} "))
        .collect();
    let (_, body) = app
        .post(None, &format!("mutation {{ {guesses} }}"), json!({}))
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["limit"], "credentials",
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["extensions"],
        json!({ "code": "QUERY_TOO_COMPLEX", "limit": "credentials", "max": 1 })
    );

    // Many aliases of one field: bounded per operation.
    let wide: String = (0..400)
        .map(|i| format!("a{i}: branches {{ code }} "))
        .collect();
    let (_, body) = app.post(None, &format!("{{ {wide} }}"), json!({})).await;
    assert_eq!(
        body["errors"][0]["extensions"],
        json!({ "code": "QUERY_TOO_COMPLEX", "limit": "rootFields", "max": 20 }),
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["message"],
        "an operation asks for 400 root fields (aliases included); at most 20 are allowed"
    );
    app.shutdown().await;

    // A batch of three counts as three requests. The limit is per user: a fresh user has 6.
    let app = TestApp::with(Options {
        rate_limit: 6,
        ..Options::default()
    })
    .await;
    let (token, _) = app.register("counted@fleet.test").await;
    let three: Vec<Value> = (0..3).map(|_| one.clone()).collect();
    let first = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth(&token)
        .json(&three)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth(&token)
        .json(&three)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200, "3 + 3 = 6 requests, the limit");
    let third = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth(&token)
        .json(&one)
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 429);

    // Over a WebSocket every operation counts too: a fresh user, 6 operations allowed.
    let (token, _) = app.register("socket@fleet.test").await;
    let mut ws = ws_connect(&app, &token).await;
    let mut outcomes = Vec::new();
    for i in 0..7 {
        ws_subscribe(&mut ws, &i.to_string(), "{ branches { code } }", json!({})).await;
        let first = ws_next(&mut ws).await;
        let errors = match first["type"].as_str() {
            Some("next") => first["payload"]["errors"].clone(),
            _ => first["payload"].clone(),
        };
        outcomes.push(match errors[0]["extensions"]["code"].as_str() {
            Some(code) => code.to_owned(),
            None => "ok".to_owned(),
        });
        if first["type"] == "next" {
            assert_eq!(ws_next(&mut ws).await["type"], "complete");
        }
    }
    assert_eq!(
        outcomes,
        ["ok", "ok", "ok", "ok", "ok", "ok", "RATE_LIMITED"]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_nul_character_in_any_text_is_bad_input_and_writes_nothing() {
    let app = TestApp::start().await;
    app.add_branch("BER", 52.52, 13.40).await;
    let before = app.event_count().await;
    let car = json!({ "make": "VW\u{0}", "model": "Golf", "year": 2024, "class": "COMPACT", "seats": 5,
                      "transmission": "MANUAL", "fuel": "PETROL", "dailyRate": "40.00", "branchCode": "BER" });
    let (_, body) = app
        .post(
            Some(&app.admin_token),
            "mutation($i: CarInput!) { addCar(input: $i) { id } }",
            json!({ "i": car }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body:#}"
    );
    assert_eq!(body["errors"][0]["extensions"]["limit"], "characters");
    // Written into the document as an escape, in a read: the same.
    let (_, body) = app
        .post(
            None,
            "{ fleetSummary(branchCode: \"BE\\u0000R\") { cars } }",
            json!({}),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body:#}"
    );
    assert_eq!(app.event_count().await, before);
    app.shutdown().await;
}

#[tokio::test]
async fn a_customer_sees_what_happened_to_a_booking_without_internal_fields() {
    let app = TestApp::start().await;
    app.add_branch("BER", 52.52, 13.40).await;
    let car = app.add_car("BER", "Skoda", "40.00").await;
    let (customer, _) = app.register("timeline@fleet.test").await;
    let booked = app
        .ok(
            Some(&customer),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i, idempotencyKey: \"secret-key-1\") { id } }",
            json!({ "i": { "carId": car, "pickupAt": at(3, 0), "returnAt": at(5, 0) } }),
        )
        .await;
    let id = booked["requestBooking"]["id"].clone();
    let query = "query($b: UUID!) { booking(id: $b) { timeline { eventType recordedAt payload metadata } } }";
    let mine = app.ok(Some(&customer), query, json!({ "b": id })).await;
    let entries = mine["booking"]["timeline"].as_array().unwrap();
    assert!(!entries.is_empty());
    for entry in entries {
        assert_eq!(entry["payload"], json!({}), "{entry:#}");
        assert_eq!(entry["metadata"], json!({}), "{entry:#}");
        assert!(entry["eventType"].as_str().is_some() && entry["recordedAt"].as_str().is_some());
    }
    assert!(!mine.to_string().contains("secret-key-1"));
    let staff = app
        .ok(Some(&app.admin_token), query, json!({ "b": id }))
        .await;
    assert_ne!(
        staff["booking"]["timeline"][0]["payload"],
        json!({}),
        "staff see the event as logged"
    );

    // The curated activity: paid with a declined card first, then a good one, then cancelled
    // (free this early, so refunded in full once the worker's refund runs; here, the steps up
    // to the cancellation).
    let pay = "mutation($b: UUID!, $t: String!, $k: String!) { payBooking(bookingId: $b,
        method: { kind: CARD, token: $t }, idempotencyKey: $k) { status } }";
    app.ok(
        Some(&customer),
        pay,
        json!({ "b": id, "t": "tok_chargeDeclined", "k": "try-1" }),
    )
    .await;
    app.ok(
        Some(&customer),
        pay,
        json!({ "b": id, "t": "tok_visa", "k": "try-2" }),
    )
    .await;
    app.ok(
        Some(&customer),
        "mutation($b: UUID!) { cancelBooking(id: $b, reason: \"plans changed\") { status } }",
        json!({ "b": id }),
    )
    .await;
    let activity = app
        .ok(
            Some(&customer),
            "query($b: UUID!) { booking(id: $b) { activity { at kind amount { amount currency } detail } } }",
            json!({ "b": id }),
        )
        .await;
    let entries = activity["booking"]["activity"].as_array().unwrap();
    let summary: Vec<(Value, Value, Value)> = entries
        .iter()
        .map(|e| {
            (
                e["kind"].clone(),
                e["amount"]["amount"].clone(),
                e["detail"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!("HELD"), json!("80.00"), Value::Null),
            (
                json!("PAYMENT_DECLINED"),
                Value::Null,
                json!("card declined")
            ),
            (json!("PAID"), json!("80.00"), Value::Null),
            (json!("CONFIRMED"), Value::Null, Value::Null),
            (json!("CANCELLED"), Value::Null, json!("plans changed")),
        ],
        "{activity:#}"
    );
    assert!(entries.iter().all(|e| e["at"].as_str().is_some()));
    let text = activity.to_string();
    for internal in ["try-1", "try-2", "ch_", "sandbox-card", "secret-key-1"] {
        assert!(!text.contains(internal), "{internal} leaked: {text}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn answers_carry_headers_that_keep_them_private() {
    let app = TestApp::start().await;
    let authed = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth(&app.admin_token)
        .json(&json!({ "query": "{ me { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(authed.headers()["x-content-type-options"], "nosniff");
    assert_eq!(authed.headers()["cache-control"], "no-store");
    let anonymous = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ branches { code } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.headers()["x-content-type-options"], "nosniff");
    // A malformed body names no internal type.
    let bad = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body("[1, 2]")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let text = bad.text().await.unwrap();
    assert!(!text.contains("BatchRequest"), "{text}");
    app.shutdown().await;
}

/// Guessing one account's password is limited per account, whatever the address: after 10
/// attempts in the window the 11th answers RATE_LIMITED with retryAfter, the right password
/// included, and other accounts are not affected.
#[tokio::test]
async fn login_attempts_are_limited_per_account() {
    let app = TestApp::start().await;
    app.register("guessed@fleet.test").await;
    app.register("bystander@fleet.test").await;
    let login = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }";
    for i in 0..10 {
        let code = app
            .code(
                None,
                login,
                json!({ "e": "guessed@fleet.test", "p": format!("wrong-guess-{i:04}") }),
            )
            .await;
        assert_eq!(code, "UNAUTHENTICATED", "attempt {i}");
    }
    let (_, body) = app
        .post(
            None,
            login,
            json!({ "e": "Guessed@Fleet.test", "p": "customer-password-1" }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{body:#}"
    );
    assert!(
        body["errors"][0]["extensions"]["retryAfter"]
            .as_u64()
            .unwrap()
            > 0
    );
    app.ok(
        None,
        login,
        json!({ "e": "bystander@fleet.test", "p": "customer-password-1" }),
    )
    .await;
    app.shutdown().await;
}

/// A request past its wall-clock budget is stopped and answered REQUEST_TIMEOUT (HTTP 503);
/// the server goes on serving.
#[tokio::test]
async fn a_request_over_its_time_budget_is_stopped() {
    let app = TestApp::with(Options {
        request_budget: std::time::Duration::from_millis(1),
        ..Options::default()
    })
    .await;
    // Hashing a password takes far longer than a millisecond.
    let res = app
        .http
        .post(app.url("/graphql"))
        .json(
            &json!({ "query": "mutation { register(input: { email: \"slow@fleet.test\", \
            password: \"a long enough password\", name: \"Slow\" }) { token } }" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"],
        json!({ "code": "REQUEST_TIMEOUT", "limit": "budgetMs", "max": 1 }),
        "{body:#}"
    );
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    app.shutdown().await;
}

/// One address trying many accounts is limited too (50 attempts per window by default),
/// though no single account reached its own limit.
#[tokio::test]
async fn login_attempts_are_limited_per_address() {
    let app = TestApp::start().await;
    app.register("real@fleet.test").await;
    let login = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }";
    // The test app logged its admin in from this address already: that is attempt one.
    for i in 1..50 {
        let code = app
            .code(
                None,
                login,
                json!({ "e": format!("nobody-{i}@fleet.test"), "p": "a guessed password" }),
            )
            .await;
        assert_eq!(code, "UNAUTHENTICATED", "attempt {i}");
    }
    let (_, body) = app
        .post(
            None,
            login,
            json!({ "e": "real@fleet.test", "p": "customer-password-1" }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{body:#}"
    );
    app.shutdown().await;
}

/// The next message of operation `id` (messages of other operations are skipped).
async fn ws_next_of(ws: &mut common::Ws, id: &str) -> Value {
    loop {
        let message = ws_next(ws).await;
        if message["id"] == id {
            return message;
        }
    }
}

/// The error code an operation's first message carries (`None` when it carries data).
fn ws_error_code(message: &Value) -> Option<String> {
    let errors = match message["type"].as_str() {
        Some("next") => &message["payload"]["errors"],
        _ => &message["payload"],
    };
    errors[0]["extensions"]["code"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn a_websocket_flood_is_bounded_per_connection_and_per_address() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let app = TestApp::with(Options {
        websocket: api::websocket::WebSocketLimits {
            max_operations: 3,
            connections_per_address: 2,
            init_timeout: std::time::Duration::from_millis(300),
        },
        ..Options::default()
    })
    .await;
    let admin = app.admin_token.clone();
    // The log holds an event, so a subscription to it answers at once with it.
    app.add_branch("LIS", 38.7223, -9.1393).await;
    app.add_car("LIS", "Fiat", "50.00").await;
    let tail = "subscription { events { position } }";

    // Three operations open at once; the fourth is refused at once, and costs nothing more.
    let mut ws = ws_connect(&app, &admin).await;
    for id in ["a", "b", "c"] {
        ws_subscribe(&mut ws, id, tail, json!({})).await;
        let first = ws_next_of(&mut ws, id).await;
        assert_eq!(ws_error_code(&first), None, "{first}");
    }
    ws_subscribe(&mut ws, "d", tail, json!({})).await;
    let refused = ws_next_of(&mut ws, "d").await;
    let error = match refused["type"].as_str() {
        Some("next") => refused["payload"]["errors"][0].clone(),
        _ => refused["payload"][0].clone(),
    };
    assert_eq!(
        error["extensions"],
        json!({ "code": "TOO_MANY_OPERATIONS", "limit": "openOperations", "max": 3 }),
        "{refused}"
    );
    assert_eq!(
        error["message"],
        "this connection already runs 3 operations, the most one connection may; complete one first"
    );
    // Completing one frees its place.
    ws.send(Message::text(
        json!({ "id": "a", "type": "complete" }).to_string(),
    ))
    .await
    .unwrap();
    ws_subscribe(&mut ws, "e", tail, json!({})).await;
    let first = ws_next_of(&mut ws, "e").await;
    assert_eq!(ws_error_code(&first), None, "{first}");

    // Two connections per address: the third upgrade is refused with 429.
    let second = ws_connect(&app, &admin).await;
    let request = || common::ws_request(&app);
    match tokio_tungstenite::connect_async(request()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(
                body["errors"][0]["extensions"],
                json!({ "code": "TOO_MANY_CONNECTIONS", "limit": "connections", "max": 2 })
            );
        }
        other => panic!(
            "a third connection was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    // A closed connection gives its place back.
    drop(second);
    let mut third = common::eventually(10, || async {
        tokio_tungstenite::connect_async(request())
            .await
            .ok()
            .map(|(ws, _)| ws)
    })
    .await;

    // A connection that never says connection_init is closed after the handshake's time.
    common::ws_closed(&mut third).await;

    // A message larger than a request body may be closes the connection.
    let huge = format!("{{ branches {{ code }} }} #{}", "x".repeat(100 * 1024));
    ws_subscribe(&mut ws, "f", &huge, json!({})).await;
    common::ws_closed(&mut ws).await;
    app.shutdown().await;
}

#[tokio::test]
async fn long_documents_and_many_directives_are_refused_before_they_cost() {
    let app = TestApp::start().await;
    // Over 32 KiB of query text (the body limit here is 64 KiB): refused before parsing.
    let long = format!("{{ branches {{ code }} }} #{}", "x".repeat(40 * 1024));
    let (_, body) = app.post(None, &long, json!({})).await;
    assert_eq!(
        body["errors"][0]["extensions"],
        json!({ "code": "REQUEST_TOO_LARGE", "limit": "documentBytes", "max": 32768 }),
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["message"],
        format!(
            "the query document is {} bytes long; at most 32768 are allowed",
            long.len()
        )
    );
    // 51 directives, each on a field of its own.
    let fields: String = (0..51)
        .map(|i| format!("c{i}: code @include(if: true) "))
        .collect();
    let (_, body) = app
        .post(None, &format!("{{ branches {{ {fields} }} }}"), json!({}))
        .await;
    assert_eq!(
        body["errors"][0]["extensions"],
        json!({ "code": "QUERY_TOO_COMPLEX", "limit": "directives", "max": 50 }),
        "{body:#}"
    );
    // 50 are fine.
    let fields: String = (0..50)
        .map(|i| format!("c{i}: code @include(if: true) "))
        .collect();
    let (_, body) = app
        .post(None, &format!("{{ branches {{ {fields} }} }}"), json!({}))
        .await;
    assert_eq!(body, json!({ "data": { "branches": [] } }));
    app.shutdown().await;
}
