//! Concurrent requests for one car over HTTP: exactly one booking is held, every other request
//! gets CONFLICT with a readable message (never a 500), and the log holds one reservation.

mod common;

use common::{TestApp, at};
use serde_json::json;

#[tokio::test]
async fn concurrent_requests_for_one_car_hold_exactly_one_booking() {
    let app = TestApp::start().await;
    app.add_branch("LIS", 38.7223, -9.1393).await;
    let car = app.add_car("LIS", "Fiat", "50.00").await;
    let (customer, _) = app.register("c@example.com").await;
    let query = "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id status } }";
    let vars = json!({ "i": { "carId": car, "pickupAt": at(3, 0), "returnAt": at(5, 0) } });
    let attempts =
        futures::future::join_all((0..16).map(|_| app.post(Some(&customer), query, vars.clone())))
            .await;
    let mut held = 0;
    for (status, body) in &attempts {
        assert_eq!(*status, 200, "{body:#}");
        if body["errors"].is_null() {
            assert_eq!(body["data"]["requestBooking"]["status"], "HELD");
            held += 1;
        } else {
            assert_eq!(
                body["errors"][0]["extensions"]["code"], "CONFLICT",
                "{body:#}"
            );
            assert!(
                body["errors"][0]["message"]
                    .as_str()
                    .unwrap()
                    .contains("not free"),
                "{body:#}"
            );
        }
    }
    assert_eq!(held, 1);
    let reservations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'CarReserved' AND aggregate_id = $1",
    )
    .bind(car.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(reservations, 1);
    app.shutdown().await;
}
