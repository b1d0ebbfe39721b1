//! Analysts and integrators: daily metrics, car utilization and the fleet summary after a
//! scripted day; telemetry recorded, queried and streamed live (`carTelemetry`); a customer
//! following their booking (`bookingUpdates`).

mod common;

use common::{TestApp, at, eventually, ws_connect, ws_next, ws_subscribe};
use serde_json::json;

#[tokio::test]
async fn an_analyst_sees_the_day_and_integrators_stream_telemetry() {
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    let analyst = app.user_with_role("analyst@example.com", "ANALYST").await;
    let integrator = app.user_with_role("device@example.com", "INTEGRATOR").await;
    app.add_branch("LIS", 38.7223, -9.1393).await;
    let rented = app.add_car("LIS", "Fiat", "50.00").await;
    let other = app.add_car("LIS", "Volvo", "80.00").await;
    let (customer, _) = app.register("c@example.com").await;
    let request = "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }";

    // The day: one rental out and back, one booking cancelled while held.
    let first = app
        .ok(
            Some(&customer),
            request,
            // Picked up within the hour before its time, so not re-priced as an early pick-up.
            json!({ "i": { "carId": rented, "pickupAt": at(0, 1), "returnAt": at(2, 1) } }),
        )
        .await["requestBooking"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.ok(
        Some(&customer),
        "mutation($b: UUID!) { payBooking(bookingId: $b, method: { kind: CARD, token: \"tok_success\" }) { status } }",
        json!({ "b": first }),
    )
    .await;
    app.ok(Some(&admin), "mutation($b: UUID!) { pickUpCar(bookingId: $b, odometerKm: 100, fuelPercent: 100) { id } }", json!({ "b": first })).await;
    let done = app
        .ok(
            Some(&admin),
            "mutation($b: UUID!) { returnCar(bookingId: $b, odometerKm: 180, fuelPercent: 100, branchCode: \"LIS\") { total { amount } } }",
            json!({ "b": first }),
        )
        .await;
    let revenue = done["returnCar"]["total"]["amount"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = app
        .ok(
            Some(&customer),
            request,
            json!({ "i": { "carId": other, "pickupAt": at(1, 0), "returnAt": at(2, 0) } }),
        )
        .await["requestBooking"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The customer follows the second booking live, then cancels it.
    let mut follow = ws_connect(&app, &customer).await;
    ws_subscribe(
        &mut follow,
        "b",
        "subscription($b: UUID!) { bookingUpdates(bookingId: $b) { id status } }",
        json!({ "b": second }),
    )
    .await;
    // The current state first: from then on, every change is delivered.
    let current = ws_next(&mut follow).await;
    assert_eq!(
        current["payload"]["data"]["bookingUpdates"],
        json!({ "id": second, "status": "HELD" }),
        "{current:#}"
    );
    app.ok(
        Some(&customer),
        "mutation($b: UUID!) { cancelBooking(id: $b) { status } }",
        json!({ "b": second }),
    )
    .await;
    let update = ws_next(&mut follow).await;
    assert_eq!(
        update["payload"]["data"]["bookingUpdates"],
        json!({ "id": second, "status": "CANCELLED" }),
        "{update:#}"
    );

    let today = chrono::Utc::now().date_naive().to_string();
    let metrics = "query($d: NaiveDate!, $b: String) { dailyMetrics(from: $d, to: $d, branchCode: $b) { date branchCode \
        bookingsCreated bookingsCancelled rentalsStarted rentalsCompleted revenue { amount currency } utilization averageRentalDays } }";
    let day = eventually(20, || {
        let app = &app;
        let analyst = analyst.clone();
        let today = today.clone();
        async move {
            let data = app
                .ok(Some(&analyst), metrics, json!({ "d": today, "b": "LIS" }))
                .await;
            let row = data["dailyMetrics"][0].clone();
            (row["rentalsCompleted"] == 1 && row["bookingsCancelled"] == 1).then_some(row)
        }
    })
    .await;
    assert_eq!(day["date"], today.as_str());
    assert_eq!(day["branchCode"], "LIS");
    assert_eq!(day["bookingsCreated"], 2);
    assert_eq!(day["rentalsStarted"], 1);
    assert_eq!(
        day["revenue"],
        json!({ "amount": revenue, "currency": "USD" })
    );
    let utilization = day["utilization"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&utilization));

    let ranked = app
        .ok(
            Some(&analyst),
            "query($d: NaiveDate!) { carUtilization(from: $d, to: $d) { car { id } revenue { amount } distanceKm } }",
            json!({ "d": today }),
        )
        .await;
    let top = &ranked["carUtilization"][0];
    assert_eq!(top["car"]["id"], rented.to_string());
    assert_eq!(top["revenue"]["amount"], revenue.as_str());
    let summary = app
        .ok(
            Some(&analyst),
            "{ fleetSummary { cars available activeBookings } }",
            json!({}),
        )
        .await;
    assert_eq!(
        summary["fleetSummary"],
        json!({ "cars": 2, "available": 2, "activeBookings": 0 })
    );

    // Telemetry: streamed live to an integrator, then queryable, and the car's last reading.
    // A first reading, so that the subscription opens with it (and is then known to be live).
    let now = chrono::Utc::now();
    app.ok(
        Some(&integrator),
        "mutation($c: UUID!, $r: [TelemetryReadingInput!]!) { recordTelemetry(carId: $c, readings: $r) { accepted } }",
        json!({ "c": rented, "r": [{ "recordedAt": (now - chrono::TimeDelta::minutes(3)).to_rfc3339(),
                                     "position": { "latitude": 38.72, "longitude": -9.14 }, "odometerKm": 180.5 }] }),
    )
    .await;
    let mut stream = ws_connect(&app, &integrator).await;
    ws_subscribe(
        &mut stream,
        "t",
        "subscription($c: [UUID!]!) { carTelemetry(carIds: $c) { carId odometerKm } }",
        json!({ "c": [rented] }),
    )
    .await;
    let opening = ws_next(&mut stream).await;
    assert_eq!(
        opening["payload"]["data"]["carTelemetry"],
        json!({ "carId": rented, "odometerKm": 180.5 }),
        "{opening:#}"
    );
    let readings = json!([
        { "recordedAt": (now - chrono::TimeDelta::minutes(2)).to_rfc3339(), "position": { "latitude": 38.72, "longitude": -9.14 }, "odometerKm": 181.0, "fuelPercent": 90.0 },
        { "recordedAt": (now - chrono::TimeDelta::minutes(1)).to_rfc3339(), "position": { "latitude": 38.73, "longitude": -9.15 }, "odometerKm": 182.0, "speedKph": 50.0 },
        { "recordedAt": (now - chrono::TimeDelta::minutes(1)).to_rfc3339(), "position": { "latitude": 138.0, "longitude": -9.15 }, "odometerKm": 182.5 },
    ]);
    let ack = app
        .ok(
            Some(&integrator),
            "mutation($c: UUID!, $r: [TelemetryReadingInput!]!) { recordTelemetry(carId: $c, readings: $r) { accepted duplicates rejected } }",
            json!({ "c": rented, "r": readings }),
        )
        .await;
    assert_eq!(ack["recordTelemetry"]["accepted"], 2);
    assert_eq!(
        ack["recordTelemetry"]["rejected"].as_array().unwrap().len(),
        1
    );
    for km in [181.0, 182.0] {
        let msg = ws_next(&mut stream).await;
        assert_eq!(
            msg["payload"]["data"]["carTelemetry"],
            json!({ "carId": rented, "odometerKm": km }),
            "{msg:#}"
        );
    }
    let last = eventually(20, || {
        let app = &app;
        let analyst = analyst.clone();
        async move {
            let data = app
                .ok(
                    Some(&analyst),
                    "query($c: UUID!, $f: DateTime!, $t: DateTime!) { telemetry(carId: $c, from: $f, to: $t) { odometerKm } }",
                    json!({ "c": rented, "f": at(-1, 0), "t": at(1, 0) }),
                )
                .await;
            (data["telemetry"].as_array().unwrap().len() == 3).then_some(data)
        }
    })
    .await;
    assert_eq!(last["telemetry"][2]["odometerKm"], 182.0);
    // Where the car is now is for staff, integrators and its renter, not for analysts.
    let live = "query($c: UUID!) { car(id: $c) { lastTelemetry { odometerKm speedKph } } }";
    assert_eq!(
        app.code(Some(&analyst), live, json!({ "c": rented })).await,
        "FORBIDDEN"
    );
    let now = app
        .ok(Some(&app.admin_token), live, json!({ "c": rented }))
        .await;
    assert_eq!(
        now["car"]["lastTelemetry"],
        json!({ "odometerKm": 182.0, "speedKph": 50.0 })
    );

    app.shutdown().await;
}
