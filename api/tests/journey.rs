//! A customer's journey through the real server: register, search, quote, book, pay (declined
//! then accepted), see it in the rental history, hand-over and return with fees, feedback and
//! the car's rating; a second booking cancelled frees its car. Every answer is read right after
//! the mutation that caused it (read-your-writes through the in-process projectors).

mod common;

use common::{TestApp, at};
use serde_json::json;

const SEARCH: &str = "query($f: CarSearchInput!) { searchCars(filter: $f) { totalCount \
    edges { cursor distanceKm node { id make status dailyRate { amount currency } branch { code } } } \
    pageInfo { hasNextPage endCursor } } }";

#[tokio::test]
async fn a_customer_books_pays_rents_returns_and_rates_a_car() {
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    app.add_branch("LIS", 38.7223, -9.1393).await;
    app.add_branch("OPO", 41.1579, -8.6291).await;
    let cheap = app.add_car("LIS", "Fiat", "50.00").await;
    let pricey = app.add_car("LIS", "Volvo", "80.00").await;
    let far = app.add_car("OPO", "Seat", "40.00").await;

    let (token, customer_id) = app.register("ana@example.com").await;
    let me = app
        .ok(Some(&token), "{ me { id email role } }", json!({}))
        .await;
    assert_eq!(me["me"]["email"], "ana@example.com");
    assert_eq!(me["me"]["role"], "CUSTOMER");
    assert_eq!(me["me"]["id"], customer_id.to_string());

    // Search near Lisbon: the Porto car is 270 km away, outside the default 25 km radius.
    let (pickup, ret) = (at(2, 0), at(5, 0));
    let filter = json!({ "pickupAt": pickup, "returnAt": ret,
                         "near": { "latitude": 38.72, "longitude": -9.14 } });
    let found = app.ok(Some(&token), SEARCH, json!({ "f": filter })).await;
    let edges = found["searchCars"]["edges"].as_array().unwrap();
    assert_eq!(found["searchCars"]["totalCount"], 2);
    assert_eq!(edges[0]["node"]["id"], cheap.to_string(), "cheapest first");
    assert_eq!(edges[1]["node"]["id"], pricey.to_string());
    assert_eq!(
        edges[0]["node"]["dailyRate"],
        json!({ "amount": "50.00", "currency": "USD" })
    );
    assert!(edges[0]["distanceKm"].as_f64().unwrap() < 1.0);
    assert!(!found.to_string().contains(&far.to_string()));

    let quote = app
        .ok(
            Some(&token),
            "query($c: UUID!, $p: DateTime!, $r: DateTime!) { quote(carId: $c, pickupAt: $p, returnAt: $r) \
             { days total { amount } lines { label amount { amount } } car { id } } }",
            json!({ "c": cheap, "p": pickup, "r": ret }),
        )
        .await;
    assert_eq!(quote["quote"]["days"], 3);
    let quoted_total = quote["quote"]["total"]["amount"]
        .as_str()
        .unwrap()
        .to_owned();

    let booked = app
        .ok(
            Some(&token),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i, idempotencyKey: \"k1\") \
             { id status heldUntil total { amount } customer { email } car { id } pickupBranch { code } } }",
            json!({ "i": { "carId": cheap, "pickupAt": pickup, "returnAt": ret } }),
        )
        .await;
    let booking = &booked["requestBooking"];
    assert_eq!(booking["status"], "HELD");
    assert!(booking["heldUntil"].is_string());
    assert_eq!(booking["total"]["amount"], quoted_total.as_str());
    assert_eq!(booking["customer"]["email"], "ana@example.com");
    let booking_id = booking["id"].as_str().unwrap().to_owned();

    // Read-your-writes: the booked car is no longer offered for that window.
    let found = app.ok(Some(&token), SEARCH, json!({ "f": filter })).await;
    assert_eq!(found["searchCars"]["totalCount"], 1);
    assert_eq!(
        found["searchCars"]["edges"][0]["node"]["id"],
        pricey.to_string()
    );

    // The same idempotency key gives the same booking, not a second one.
    let again = app
        .ok(
            Some(&token),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i, idempotencyKey: \"k1\") { id } }",
            json!({ "i": { "carId": cheap, "pickupAt": pickup, "returnAt": ret } }),
        )
        .await;
    assert_eq!(again["requestBooking"]["id"], booking_id.as_str());

    const PAY: &str = "mutation($b: UUID!, $t: String!, $k: String) { payBooking(bookingId: $b, \
        method: { kind: CARD, token: $t }, idempotencyKey: $k) { id status failureReason gateway \
        amount { amount } booking { status } } }";
    let declined = app
        .ok(
            Some(&token),
            PAY,
            json!({ "b": booking_id, "t": "tok_decline_insufficient_funds", "k": "pay-1" }),
        )
        .await;
    assert_eq!(declined["payBooking"]["status"], "FAILED");
    assert_eq!(
        declined["payBooking"]["failureReason"],
        "insufficient funds"
    );
    assert_eq!(declined["payBooking"]["booking"]["status"], "HELD");

    let paid = app
        .ok(
            Some(&token),
            PAY,
            json!({ "b": booking_id, "t": "tok_success", "k": "pay-2" }),
        )
        .await;
    assert_eq!(paid["payBooking"]["status"], "CAPTURED");
    assert_eq!(
        paid["payBooking"]["amount"]["amount"],
        quoted_total.as_str()
    );
    assert_eq!(paid["payBooking"]["booking"]["status"], "CONFIRMED");

    let history = app
        .ok(
            Some(&token),
            "{ myBookings { totalCount edges { node { id status payment { status } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(history["myBookings"]["totalCount"], 1);
    assert_eq!(
        history["myBookings"]["edges"][0]["node"]["status"],
        "CONFIRMED"
    );
    assert_eq!(
        history["myBookings"]["edges"][0]["node"]["payment"]["status"],
        "CAPTURED"
    );

    let picked = app
        .ok(
            Some(&admin),
            "mutation($b: UUID!) { pickUpCar(bookingId: $b, odometerKm: 1000, fuelPercent: 100) \
             { status car { status } } }",
            json!({ "b": booking_id }),
        )
        .await;
    assert_eq!(picked["pickUpCar"]["status"], "ACTIVE");
    assert_eq!(picked["pickUpCar"]["car"]["status"], "RENTED");

    let returned = app
        .ok(
            Some(&admin),
            "mutation($b: UUID!) { returnCar(bookingId: $b, odometerKm: 1250, fuelPercent: 80, branchCode: \"LIS\") \
             { status total { amount } lines { label amount { amount } } car { status odometerKm } } }",
            json!({ "b": booking_id }),
        )
        .await;
    let r = &returned["returnCar"];
    assert_eq!(r["status"], "COMPLETED");
    assert_eq!(r["car"]["status"], "AVAILABLE");
    let total = minor_units(r["total"]["amount"].as_str().unwrap());
    let quoted = minor_units(&quoted_total);
    assert!(
        total > quoted,
        "the refuelling fee is charged: {total} > {quoted}"
    );
    assert!(
        r["lines"].as_array().unwrap().len() > quote["quote"]["lines"].as_array().unwrap().len()
    );

    // Staff refund part of the rental; the payment shows it at once.
    let payment_id = paid["payBooking"]["id"].as_str().unwrap().to_owned();
    let refunded = app
        .ok(
            Some(&admin),
            "mutation($p: UUID!) { refundPayment(paymentId: $p, amount: \"10.00\") { status refunded { amount } } }",
            json!({ "p": payment_id }),
        )
        .await;
    assert_eq!(
        refunded["refundPayment"],
        json!({ "status": "PARTIALLY_REFUNDED", "refunded": { "amount": "10.00" } })
    );
    let seen = app
        .ok(
            Some(&token),
            "query($p: UUID!) { payment(id: $p) { status } }",
            json!({ "p": payment_id }),
        )
        .await;
    assert_eq!(seen["payment"]["status"], "PARTIALLY_REFUNDED");

    let profile = app
        .ok(
            Some(&token),
            "mutation { updateProfile(input: { name: \"Ana Silva\", phone: \"+351 912 345 678\" }) { name phone } }",
            json!({}),
        )
        .await;
    assert_eq!(
        profile["updateProfile"],
        json!({ "name": "Ana Silva", "phone": "+351 912 345 678" })
    );

    let feedback = app
        .ok(
            Some(&token),
            "mutation($b: UUID!) { submitFeedback(bookingId: $b, rating: 5, comment: \"Spotless\") \
             { rating comment booking { car { averageRating reviewCount } } } }",
            json!({ "b": booking_id }),
        )
        .await;
    let f = &feedback["submitFeedback"];
    assert_eq!(f["rating"], 5);
    assert_eq!(f["comment"], "Spotless");
    assert_eq!(f["booking"]["car"]["averageRating"], 5.0);
    assert_eq!(f["booking"]["car"]["reviewCount"], 1);

    let timeline = app
        .ok(
            Some(&token),
            "query($b: UUID!) { booking(id: $b) { timeline { eventType aggregateType } } }",
            json!({ "b": booking_id }),
        )
        .await;
    let types: Vec<&str> = timeline["booking"]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert!(types.len() >= 5, "{types:?}");

    // A second booking, cancelled: its car is offered again at once.
    let second = app
        .ok(
            Some(&token),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
            json!({ "i": { "carId": pricey, "pickupAt": pickup, "returnAt": ret } }),
        )
        .await;
    let second_id = second["requestBooking"]["id"].as_str().unwrap().to_owned();
    let found = app.ok(Some(&token), SEARCH, json!({ "f": filter })).await;
    assert_eq!(
        found["searchCars"]["totalCount"], 1,
        "only the returned car is free"
    );
    // Moved to a later, longer window: re-priced, and the first window is offered again.
    let moved = app
        .ok(
            Some(&token),
            "mutation($b: UUID!, $p: DateTime!, $r: DateTime!) { modifyBooking(id: $b, pickupAt: $p, returnAt: $r) \
             { status total { amount } } }",
            json!({ "b": second_id, "p": at(10, 0), "r": at(14, 0) }),
        )
        .await;
    assert_eq!(moved["modifyBooking"]["status"], "HELD");
    assert_eq!(
        moved["modifyBooking"]["total"]["amount"], "320.00",
        "4 days at 80.00"
    );
    let found = app.ok(Some(&token), SEARCH, json!({ "f": filter })).await;
    assert_eq!(found["searchCars"]["totalCount"], 2);
    let later = json!({ "pickupAt": at(11, 0), "returnAt": at(12, 0),
                        "near": { "latitude": 38.72, "longitude": -9.14 } });
    let found = app.ok(Some(&token), SEARCH, json!({ "f": later })).await;
    assert_eq!(found["searchCars"]["totalCount"], 1);
    let cancelled = app
        .ok(
            Some(&token),
            "mutation($b: UUID!) { cancelBooking(id: $b, reason: \"plans changed\") { status } }",
            json!({ "b": second_id }),
        )
        .await;
    assert_eq!(cancelled["cancelBooking"]["status"], "CANCELLED");
    let found = app.ok(Some(&token), SEARCH, json!({ "f": later })).await;
    assert_eq!(found["searchCars"]["totalCount"], 2);

    app.shutdown().await;
}

/// A decimal money string ("129.90") as integer minor units; money is never compared as a float.
fn minor_units(amount: &str) -> i64 {
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    let cents = format!("{fraction:0<2}");
    assert!(cents.len() == 2, "more than two decimals in {amount:?}");
    whole.parse::<i64>().unwrap() * 100 + cents.parse::<i64>().unwrap()
}
