//! Bad input on every class of argument: a clear code naming the field, never a 500 and
//! never a write.

mod common;

use common::{TestApp, at};
use serde_json::{Value, json};

/// Expect `code` (and `field`, when given), with nothing written.
async fn rejected(
    app: &TestApp,
    token: &str,
    query: &str,
    vars: Value,
    code: &str,
    field: Option<&str>,
) {
    let before = app.event_count().await;
    let (status, body) = app.post(Some(token), query, vars).await;
    assert!(status < 500, "{status}: {body:#}");
    let error = &body["errors"][0];
    assert_eq!(error["extensions"]["code"], code, "{query}: {body:#}");
    if let Some(field) = field {
        assert_eq!(error["extensions"]["field"], field, "{query}: {body:#}");
    }
    assert_eq!(app.event_count().await, before, "{query} wrote events");
}

#[tokio::test]
async fn bad_arguments_get_clear_codes_and_write_nothing() {
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    app.add_branch("LIS", 38.7223, -9.1393).await;
    let car = app.add_car("LIS", "Fiat", "50.00").await;
    let (customer, _) = app.register("c@example.com").await;
    let held = app
        .ok(
            Some(&customer),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
            json!({ "i": { "carId": car, "pickupAt": at(3, 0), "returnAt": at(4, 0) } }),
        )
        .await;
    let booking = held["requestBooking"]["id"].as_str().unwrap().to_owned();
    let request = "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }";
    let add_car = "mutation($r: Decimal!, $s: Int!, $m: String!) { addCar(input: { make: $m, model: \"Y\", year: 2024, \
        class: SUV, seats: $s, transmission: MANUAL, fuel: DIESEL, dailyRate: $r, branchCode: \"LIS\" }) { id } }";
    let feedback =
        "mutation($b: UUID!, $r: Int!) { submitFeedback(bookingId: $b, rating: $r) { rating } }";
    let huge = "x".repeat(20_000);

    // A currency must be ISO 4217 with cents: not made up, not one kept in other units yet.
    for code in ["XYZ", "JPY"] {
        rejected(
            &app,
            &admin,
            "mutation($c: String!) { addCar(input: { make: \"X\", model: \"Y\", year: 2024, \
             class: SUV, seats: 5, transmission: MANUAL, fuel: DIESEL, dailyRate: \"10.00\", \
             currency: $c, branchCode: \"LIS\" }) { id } }",
            json!({ "c": code }),
            "BAD_USER_INPUT",
            Some("currency"),
        )
        .await;
    }

    // Dates reversed.
    rejected(
        &app,
        &customer,
        request,
        json!({ "i": { "carId": car, "pickupAt": at(4, 0), "returnAt": at(3, 0) } }),
        "BAD_USER_INPUT",
        Some("returnAt"),
    )
    .await;
    rejected(
        &app,
        &customer,
        "query($f: CarSearchInput!) { searchCars(filter: $f) { totalCount } }",
        json!({ "f": { "pickupAt": at(4, 0), "returnAt": at(3, 0) } }),
        "BAD_USER_INPUT",
        Some("returnAt"),
    )
    .await;
    rejected(&app, &admin,
        "mutation($c: UUID!, $s: DateTime!, $e: DateTime!) { scheduleMaintenance(id: $c, start: $s, end: $e, reason: \"oil\") { id } }",
        json!({ "c": car, "s": at(5, 0), "e": at(4, 0) }),
        "BAD_USER_INPUT", Some("end")).await;
    // A pickup in the past.
    rejected(
        &app,
        &customer,
        request,
        json!({ "i": { "carId": car, "pickupAt": at(-2, 0), "returnAt": at(-1, 0) } }),
        "BAD_USER_INPUT",
        None,
    )
    .await;
    // Negative, zero and malformed money.
    rejected(
        &app,
        &admin,
        add_car,
        json!({ "r": "-5.00", "s": 5, "m": "X" }),
        "BAD_USER_INPUT",
        Some("dailyRate"),
    )
    .await;
    rejected(
        &app,
        &admin,
        add_car,
        json!({ "r": "0", "s": 5, "m": "X" }),
        "BAD_USER_INPUT",
        Some("dailyRate"),
    )
    .await;
    rejected(
        &app,
        &admin,
        add_car,
        json!({ "r": "12.345", "s": 5, "m": "X" }),
        "BAD_USER_INPUT",
        None,
    )
    .await;
    rejected(
        &app,
        &admin,
        add_car,
        json!({ "r": "abc", "s": 5, "m": "X" }),
        "BAD_USER_INPUT",
        None,
    )
    .await;
    rejected(
        &app,
        &admin,
        add_car,
        json!({ "r": "10.00", "s": 500, "m": "X" }),
        "BAD_USER_INPUT",
        Some("seats"),
    )
    .await;
    rejected(
        &app,
        &admin,
        "mutation($c: UUID!) { changeDailyRate(id: $c, dailyRate: \"-1\") { id } }",
        json!({ "c": car }),
        "BAD_USER_INPUT",
        Some("dailyRate"),
    )
    .await;
    // Unknown ids.
    let unknown = uuid::Uuid::now_v7();
    rejected(
        &app,
        &customer,
        request,
        json!({ "i": { "carId": unknown, "pickupAt": at(3, 0), "returnAt": at(4, 0) } }),
        "NOT_FOUND",
        None,
    )
    .await;
    rejected(
        &app,
        &admin,
        "mutation($c: UUID!) { retireCar(id: $c, reason: \"old\") { id } }",
        json!({ "c": unknown }),
        "NOT_FOUND",
        None,
    )
    .await;
    rejected(
        &app,
        &customer,
        feedback,
        json!({ "b": unknown, "r": 5 }),
        "NOT_FOUND",
        None,
    )
    .await;
    rejected(
        &app,
        &customer,
        "query($b: UUID!) { booking(id: $b) { id } }",
        json!({ "b": "not-a-uuid" }),
        "BAD_USER_INPUT",
        None,
    )
    .await;
    rejected(
        &app,
        &admin,
        "mutation($c: UUID!) { relocateCar(id: $c, branchCode: \"NOPE\") { id } }",
        json!({ "c": car }),
        "BAD_USER_INPUT",
        Some("branchCode"),
    )
    .await;
    // Ratings out of range.
    rejected(
        &app,
        &customer,
        feedback,
        json!({ "b": booking, "r": 0 }),
        "BAD_USER_INPUT",
        Some("rating"),
    )
    .await;
    rejected(
        &app,
        &customer,
        feedback,
        json!({ "b": booking, "r": 6 }),
        "BAD_USER_INPUT",
        Some("rating"),
    )
    .await;
    // Huge strings.
    rejected(
        &app,
        &admin,
        add_car,
        json!({ "r": "10.00", "s": 5, "m": huge }),
        "BAD_USER_INPUT",
        Some("make"),
    )
    .await;
    rejected(
        &app,
        &customer,
        "mutation($n: String!) { updateProfile(input: { name: $n }) { id } }",
        json!({ "n": huge }),
        "BAD_USER_INPUT",
        Some("name"),
    )
    .await;
    rejected(
        &app,
        &customer,
        "mutation($b: UUID!, $r: String!) { cancelBooking(id: $b, reason: $r) { id } }",
        json!({ "b": booking, "r": huge }),
        "BAD_USER_INPUT",
        Some("reason"),
    )
    .await;
    // Out-of-range numbers and pages.
    rejected(
        &app,
        &admin,
        "mutation($b: UUID!) { pickUpCar(bookingId: $b, odometerKm: -1, fuelPercent: 50) { id } }",
        json!({ "b": booking }),
        "BAD_USER_INPUT",
        Some("odometerKm"),
    )
    .await;
    rejected(
        &app,
        &customer,
        "{ myBookings(first: 100000) { totalCount } }",
        json!({}),
        "BAD_USER_INPUT",
        Some("first"),
    )
    .await;
    // Business rules are conflicts: paying a cancelled booking.
    app.ok(
        Some(&customer),
        "mutation($b: UUID!) { cancelBooking(id: $b) { id } }",
        json!({ "b": booking }),
    )
    .await;
    rejected(&app, &customer,
        "mutation($b: UUID!) { payBooking(bookingId: $b, method: { kind: CARD, token: \"tok_success\" }) { id } }",
        json!({ "b": booking }), "CONFLICT", None).await;
    // Unknown fields and syntax errors.
    rejected(
        &app,
        &customer,
        "{ nope }",
        json!({}),
        "BAD_USER_INPUT",
        None,
    )
    .await;
    rejected(
        &app,
        &customer,
        "{ me { id ",
        json!({}),
        "BAD_USER_INPUT",
        None,
    )
    .await;

    app.shutdown().await;
}

#[tokio::test]
async fn malformed_oversized_and_deep_requests_are_refused_with_a_graphql_body() {
    let app = TestApp::start().await;
    let url = app.url("/graphql");

    let res = app
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"query\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");

    let big = json!({ "query": format!("{{ me {{ id }} }} # {}", "x".repeat(100_000)) });
    let res = app.http.post(&url).json(&big).send().await.unwrap();
    assert_eq!(res.status(), 413);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "REQUEST_TOO_LARGE");
    assert_eq!(body["errors"][0]["extensions"]["limit"], "bodyBytes");

    let mut deep = String::from("id");
    // 18 levels of fields: past the depth limit (12), well inside the parser's own (32).
    for _ in 0..8 {
        deep = format!("booking {{ payment {{ {deep} }} }}");
    }
    let query = format!("query($p: UUID!) {{ payment(id: $p) {{ {deep} }} }}");
    let (status, body) = app
        .post(
            Some(&app.admin_token),
            &query,
            json!({ "p": uuid::Uuid::now_v7() }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["errors"][0]["extensions"],
        json!({ "code": "QUERY_TOO_COMPLEX", "limit": "depth", "max": 12 }),
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["message"], "the query nests 18 levels deep; at most 12 are allowed",
        "{body:#}"
    );

    // 25 fragments, each spreading the next twice (about 900 bytes, 2^25 fields expanded):
    // refused right after parsing, before validation would expand it, and the server stays
    // responsive.
    let mut bomb = String::from("{...F0}");
    for i in 0..25 {
        bomb.push_str(&format!(
            " fragment F{i} on Query{{...F{n} ...F{n}}}",
            n = i + 1
        ));
    }
    bomb.push_str(" fragment F25 on Query{__typename}");
    assert!(bomb.len() < 1_000);
    let (status, body) = app.post(None, &bomb, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["errors"][0]["extensions"],
        json!({ "code": "QUERY_TOO_COMPLEX", "limit": "fields", "max": 2000 }),
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["message"],
        "the query selects 33554432 fields once its fragments are expanded; at most 2000 are allowed"
    );
    assert!(body.get("data").is_none_or(Value::is_null), "{body:#}");
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // Within the depth limit, but 100 cars times 100 events each: refused before it runs.
    let (status, body) = app
        .post(
            Some(&app.admin_token),
            "query($f: CarSearchInput!) { searchCars(filter: $f, first: 100) { edges { node { \
             history(first: 100) { edges { node { position eventType payload metadata hash } } } } } } }",
            json!({ "f": { "pickupAt": "2030-01-01T00:00:00Z", "returnAt": "2030-01-02T00:00:00Z" } }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX",
        "{body:#}"
    );
    assert_eq!(body["errors"][0]["extensions"]["limit"], "complexity");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too complex"),
        "{body:#}"
    );

    let res = app.http.get(app.url("/graphql?query=mutation%7Bregister(input%3A%7Bemail%3A%22a%40b.cd%22%2Cpassword%3A%22x%22%2Cname%3A%22n%22%7D)%7Btoken%7D%7D")).send().await.unwrap();
    assert_eq!(res.status(), 405);

    let res = app.http.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "NOT_FOUND");

    app.shutdown().await;
}
