//! The role and ownership matrix: each role can do what the contract's comments give it and
//! nothing else; every denial is UNAUTHENTICATED or FORBIDDEN, carries no data and writes
//! nothing.

mod common;

use common::{TestApp, at};
use serde_json::{Value, json};

/// Expect `code` for this operation, with the field's data null, and no event written.
async fn denied(app: &TestApp, token: Option<&str>, query: &str, vars: Value, code: &str) {
    let before = app.event_count().await;
    let (status, body) = app.post(token, query, vars).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], code,
        "{query}: expected {code}, got {body:#}"
    );
    let data = &body["data"];
    assert!(
        data.is_null() || data.as_object().unwrap().values().all(Value::is_null),
        "a denial returned data: {body:#}"
    );
    assert_eq!(
        app.event_count().await,
        before,
        "a denied request wrote events"
    );
}

#[tokio::test]
async fn every_role_gets_exactly_its_own_operations() {
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    app.add_branch("LIS", 38.7223, -9.1393).await;
    let car = app.add_car("LIS", "Fiat", "50.00").await;
    let (alice, _) = app.register("alice@example.com").await;
    let (bob, _) = app.register("bob@example.com").await;
    let auditor = app.user_with_role("audit@example.com", "AUDITOR").await;
    let analyst = app.user_with_role("analyst@example.com", "ANALYST").await;
    let integrator = app.user_with_role("device@example.com", "INTEGRATOR").await;
    let booked = app
        .ok(
            Some(&alice),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
            json!({ "i": { "carId": car, "pickupAt": at(3, 0), "returnAt": at(4, 0) } }),
        )
        .await;
    let booking = booked["requestBooking"]["id"].as_str().unwrap().to_owned();

    let add_car = "mutation { addCar(input: { make: \"X\", model: \"Y\", year: 2024, class: SUV, seats: 5, \
        transmission: MANUAL, fuel: DIESEL, dailyRate: \"10.00\", branchCode: \"LIS\" }) { id } }";
    let booking_q = "query($b: UUID!) { booking(id: $b) { id status } }";
    let cancel = "mutation($b: UUID!) { cancelBooking(id: $b) { status } }";
    let pay = "mutation($b: UUID!) { payBooking(bookingId: $b, method: { kind: CARD, token: \"tok_success\" }) { status } }";
    let events = "{ events(first: 5) { edges { node { eventType } } } }";
    let stream =
        "query($id: String!) { stream(aggregateType: \"car\", aggregateId: $id) { version } }";
    let metrics = "{ dailyMetrics(from: \"2026-01-01\", to: \"2026-01-31\") { date } }";
    let summary = "{ fleetSummary { cars } }";
    let telemetry = "mutation($c: UUID!, $t: DateTime!) { recordTelemetry(carId: $c, readings: [{ recordedAt: $t, \
        position: { latitude: 38.7, longitude: -9.1 }, odometerKm: 10 }]) { accepted } }";
    let all_bookings = "{ bookings { totalCount } }";
    let projections = "{ projections { name } }";
    let grant = "mutation($u: UUID!) { grantRole(userId: $u, role: ADMIN) { role } }";
    let b = json!({ "b": booking });
    let none = json!({});
    let car_vars = json!({ "id": car.to_string() });
    let now = chrono::Utc::now().to_rfc3339();
    let tel = json!({ "c": car, "t": now });

    // Anonymous: public reads work, `me` is null, the rest needs a token.
    let me = app.ok(None, "{ me { id } }", none.clone()).await;
    assert!(me["me"].is_null());
    app.ok(None, "{ branches { code } }", none.clone()).await;
    for (q, v) in [
        (add_car, &none),
        (booking_q, &b),
        (cancel, &b),
        (events, &none),
        (metrics, &none),
        ("{ myBookings { totalCount } }", &none),
    ] {
        denied(&app, None, q, v.clone(), "UNAUTHENTICATED").await;
    }
    denied(
        &app,
        Some("not-a-token"),
        "{ me { id } }",
        none.clone(),
        "UNAUTHENTICATED",
    )
    .await;

    // Another customer: not Alice's booking, nor staff operations.
    for (q, v) in [
        (booking_q, &b),
        (cancel, &b),
        (pay, &b),
        (add_car, &none),
        (events, &none),
        (stream, &car_vars),
        (metrics, &none),
        (summary, &none),
        (telemetry, &tel),
        (all_bookings, &none),
        (projections, &none),
    ] {
        denied(&app, Some(&bob), q, v.clone(), "FORBIDDEN").await;
    }
    let bob_id = app.ok(Some(&bob), "{ me { id } }", none.clone()).await["me"]["id"].clone();
    denied(&app, Some(&bob), grant, json!({ "u": bob_id }), "FORBIDDEN").await;

    // The owner reads her booking.
    let mine = app.ok(Some(&alice), booking_q, b.clone()).await;
    assert_eq!(mine["booking"]["status"], "HELD");

    // Auditor: the log, streams and bookings, read-only.
    app.ok(Some(&auditor), events, none.clone()).await;
    app.ok(Some(&auditor), stream, car_vars.clone()).await;
    app.ok(Some(&auditor), booking_q, b.clone()).await;
    for (q, v) in [
        (add_car, &none),
        (cancel, &b),
        (metrics, &none),
        (telemetry, &tel),
    ] {
        denied(&app, Some(&auditor), q, v.clone(), "FORBIDDEN").await;
    }

    // Analyst: analytics only.
    app.ok(Some(&analyst), metrics, none.clone()).await;
    app.ok(Some(&analyst), summary, none.clone()).await;
    for (q, v) in [
        (add_car, &none),
        (events, &none),
        (booking_q, &b),
        (telemetry, &tel),
    ] {
        denied(&app, Some(&analyst), q, v.clone(), "FORBIDDEN").await;
    }

    // Integrator: records telemetry; no fleet management, no bookings.
    let ack = app.ok(Some(&integrator), telemetry, tel.clone()).await;
    assert_eq!(ack["recordTelemetry"]["accepted"], 1);
    for (q, v) in [
        (add_car, &none),
        (booking_q, &b),
        (cancel, &b),
        (metrics, &none),
    ] {
        denied(&app, Some(&integrator), q, v.clone(), "FORBIDDEN").await;
    }

    // Admin: everything, including another customer's booking.
    app.ok(Some(&admin), all_bookings, none.clone()).await;
    app.ok(Some(&admin), projections, none.clone()).await;
    app.ok(Some(&admin), events, none.clone()).await;
    app.ok(Some(&admin), metrics, none.clone()).await;
    let cancelled = app.ok(Some(&admin), cancel, b.clone()).await;
    assert_eq!(cancelled["cancelBooking"]["status"], "CANCELLED");

    app.shutdown().await;
}

/// A demoted admin loses its rights with the next request (it cannot re-grant itself), and
/// ending sessions makes every earlier token stop working; logging in again works.
#[tokio::test]
async fn a_role_change_or_ended_sessions_revoke_tokens_at_once() {
    let app = TestApp::start().await;
    let second_admin = app.user_with_role("second-admin@fleet.test", "ADMIN").await;
    let me: Value = app
        .ok(Some(&second_admin), "{ me { id role } }", json!({}))
        .await;
    let id = me["me"]["id"].clone();
    assert_eq!(me["me"]["role"], "ADMIN");

    // Nobody changes its own role, not even an ADMIN.
    let (_, body) = app
        .post(
            Some(&second_admin),
            "mutation($u: UUID!) { grantRole(userId: $u, role: CUSTOMER) { role } }",
            json!({ "u": id }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body:#}"
    );

    // Demoted by the first admin: the token it holds stops working at once.
    app.ok(
        Some(&app.admin_token),
        "mutation($u: UUID!) { grantRole(userId: $u, role: CUSTOMER) { role } }",
        json!({ "u": id }),
    )
    .await;
    let regrant = "mutation($u: UUID!) { grantRole(userId: $u, role: ADMIN) { role } }";
    let (_, body) = app
        .post(Some(&second_admin), regrant, json!({ "u": id }))
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["message"],
        "the session has ended; log in again"
    );
    // Logged in again, it is a customer, and cannot grant itself anything.
    let login = app
        .ok(
            None,
            "mutation { login(email: \"second-admin@fleet.test\", password: \"customer-password-1\") { token } }",
            json!({}),
        )
        .await;
    let customer = login["login"]["token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.code(Some(&customer), regrant, json!({ "u": id })).await,
        "FORBIDDEN"
    );
    let role: String =
        sqlx::query_scalar("SELECT role FROM users WHERE email = 'second-admin@fleet.test'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(role, "CUSTOMER");

    // Ending one's own sessions: the token used stops working, a new login works.
    app.ok(Some(&customer), "mutation { endSessions }", json!({}))
        .await;
    assert_eq!(
        app.code(Some(&customer), "{ me { id } }", json!({})).await,
        "UNAUTHENTICATED"
    );
    // A customer may not end someone else's sessions.
    let (other, _) = app.register("other@fleet.test").await;
    let admin_id = app
        .ok(Some(&app.admin_token), "{ me { id } }", json!({}))
        .await["me"]["id"]
        .clone();
    assert_eq!(
        app.code(
            Some(&other),
            "mutation($u: UUID) { endSessions(userId: $u) }",
            json!({ "u": admin_id })
        )
        .await,
        "FORBIDDEN"
    );
    app.ok(Some(&app.admin_token), "{ me { id } }", json!({}))
        .await;
    app.shutdown().await;
}

/// Refresh tokens through the API: a refresh gives a working pair, a reused refresh token ends
/// the session (its access tokens included), `logout` ends one session and `logoutEverywhere`
/// all of them; a demoted user's refresh token does not bring its old role back.
#[tokio::test]
async fn sessions_refresh_rotate_and_end_through_the_api() {
    let app = TestApp::start().await;
    let login = "mutation($e: String!) { login(email: $e, password: \"customer-password-1\") {
        token refreshToken } }";
    let refresh = "mutation($r: String!) { refreshSession(refreshToken: $r) {
        token refreshToken user { role } } }";
    app.register("sessions@fleet.test").await;
    let signed_in = app
        .ok(None, login, json!({ "e": "sessions@fleet.test" }))
        .await["login"]
        .clone();
    let first_refresh = signed_in["refreshToken"].as_str().unwrap().to_owned();
    let rotated =
        app.ok(None, refresh, json!({ "r": first_refresh })).await["refreshSession"].clone();
    let token = rotated["token"].as_str().unwrap().to_owned();
    assert_eq!(rotated["user"]["role"], "CUSTOMER");
    app.ok(Some(&token), "{ me { id } }", json!({})).await;

    // The spent refresh token again: refused, and the session is over for every holder.
    let (_, body) = app.post(None, refresh, json!({ "r": first_refresh })).await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert_eq!(
        body["errors"][0]["message"],
        "the refresh token was used before: the session is ended on every device; log in again"
    );
    assert_eq!(
        app.code(Some(&token), "{ me { id } }", json!({})).await,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        app.code(None, refresh, json!({ "r": rotated["refreshToken"] }))
            .await,
        "UNAUTHENTICATED"
    );

    // logout ends only the caller's session.
    let phone = app
        .ok(None, login, json!({ "e": "sessions@fleet.test" }))
        .await["login"]
        .clone();
    let laptop = app
        .ok(None, login, json!({ "e": "sessions@fleet.test" }))
        .await["login"]
        .clone();
    let phone_token = phone["token"].as_str().unwrap().to_owned();
    let laptop_token = laptop["token"].as_str().unwrap().to_owned();
    app.ok(Some(&phone_token), "mutation { logout }", json!({}))
        .await;
    assert_eq!(
        app.code(Some(&phone_token), "{ me { id } }", json!({}))
            .await,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        app.code(None, refresh, json!({ "r": phone["refreshToken"] }))
            .await,
        "UNAUTHENTICATED"
    );
    app.ok(Some(&laptop_token), "{ me { id } }", json!({}))
        .await;

    // logoutEverywhere ends the rest.
    app.ok(
        Some(&laptop_token),
        "mutation { logoutEverywhere }",
        json!({}),
    )
    .await;
    assert_eq!(
        app.code(Some(&laptop_token), "{ me { id } }", json!({}))
            .await,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        app.code(None, refresh, json!({ "r": laptop["refreshToken"] }))
            .await,
        "UNAUTHENTICATED"
    );

    // A demoted admin's refresh token is dead too: the role change ended its sessions.
    let staff = app.user_with_role("staff@fleet.test", "ADMIN").await;
    let staff_login = app
        .ok(None, login, json!({ "e": "staff@fleet.test" }))
        .await["login"]
        .clone();
    let staff_id = app.ok(Some(&staff), "{ me { id } }", json!({})).await["me"]["id"].clone();
    app.ok(
        Some(&app.admin_token),
        "mutation($u: UUID!) { grantRole(userId: $u, role: CUSTOMER) { role } }",
        json!({ "u": staff_id }),
    )
    .await;
    assert_eq!(
        app.code(None, refresh, json!({ "r": staff_login["refreshToken"] }))
            .await,
        "UNAUTHENTICATED"
    );
    app.shutdown().await;
}

/// A subscription lives as long as its session: demoted, or logged out, the WebSocket closes.
#[tokio::test]
async fn a_websocket_closes_when_its_session_ends() {
    let app = TestApp::start().await;
    let auditor = app.user_with_role("auditor@fleet.test", "AUDITOR").await;
    let auditor_id = app.ok(Some(&auditor), "{ me { id } }", json!({})).await["me"]["id"].clone();
    let mut feed = common::ws_connect(&app, &auditor).await;
    common::ws_subscribe(
        &mut feed,
        "log",
        "subscription { events { position eventType } }",
        json!({}),
    )
    .await;
    // A customer's socket on the side stays open throughout.
    let (customer, _) = app.register("bystander@fleet.test").await;
    let mut other = common::ws_connect(&app, &customer).await;

    app.ok(
        Some(&app.admin_token),
        "mutation($u: UUID!) { grantRole(userId: $u, role: CUSTOMER) { role } }",
        json!({ "u": auditor_id }),
    )
    .await;
    common::ws_closed(&mut feed).await;

    // The other socket still answers.
    common::ws_subscribe(
        &mut other,
        "me",
        "subscription($b: UUID!) { bookingUpdates(bookingId: $b) { id } }",
        json!({ "b": uuid::Uuid::now_v7() }),
    )
    .await;
    let answer = common::ws_next(&mut other).await;
    assert_eq!(answer["id"], "me", "{answer:#}");

    // Logging out closes the customer's socket too.
    app.ok(Some(&customer), "mutation { logout }", json!({}))
        .await;
    common::ws_closed(&mut other).await;
    app.shutdown().await;
}
