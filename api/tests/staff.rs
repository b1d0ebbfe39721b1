//! Staff: branches, cars, details and rate changes, relocation, maintenance that takes a car out
//! of search results and availability, reservations visible to staff, retirement.

mod common;

use common::{TestApp, at};
use serde_json::json;

#[tokio::test]
async fn staff_manage_the_fleet_and_search_follows() {
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    app.add_branch("LIS", 38.7223, -9.1393).await;
    app.add_branch("OPO", 41.1579, -8.6291).await;
    let branches = app
        .ok(
            None,
            "{ branches { code city position { latitude } } }",
            json!({}),
        )
        .await;
    assert_eq!(branches["branches"].as_array().unwrap().len(), 2);
    assert_eq!(
        app.code(
            Some(&admin),
            "mutation { addBranch(input: { code: \"LIS\", name: \"Again\", city: \"Lisbon\", \
             position: { latitude: 1, longitude: 1 } }) { code } }",
            json!({})
        )
        .await,
        "CONFLICT"
    );

    let car = app.add_car("LIS", "Fiat", "50.00").await;
    let updated = app
        .ok(
            Some(&admin),
            "mutation($c: UUID!) { updateCar(id: $c, input: { model: \"Panda\", seats: 4, features: [\"gps\", \"bluetooth\"] }) \
             { model seats features } }",
            json!({ "c": car }),
        )
        .await;
    assert_eq!(
        updated["updateCar"],
        json!({ "model": "Panda", "seats": 4, "features": ["gps", "bluetooth"] })
    );
    let rate = app
        .ok(
            Some(&admin),
            "mutation($c: UUID!) { changeDailyRate(id: $c, dailyRate: \"42.5\") { dailyRate { amount currency } } }",
            json!({ "c": car }),
        )
        .await;
    assert_eq!(
        rate["changeDailyRate"]["dailyRate"],
        json!({ "amount": "42.50", "currency": "USD" })
    );

    let search = "query($f: CarSearchInput!) { searchCars(filter: $f) { totalCount edges { node { id } } } }";
    let window = |branch: &str, text: Option<&str>| json!({ "f": { "pickupAt": at(10, 0), "returnAt": at(12, 0), "branchCode": branch, "text": text } });
    let found = app
        .ok(None, search, window("LIS", Some("panda bluetooth")))
        .await;
    assert_eq!(found["searchCars"]["totalCount"], 1);
    let found = app.ok(None, search, window("LIS", Some("tesla"))).await;
    assert_eq!(found["searchCars"]["totalCount"], 0);

    // Maintenance over the window takes the car out of the results and out of availability.
    let maintained = app
        .ok(
            Some(&admin),
            "mutation($c: UUID!, $s: DateTime!, $e: DateTime!) { scheduleMaintenance(id: $c, start: $s, end: $e, reason: \"tyres\") { id } }",
            json!({ "c": car, "s": at(9, 0), "e": at(13, 0) }),
        )
        .await;
    assert_eq!(maintained["scheduleMaintenance"]["id"], car.to_string());
    let found = app.ok(None, search, window("LIS", None)).await;
    assert_eq!(
        found["searchCars"]["totalCount"], 0,
        "a car in maintenance is not offered"
    );
    let free = app
        .ok(
            None,
            "query($c: UUID!, $f: DateTime!, $t: DateTime!) { availability(carId: $c, from: $f, to: $t) { start end } }",
            json!({ "c": car, "f": at(8, 0), "t": at(14, 0) }),
        )
        .await;
    let free = free["availability"].as_array().unwrap();
    assert_eq!(free.len(), 2, "{free:?}");
    let instant =
        |v: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    // The maintenance, with the turnaround (an hour) kept free on both sides, as booking does.
    assert_eq!(instant(&free[0]["end"]), instant(&json!(at(8, 23))));
    assert_eq!(instant(&free[1]["start"]), instant(&json!(at(13, 1))));
    let booked = app
        .code(
            Some(&admin),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
            json!({ "i": { "carId": car, "pickupAt": at(10, 0), "returnAt": at(12, 0) } }),
        )
        .await;
    assert_eq!(booked, "CONFLICT");

    // Relocated, then booked elsewhere in time: staff see the reservation.
    let moved = app
        .ok(
            Some(&admin),
            "mutation($c: UUID!) { relocateCar(id: $c, branchCode: \"OPO\") { branch { code } } }",
            json!({ "c": car }),
        )
        .await;
    assert_eq!(moved["relocateCar"]["branch"]["code"], "OPO");
    let (customer, _) = app.register("c@example.com").await;
    app.ok(
        Some(&customer),
        "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
        json!({ "i": { "carId": car, "pickupAt": at(20, 0), "returnAt": at(21, 0) } }),
    )
    .await;
    let reservations = "query($c: UUID!, $f: DateTime!, $t: DateTime!) { car(id: $c) { reservations(from: $f, to: $t) { start } } }";
    let vars = json!({ "c": car, "f": at(19, 0), "t": at(22, 0) });
    let seen = app.ok(Some(&admin), reservations, vars.clone()).await;
    assert_eq!(seen["car"]["reservations"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.code(Some(&customer), reservations, vars).await,
        "FORBIDDEN"
    );

    // A car with an upcoming booking cannot retire; another one can, and leaves search.
    assert_eq!(
        app.code(
            Some(&admin),
            "mutation($c: UUID!) { retireCar(id: $c, reason: \"old\") { id } }",
            json!({ "c": car })
        )
        .await,
        "CONFLICT"
    );
    let other = app.add_car("LIS", "Seat", "30.00").await;
    let retired = app
        .ok(
            Some(&admin),
            "mutation($c: UUID!) { retireCar(id: $c, reason: \"sold\") { status } }",
            json!({ "c": other }),
        )
        .await;
    assert_eq!(retired["retireCar"]["status"], "RETIRED");
    let found = app.ok(None, search, window("LIS", None)).await;
    assert_eq!(found["searchCars"]["totalCount"], 0);
    let summary = app
        .ok(
            Some(&admin),
            "{ fleetSummary { cars retired activeBookings } }",
            json!({}),
        )
        .await;
    assert_eq!(
        summary["fleetSummary"],
        json!({ "cars": 2, "retired": 1, "activeBookings": 1 })
    );

    app.shutdown().await;
}

/// A car handed over long before its booking starts is out from then on: nobody else can book
/// the days in between, and availability says so. Over another booking it is refused, saying
/// when the car can go.
#[tokio::test]
async fn an_early_pick_up_keeps_the_car_from_being_booked_twice() {
    let app = TestApp::start().await;
    app.add_branch("BER", 52.52, 13.40).await;
    let car = app.add_car("BER", "Skoda", "40.00").await;
    let book = "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }";
    let pay = "mutation($b: UUID!) { payBooking(bookingId: $b, method: { kind: CARD, token: \"tok_visa\" }) { status } }";
    let pick_up = "mutation($b: UUID!) { pickUpCar(bookingId: $b, odometerKm: 1200, fuelPercent: 90) { status } }";
    let (first, _) = app.register("early@fleet.test").await;
    let booking = app
        .ok(
            Some(&first),
            book,
            json!({ "i": { "carId": car, "pickupAt": at(13, 0), "returnAt": at(21, 0) } }),
        )
        .await["requestBooking"]["id"]
        .clone();
    app.ok(Some(&first), pay, json!({ "b": booking })).await;

    // Another customer holds days 3 to 5: handing over now for day 13 would overlap it.
    let (second, _) = app.register("between@fleet.test").await;
    let between = app
        .ok(
            Some(&second),
            book,
            json!({ "i": { "carId": car, "pickupAt": at(3, 0), "returnAt": at(5, 0) } }),
        )
        .await["requestBooking"]["id"]
        .clone();
    let (_, body) = app
        .post(Some(&app.admin_token), pick_up, json!({ "b": booking }))
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body:#}"
    );
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("too early to pick up"), "{message}");

    // Once that booking is cancelled, the early hand-over goes ahead and holds the car.
    app.ok(
        Some(&second),
        "mutation($b: UUID!) { cancelBooking(id: $b) { status } }",
        json!({ "b": between }),
    )
    .await;
    let picked = app
        .ok(Some(&app.admin_token), pick_up, json!({ "b": booking }))
        .await;
    assert_eq!(picked["pickUpCar"]["status"], "ACTIVE");
    let (_, body) = app
        .post(
            Some(&second),
            book,
            json!({ "i": { "carId": car, "pickupAt": at(3, 0), "returnAt": at(5, 0) } }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body:#}"
    );
    let free = app
        .ok(
            None,
            "query($c: UUID!, $f: DateTime!, $t: DateTime!) { availability(carId: $c, from: $f, to: $t) { start end } }",
            json!({ "c": car, "f": at(1, 0), "t": at(20, 0) }),
        )
        .await;
    assert_eq!(
        free["availability"],
        json!([]),
        "the car is out until day 21"
    );
    app.shutdown().await;
}

/// A car stays where its bookings expect it: relocating it with a booking waiting is refused,
/// and a car returned to another branch cannot be handed over where it is not.
#[tokio::test]
async fn a_car_is_handed_over_only_where_it_is_and_never_moved_from_under_a_booking() {
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    app.add_branch("BER", 52.52, 13.40).await;
    app.add_branch("HAM", 53.55, 9.99).await;
    let car = app.add_car("BER", "Opel", "45.00").await;
    let (customer, _) = app.register("where@fleet.test").await;
    let book = "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }";
    let pay = "mutation($b: UUID!) { payBooking(bookingId: $b, method: { kind: CARD, token: \"tok_visa\" }) { status } }";
    let one_way = app
        .ok(
            Some(&customer),
            book,
            json!({ "i": { "carId": car, "pickupAt": at(1, 0), "returnAt": at(2, 0), "returnBranchCode": "HAM" } }),
        )
        .await["requestBooking"]["id"]
        .clone();
    let later = app
        .ok(
            Some(&customer),
            book,
            json!({ "i": { "carId": car, "pickupAt": at(5, 0), "returnAt": at(6, 0) } }),
        )
        .await["requestBooking"]["id"]
        .clone();
    for b in [&one_way, &later] {
        app.ok(Some(&customer), pay, json!({ "b": b })).await;
    }

    // Moving the car would strand both bookings at BER.
    let relocate = "mutation($c: UUID!) { relocateCar(id: $c, branchCode: \"HAM\") { id } }";
    let (_, body) = app.post(Some(&admin), relocate, json!({ "c": car })).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["message"],
        "the car has upcoming bookings; cancel or move them first"
    );

    // The one-way rental ends at HAM: the later booking cannot take the car at BER.
    app.ok(
        Some(&admin),
        "mutation($b: UUID!) { pickUpCar(bookingId: $b, odometerKm: 100, fuelPercent: 100) { id } }",
        json!({ "b": one_way }),
    )
    .await;
    app.ok(
        Some(&admin),
        "mutation($b: UUID!) { returnCar(bookingId: $b, odometerKm: 400, fuelPercent: 100, branchCode: \"HAM\") { status } }",
        json!({ "b": one_way }),
    )
    .await;
    let (_, body) = app
        .post(
            Some(&admin),
            "mutation($b: UUID!) { pickUpCar(bookingId: $b, odometerKm: 400, fuelPercent: 100) { id } }",
            json!({ "b": later }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["message"],
        "the car is at HAM, the booking picks it up at BER"
    );
    app.shutdown().await;
}

/// A quote is what booking then charges: for random windows (an hour to ten days, at any
/// hour), return branches (none, the car's own, another one) and extras (any of the kinds, in
/// any order and quantity offered), `quote` and `requestBooking` give the same total, lines,
/// extras and mileage allowance.
#[tokio::test]
async fn a_quote_equals_what_booking_charges() {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let app = TestApp::start().await;
    app.add_branch("LIS", 38.72, -9.14).await;
    app.add_branch("OPO", 41.15, -8.61).await;
    let car = app.add_car("LIS", "Renault", "37.45").await;
    let (customer, _) = app.register("quotes@fleet.test").await;
    let offered = app
        .ok(None, "{ extrasOffered { kind maxQuantity } }", json!({}))
        .await["extrasOffered"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(offered.len(), 4, "{offered:?}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_261_207);
    let base = chrono::Utc::now() + chrono::TimeDelta::days(2);
    let fields = "total { amount currency } lines { code label amount { amount currency } }
        extras { kind quantity } mileage { kmIncluded kmPerDay excessPerKm { amount currency } }";
    for slot in 0..20_i64 {
        // Slots of 14 days never overlap (turnaround included).
        let start = base
            + chrono::TimeDelta::days(slot * 14 + rng.random_range(0..2))
            + chrono::TimeDelta::minutes(rng.random_range(0..24 * 60));
        let end = start + chrono::TimeDelta::minutes(rng.random_range(60..10 * 24 * 60));
        let return_branch = [None, Some("LIS"), Some("opo")][rng.random_range(0..3)];
        let mut extras = Vec::new();
        for offer in &offered {
            if rng.random_bool(0.4) {
                let max = offer["maxQuantity"].as_i64().unwrap_or(1);
                extras
                    .push(json!({ "kind": offer["kind"], "quantity": rng.random_range(1..=max) }));
            }
        }
        extras.shuffle(&mut rng);
        let (pickup, ret) = (start.to_rfc3339(), end.to_rfc3339());
        let quoted = app
            .ok(
                Some(&customer),
                &format!(
                    "query($c: UUID!, $p: DateTime!, $r: DateTime!, $b: String, $e: [ExtraInput!]) {{
                        quote(carId: $c, pickupAt: $p, returnAt: $r, returnBranchCode: $b,
                              extras: $e) {{ {fields} }} }}"
                ),
                json!({ "c": car, "p": pickup, "r": ret, "b": return_branch, "e": extras }),
            )
            .await["quote"]
            .clone();
        let booked = app
            .ok(
                Some(&customer),
                &format!(
                    "mutation($i: BookingRequestInput!) {{ requestBooking(input: $i) {{ {fields} }} }}"
                ),
                json!({ "i": { "carId": car, "pickupAt": pickup, "returnAt": ret,
                    "returnBranchCode": return_branch, "extras": extras } }),
            )
            .await["requestBooking"]
            .clone();
        assert_eq!(
            quoted, booked,
            "slot {slot}: {pickup} to {ret}, return {return_branch:?}, extras {extras:?}"
        );
        assert_eq!(
            quoted["extras"].as_array().map(Vec::len),
            Some(extras.len()),
            "{quoted:#}"
        );
    }
    app.shutdown().await;
}

/// Extras are priced per day with their caps, kept through a modification (re-priced with
/// the window), replaced when the modification names them, and refused when not offered in
/// that quantity; a car driven beyond its allowance pays per kilometre at return.
#[tokio::test]
async fn extras_and_mileage_are_charged_as_booked() {
    let app = TestApp::start().await;
    app.add_branch("LIS", 38.72, -9.14).await;
    let car = app.add_car("LIS", "Renault", "40.00").await;
    let (customer, _) = app.register("extras@fleet.test").await;
    let admin = app.admin_token.clone();
    let pickup = chrono::Utc::now() + chrono::TimeDelta::minutes(30);
    let ret = pickup + chrono::TimeDelta::days(3);
    let booking = app
        .ok(
            Some(&customer),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i) {
                id total { amount } lines { code amount { amount } } extras { kind quantity }
                mileage { kmIncluded excessPerKm { amount } } } }",
            json!({ "i": { "carId": car, "pickupAt": pickup.to_rfc3339(),
                "returnAt": ret.to_rfc3339(),
                "extras": [{ "kind": "COLLISION_DAMAGE_WAIVER" },
                           { "kind": "CHILD_SEAT", "quantity": 2 }] } }),
        )
        .await["requestBooking"]
        .clone();
    // 3 days × 40.00, two seats 3 × 8.00 each, the waiver 3 × 15.00.
    assert_eq!(
        booking["lines"],
        json!([
            { "code": "RENTAL_DAYS", "amount": { "amount": "120.00" } },
            { "code": "CHILD_SEAT", "amount": { "amount": "48.00" } },
            { "code": "COLLISION_DAMAGE_WAIVER", "amount": { "amount": "45.00" } },
        ])
    );
    assert_eq!(booking["total"]["amount"], "213.00");
    assert_eq!(
        booking["extras"],
        json!([{ "kind": "CHILD_SEAT", "quantity": 2 },
               { "kind": "COLLISION_DAMAGE_WAIVER", "quantity": 1 }])
    );
    assert_eq!(
        booking["mileage"],
        json!({ "kmIncluded": 900, "excessPerKm": { "amount": "0.25" } })
    );
    let id = booking["id"].as_str().unwrap_or_default().to_owned();

    // Four seats are more than offered: refused, nothing changes.
    let (_, body) = app
        .post(
            Some(&customer),
            "mutation($b: UUID!, $p: DateTime!, $r: DateTime!) {
                modifyBooking(id: $b, pickupAt: $p, returnAt: $r,
                              extras: [{ kind: CHILD_SEAT, quantity: 4 }]) { id } }",
            json!({ "b": id, "p": pickup.to_rfc3339(), "r": ret.to_rfc3339() }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["field"], "extras",
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["message"],
        "invalid extras: CHILD_SEAT may be taken at most 3 time(s) (and at least once)"
    );

    // A day longer: the extras stay and are priced for four days.
    let longer = ret + chrono::TimeDelta::days(1);
    let modified = app
        .ok(
            Some(&customer),
            "mutation($b: UUID!, $p: DateTime!, $r: DateTime!) {
                modifyBooking(id: $b, pickupAt: $p, returnAt: $r) {
                    total { amount } extras { kind quantity } mileage { kmIncluded } } }",
            json!({ "b": id, "p": pickup.to_rfc3339(), "r": longer.to_rfc3339() }),
        )
        .await["modifyBooking"]
        .clone();
    assert_eq!(modified["total"]["amount"], "284.00", "{modified:#}");
    assert_eq!(modified["extras"].as_array().map(Vec::len), Some(2));
    assert_eq!(modified["mileage"]["kmIncluded"], 1200);
    // Naming the extras replaces them: the waiver only.
    let modified = app
        .ok(
            Some(&customer),
            "mutation($b: UUID!, $p: DateTime!, $r: DateTime!) {
                modifyBooking(id: $b, pickupAt: $p, returnAt: $r,
                              extras: [{ kind: COLLISION_DAMAGE_WAIVER }]) {
                    total { amount } extras { kind quantity } } }",
            json!({ "b": id, "p": pickup.to_rfc3339(), "r": longer.to_rfc3339() }),
        )
        .await["modifyBooking"]
        .clone();
    assert_eq!(modified["total"]["amount"], "220.00", "{modified:#}");
    assert_eq!(
        modified["extras"],
        json!([{ "kind": "COLLISION_DAMAGE_WAIVER", "quantity": 1 }])
    );

    // Paid, out with 10,000 km, back on time with 11,250: 50 km beyond the 1,200 included.
    app.ok(
        Some(&customer),
        "mutation($b: UUID!) { payBooking(bookingId: $b,
            method: { kind: CARD, token: \"tok_success\" }) { status } }",
        json!({ "b": id }),
    )
    .await;
    app.ok(
        Some(&admin),
        "mutation($b: UUID!) { pickUpCar(bookingId: $b, odometerKm: 10000, fuelPercent: 100) { id } }",
        json!({ "b": id }),
    )
    .await;
    let returned = app
        .ok(
            Some(&admin),
            "mutation($b: UUID!) { returnCar(bookingId: $b, odometerKm: 11250.6, fuelPercent: 100,
                branchCode: \"LIS\") { total { amount } lines { code label amount { amount } } } }",
            json!({ "b": id }),
        )
        .await["returnCar"]
        .clone();
    let last = returned["lines"]
        .as_array()
        .and_then(|l| l.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        last,
        json!({ "code": "MILEAGE_EXCESS", "label": "mileage, 50 km beyond the 1200 km included",
                "amount": { "amount": "12.50" } })
    );
    assert_eq!(returned["total"]["amount"], "232.50", "{returned:#}");
    app.shutdown().await;
}

/// Cancelling is previewed before it is done, and costs what the preview said.
#[tokio::test]
async fn a_cancellation_is_quoted_before_and_charged_as_quoted() {
    let app = TestApp::start().await;
    app.add_branch("LIS", 38.72, -9.14).await;
    let car = app.add_car("LIS", "Mini", "71.00").await;
    let (customer, _) = app.register("cancel@fleet.test").await;
    let book = "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }";
    let pay = "mutation($b: UUID!) { payBooking(bookingId: $b, method: { kind: CARD, token: \"tok_visa\" }) { status } }";
    let preview = "query($b: UUID!) { cancellationQuote(bookingId: $b) { fee { amount } refund { amount } } }";
    let cancel =
        "mutation($b: UUID!) { cancelBooking(id: $b) { status balance { owed { amount } } } }";

    // Days ahead: free, everything back.
    let early = app
        .ok(
            Some(&customer),
            book,
            json!({ "i": { "carId": car, "pickupAt": at(5, 0), "returnAt": at(7, 0) } }),
        )
        .await["requestBooking"]["id"]
        .clone();
    app.ok(Some(&customer), pay, json!({ "b": early })).await;
    assert_eq!(
        app.ok(Some(&customer), preview, json!({ "b": early }))
            .await["cancellationQuote"],
        json!({ "fee": { "amount": "0.00" }, "refund": { "amount": "142.00" } })
    );

    // Within a day of pick-up: one day's rate is kept, and cancelling keeps exactly that.
    let late = app
        .ok(
            Some(&customer),
            book,
            json!({ "i": { "carId": car, "pickupAt": at(0, 10), "returnAt": at(2, 10) } }),
        )
        .await["requestBooking"]["id"]
        .clone();
    app.ok(Some(&customer), pay, json!({ "b": late })).await;
    let quoted = app.ok(Some(&customer), preview, json!({ "b": late })).await;
    assert_eq!(
        quoted["cancellationQuote"],
        json!({ "fee": { "amount": "71.00" }, "refund": { "amount": "71.00" } })
    );
    let cancelled = app.ok(Some(&customer), cancel, json!({ "b": late })).await;
    assert_eq!(
        cancelled["cancelBooking"],
        json!({ "status": "CANCELLED", "balance": { "owed": { "amount": "71.00" } } })
    );
    // The booking now says what it costs: the booked price off, the fee on.
    let priced = app
        .ok(
            Some(&customer),
            "query($b: UUID!) { booking(id: $b) { total { amount } lines { code label amount { amount } } } }",
            json!({ "b": late }),
        )
        .await;
    assert_eq!(priced["booking"]["total"], json!({ "amount": "71.00" }));
    let lines = priced["booking"]["lines"].as_array().unwrap();
    assert_eq!(lines[0]["code"], "RENTAL_DAYS");
    assert_eq!(
        lines[lines.len() - 2..],
        [
            json!({ "code": "CANCELLATION_CREDIT", "label": "cancelled: the booked price is not charged",
                    "amount": { "amount": "-142.00" } }),
            json!({ "code": "CANCELLATION_FEE", "label": "cancellation fee", "amount": { "amount": "71.00" } }),
        ]
    );
    // Nothing left to preview.
    assert_eq!(
        app.code(Some(&customer), preview, json!({ "b": late }))
            .await,
        "CONFLICT"
    );
    // Someone else's booking is not theirs to preview.
    let (stranger, _) = app.register("stranger@fleet.test").await;
    assert_eq!(
        app.code(Some(&stranger), preview, json!({ "b": early }))
            .await,
        "FORBIDDEN"
    );
    app.shutdown().await;
}

/// What availability offers can be booked, and no more: turnaround is each branch's (the one a
/// rental returns to), applied where availability is answered just as where bookings are
/// decided. A property test over random reservations (round trips and one-way, two branches
/// with different turnarounds) and random picks at both edges of the ranges offered; one
/// minute beyond an edge that a reservation makes must be refused.
#[tokio::test]
async fn every_range_availability_offers_can_be_booked() {
    use chrono::{DateTime, TimeDelta, Utc};
    use rand::{Rng, SeedableRng};
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    app.add_branch("LIS", 38.72, -9.14).await;
    app.add_branch("OPO", 41.15, -8.61).await;
    // Lisbon cleans in half an hour, Porto takes four.
    for (code, minutes) in [("LIS", 30), ("OPO", 240)] {
        let branch = app
            .ok(
                Some(&admin),
                "mutation($c: String!, $t: Int!) { updateBranch(code: $c, input: { turnaroundMinutes: $t }) { code turnaroundMinutes } }",
                json!({ "c": code, "t": minutes }),
            )
            .await;
        assert_eq!(
            branch["updateBranch"],
            json!({ "code": code, "turnaroundMinutes": minutes })
        );
    }
    let car = app.add_car("LIS", "Dacia", "29.90").await;
    let (customer, _) = app.register("gaps@fleet.test").await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let book = "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }";
    let request = |pickup: DateTime<Utc>, ret: DateTime<Utc>, to: &str| {
        json!({ "i": { "carId": car, "pickupAt": pickup.to_rfc3339(), "returnAt": ret.to_rfc3339(),
                       "returnBranchCode": to } })
    };
    let from = Utc::now() + TimeDelta::days(1);
    let to = from + TimeDelta::days(30);
    // Random reservations make random gaps (some requests collide and are refused).
    for _ in 0..12 {
        let start = from + TimeDelta::minutes(rng.random_range(0..29 * 24 * 60));
        let end = start + TimeDelta::minutes(rng.random_range(60..4 * 24 * 60));
        let branch = if rng.random_bool(0.5) { "LIS" } else { "OPO" };
        app.post(Some(&customer), book, request(start, end, branch))
            .await;
    }
    let (mut booked, mut edges_tried) = (0, 0);
    for round in 0..15 {
        let branch = if rng.random_bool(0.5) { "LIS" } else { "OPO" };
        let free = app
            .ok(
                None,
                "query($c: UUID!, $f: DateTime!, $t: DateTime!, $b: String) { availability(carId: $c, from: $f, to: $t, returnBranchCode: $b) { start end } }",
                json!({ "c": car, "f": from.to_rfc3339(), "t": to.to_rfc3339(), "b": branch }),
            )
            .await["availability"]
            .as_array()
            .unwrap()
            .clone();
        let ranges: Vec<(DateTime<Utc>, DateTime<Utc>)> = free
            .iter()
            .map(|r| {
                (
                    r["start"].as_str().unwrap().parse().unwrap(),
                    r["end"].as_str().unwrap().parse().unwrap(),
                )
            })
            .filter(|(s, e): &(DateTime<Utc>, DateTime<Utc>)| *e - *s >= TimeDelta::hours(2))
            .collect();
        let Some(&(start, end)) = ranges.get(rng.random_range(0..ranges.len().max(1))) else {
            break;
        };
        // From the range's very start, or up to its very end.
        let hours = rng.random_range(1..=((end - start).num_hours().min(48)));
        let length = TimeDelta::hours(hours);
        let at_start = rng.random_bool(0.5);
        let (pickup, ret) = if at_start {
            (start, start + length)
        } else {
            (end - length, end)
        };
        // A minute past an edge a reservation makes (not the edge of the question) is taken.
        let minute = TimeDelta::minutes(1);
        let beyond = if at_start && start > from {
            Some((pickup - minute, ret - minute))
        } else if !at_start && end < to {
            Some((pickup + minute, ret + minute))
        } else {
            None
        };
        if let Some((p, r)) = beyond {
            assert_eq!(
                app.code(Some(&customer), book, request(p, r, branch)).await,
                "CONFLICT",
                "round {round}: availability offered {start} to {end} returning to {branch}, yet {p} to {r} was not refused"
            );
            edges_tried += 1;
        }
        let (_, body) = app
            .post(Some(&customer), book, request(pickup, ret, branch))
            .await;
        assert!(
            body.get("errors").is_none(),
            "round {round}: availability offered {start} to {end} returning to {branch}, booking {pickup} to {ret} was refused: {body:#}"
        );
        booked += 1;
    }
    assert!(booked >= 10, "only {booked} rounds found a free range");
    assert!(edges_tried >= 5, "only {edges_tried} edges were tried");
    app.shutdown().await;
}

#[tokio::test]
async fn a_car_out_early_is_priced_from_then_and_an_active_rental_is_extended() {
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    app.add_branch("LIS", 38.7223, -9.1393).await;
    let car = app.add_car("LIS", "Fiat", "50.00").await;
    let (customer, _) = app.register("early@example.com").await;
    // Two days, from the day after tomorrow on: 100.00, paid.
    let booking = app.book_and_pay(&customer, car, &at(2, 0), &at(4, 0)).await;
    let shown =
        "id status total { amount } balance { owed { amount } paid { amount } due { amount } }";

    // The customer comes today: the car is free, so it goes out, and the rental runs from
    // now to the booked return: a few minutes short of four days, four days charged.
    let out = app
        .ok(
            Some(&admin),
            &format!("mutation($b: UUID!) {{ pickUpCar(bookingId: $b, odometerKm: 100, fuelPercent: 100) {{ {shown} }} }}"),
            json!({ "b": booking }),
        )
        .await;
    assert_eq!(
        out["pickUpCar"],
        json!({ "id": booking, "status": "ACTIVE", "total": { "amount": "200.00" },
                "balance": { "owed": { "amount": "200.00" }, "paid": { "amount": "100.00" },
                             "due": { "amount": "100.00" } } })
    );
    // Nobody else gets the car for the days it is out.
    let (other, _) = app.register("other@example.com").await;
    let code = app
        .code(
            Some(&other),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
            json!({ "i": { "carId": car, "pickupAt": at(1, 0), "returnAt": at(1, 5) } }),
        )
        .await;
    assert_eq!(code, "CONFLICT");

    // Out on the rental, the customer keeps the car a day longer: 50.00 more.
    let pickup_at = app
        .ok(
            Some(&customer),
            "query($b: UUID!) { booking(id: $b) { pickupAt } }",
            json!({ "b": booking }),
        )
        .await["booking"]["pickupAt"]
        .clone();
    let extended = app
        .ok(
            Some(&customer),
            &format!("mutation($b: UUID!, $p: DateTime!, $r: DateTime!) {{ modifyBooking(id: $b, pickupAt: $p, returnAt: $r) {{ {shown} }} }}"),
            json!({ "b": booking, "p": pickup_at, "r": at(5, 0) }),
        )
        .await;
    assert_eq!(extended["modifyBooking"]["status"], "ACTIVE");
    assert_eq!(extended["modifyBooking"]["total"]["amount"], "250.00");
    // Its pick-up is history: moving it is refused, naming the field.
    let (_, body) = app
        .post(
            Some(&customer),
            "mutation($b: UUID!, $p: DateTime!, $r: DateTime!) { modifyBooking(id: $b, pickupAt: $p, returnAt: $r) { id } }",
            json!({ "b": booking, "p": at(1, 0), "r": at(5, 0) }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body:#}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["field"], "pickupAt",
        "{body:#}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_car_taken_out_urgently_leaves_its_bookings_to_staff_who_move_them_to_another() {
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    app.add_branch("LIS", 38.7223, -9.1393).await;
    app.add_branch("OPO", 41.1579, -8.6291).await;
    let broken = app.add_car("LIS", "Fiat", "50.00").await;
    let spare = app.add_car("LIS", "Seat", "55.00").await;
    let elsewhere = app.add_car("OPO", "Opel", "50.00").await;
    let (customer, _) = app.register("stranded@example.com").await;
    let booking = app
        .book_and_pay(&customer, broken, &at(3, 0), &at(5, 0))
        .await;
    let maintain = "mutation($c: UUID!, $s: DateTime!, $e: DateTime!, $u: Boolean) { \
        scheduleMaintenance(id: $c, start: $s, end: $e, reason: \"engine warning\", urgent: $u) { id } }";

    // Not urgent, the booked window refuses maintenance.
    let code = app
        .code(
            Some(&admin),
            maintain,
            json!({ "c": broken, "s": at(1, 0), "e": at(10, 0), "u": false }),
        )
        .await;
    assert_eq!(code, "CONFLICT");
    // Urgent, the car goes out of service and the booking waits for another.
    app.ok(
        Some(&admin),
        maintain,
        json!({ "c": broken, "s": at(1, 0), "e": at(10, 0), "u": true }),
    )
    .await;
    let shown = "query($b: UUID!) { booking(id: $b) { status car { id } displacedSince \
        activity { kind detail } } }";
    let waiting = app
        .ok(Some(&customer), shown, json!({ "b": booking }))
        .await;
    assert_eq!(waiting["booking"]["status"], "CONFIRMED");
    assert_eq!(waiting["booking"]["car"]["id"], broken.to_string());
    assert!(
        waiting["booking"]["displacedSince"].is_string(),
        "{waiting}"
    );
    assert_eq!(
        waiting["booking"]["activity"]
            .as_array()
            .unwrap()
            .last()
            .unwrap(),
        &json!({ "kind": "CAR_WITHDRAWN", "detail": "engine warning" })
    );
    // The broken car's time is maintenance only: the booking let go of it.
    let reserved = app
        .ok(
            Some(&admin),
            "query($c: UUID!, $f: DateTime!, $t: DateTime!) { car(id: $c) { reservations(from: $f, to: $t) { start } } }",
            json!({ "c": broken, "f": at(0, 0), "t": at(20, 0) }),
        )
        .await;
    assert_eq!(reserved["car"]["reservations"], json!([]));

    let reassign = "mutation($b: UUID!, $c: UUID!) { reassignBooking(bookingId: $b, carId: $c, \
        reason: \"replacement for a broken car\") { id car { id } displacedSince total { amount } } }";
    // A car at another branch cannot take it.
    let (_, body) = app
        .post(
            Some(&admin),
            reassign,
            json!({ "b": booking, "c": elsewhere }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body:#}"
    );
    // A customer cannot move it.
    let code = app
        .code(
            Some(&customer),
            reassign,
            json!({ "b": booking, "c": spare }),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");
    // The spare at the same branch takes it, at the price booked.
    let moved = app
        .ok(Some(&admin), reassign, json!({ "b": booking, "c": spare }))
        .await;
    assert_eq!(
        moved["reassignBooking"],
        json!({ "id": booking, "car": { "id": spare.to_string() }, "displacedSince": null,
                "total": { "amount": "100.00" } })
    );
    // Now the spare is taken for that window.
    let reserved = app
        .ok(
            Some(&admin),
            "query($c: UUID!, $f: DateTime!, $t: DateTime!) { car(id: $c) { reservations(from: $f, to: $t) { start end } } }",
            json!({ "c": spare, "f": at(0, 0), "t": at(20, 0) }),
        )
        .await;
    assert_eq!(reserved["car"]["reservations"].as_array().unwrap().len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn booking_lists_page_by_keyset_so_changes_between_pages_repeat_or_skip_nothing() {
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    app.add_branch("LIS", 38.7223, -9.1393).await;
    let car = app.add_car("LIS", "Fiat", "50.00").await;
    let (customer, _) = app.register("pages@example.com").await;
    let book = |day: i64| {
        let customer = customer.clone();
        let app = &app;
        async move {
            app.ok(
                Some(&customer),
                "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
                json!({ "i": { "carId": car, "pickupAt": at(day, 0), "returnAt": at(day, 5) } }),
            )
            .await["requestBooking"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let mut made = Vec::new();
    for day in 1..=5 {
        made.push(book(day).await);
    }
    let page = |after: Option<String>| {
        let (app, customer) = (&app, customer.clone());
        async move {
            app.ok(
                Some(&customer),
                "query($a: String) { myBookings(first: 2, after: $a, status: [HELD]) { totalCount
                    edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }",
                json!({ "a": after }),
            )
            .await["myBookings"]
                .clone()
        }
    };
    let ids = |page: &serde_json::Value| -> Vec<String> {
        page["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = page(None).await;
    assert_eq!(first["totalCount"], 5);
    assert_eq!(ids(&first), [made[4].clone(), made[3].clone()]);
    // Between pages: a new booking (newest, so before this page) and one of the first page
    // cancelled (it leaves the HELD list): the next page starts where the first ended.
    made.push(book(6).await);
    app.ok(
        Some(&customer),
        "mutation($b: UUID!) { cancelBooking(id: $b) { status } }",
        json!({ "b": made[3] }),
    )
    .await;
    let second = page(first["pageInfo"]["endCursor"].as_str().map(str::to_owned)).await;
    assert_eq!(ids(&second), [made[2].clone(), made[1].clone()]);
    let third = page(second["pageInfo"]["endCursor"].as_str().map(str::to_owned)).await;
    assert_eq!(ids(&third), [made[0].clone()]);
    assert_eq!(third["pageInfo"]["hasNextPage"], false);
    // Staff see every booking the same way; a cursor this API did not give is refused.
    let code = app
        .code(
            Some(&admin),
            "{ bookings(first: 2, after: \"o:3\") { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    app.shutdown().await;
}

/// A branch may price in its own currency: its cars are priced in it, and no car priced in
/// another is added, moved or returned there; a branch without one takes any (the fleet's by
/// default).
#[tokio::test]
async fn a_branch_in_its_own_currency_keeps_its_cars_in_it() {
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    app.add_branch("LIS", 38.72, -9.14).await;
    let add_branch = |code: &str, currency: &str| {
        json!({ "i": { "code": code, "name": "London", "city": "London",
                       "position": { "latitude": 51.47, "longitude": -0.45 },
                       "currency": currency } })
    };
    let branch = "mutation($i: BranchInput!) { addBranch(input: $i) { code currency } }";
    let lhr = app.ok(Some(&admin), branch, add_branch("LHR", "GBP")).await;
    assert_eq!(
        lhr["addBranch"],
        json!({ "code": "LHR", "currency": "GBP" })
    );
    // Yen have no cents, and the fleet's fees are in cents.
    assert_eq!(
        app.code(Some(&admin), branch, add_branch("NRT", "JPY"))
            .await,
        "BAD_USER_INPUT"
    );
    let listed = app
        .ok(None, "{ branches { code currency } }", json!({}))
        .await;
    assert_eq!(
        listed["branches"],
        json!([{ "code": "LHR", "currency": "GBP" }, { "code": "LIS", "currency": "USD" }])
    );

    let car = |currency: Option<&str>| {
        let mut input = json!({ "make": "Mini", "model": "Cooper", "year": 2025,
            "class": "COMPACT", "seats": 4, "transmission": "MANUAL", "fuel": "PETROL",
            "dailyRate": "45.00", "branchCode": "LHR" });
        if let Some(c) = currency {
            input["currency"] = json!(c);
        }
        json!({ "i": input })
    };
    let add = "mutation($i: CarInput!) { addCar(input: $i) { id dailyRate { amount currency } } }";
    let mini = app.ok(Some(&admin), add, car(None)).await;
    assert_eq!(
        mini["addCar"]["dailyRate"],
        json!({ "amount": "45.00", "currency": "GBP" })
    );
    let (_, euro) = app.post(Some(&admin), add, car(Some("EUR"))).await;
    assert_eq!(euro["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert_eq!(
        euro["errors"][0]["message"],
        "invalid currency: branch LHR prices in GBP"
    );

    // A dollar car from Lisbon neither moves to London nor is left there by a one-way rental.
    let dollars = app.add_car("LIS", "Fiat", "30.00").await;
    let (_, moved) = app
        .post(
            Some(&admin),
            "mutation($c: UUID!) { relocateCar(id: $c, branchCode: \"LHR\") { id } }",
            json!({ "c": dollars }),
        )
        .await;
    assert_eq!(
        moved["errors"][0]["message"],
        "invalid branchCode: branch LHR prices in GBP, this car in USD"
    );
    let (customer, _) = app.register("pounds@fleet.test").await;
    let (_, one_way) = app
        .post(
            Some(&customer),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
            json!({ "i": { "carId": dollars, "pickupAt": at(2, 0), "returnAt": at(4, 0),
                           "returnBranchCode": "LHR" } }),
        )
        .await;
    assert_eq!(one_way["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert_eq!(
        one_way["errors"][0]["message"],
        "invalid returnBranchCode: branch LHR prices in GBP, this car in USD"
    );
    app.shutdown().await;
}

/// `searchCars` pages by keyset in each order: a car added before the cursor and a car booked
/// after it between two pages neither repeat a row nor shift one out (paging by offset showed
/// the 20.00 car twice here); paging one car at a time gives every order exactly as one big
/// page does (distances and ratings resume exactly); cursors are checked.
#[tokio::test]
async fn car_search_pages_by_keyset_so_changes_between_pages_repeat_or_skip_nothing() {
    let app = TestApp::start().await;
    app.add_branch("LIS", 38.7223, -9.1393).await;
    app.add_branch("OPO", 41.1579, -8.6291).await;
    let mut cars = Vec::new();
    for (branch, rate) in [
        ("LIS", "10.00"),
        ("OPO", "20.00"),
        ("LIS", "30.00"),
        ("OPO", "40.00"),
        ("LIS", "50.00"),
    ] {
        cars.push(app.add_car(branch, "Fiat", rate).await);
    }
    let (from, until) = (at(3, 0), at(5, 0));
    let search = |sort: &'static str, first: i64, after: Option<String>| {
        let (app, from, until) = (&app, from.clone(), until.clone());
        async move {
            let (_, body) = app
                .post(
                    None,
                    "query($f: DateTime!, $t: DateTime!, $s: CarSort!, $n: Int!, $a: String) {
                        searchCars(filter: { pickupAt: $f, returnAt: $t, sort: $s,
                            near: { latitude: 38.7, longitude: -9.1 }, radiusKm: 1000 },
                            first: $n, after: $a) {
                          totalCount edges { cursor node { dailyRate { amount } } }
                          pageInfo { hasNextPage endCursor } } }",
                    json!({ "f": from, "t": until, "s": sort, "n": first, "a": after }),
                )
                .await;
            body
        }
    };
    let rates = |body: &serde_json::Value| -> Vec<String> {
        body["data"]["searchCars"]["edges"]
            .as_array()
            .map(|edges| {
                edges
                    .iter()
                    .map(|e| {
                        e["node"]["dailyRate"]["amount"]
                            .as_str()
                            .unwrap()
                            .to_owned()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let end = |body: &serde_json::Value| {
        body["data"]["searchCars"]["pageInfo"]["endCursor"]
            .as_str()
            .map(str::to_owned)
    };

    let first = search("PRICE_ASC", 2, None).await;
    assert_eq!(rates(&first), ["10.00", "20.00"], "{first:#}");
    assert_eq!(first["data"]["searchCars"]["totalCount"], 5);
    // Between the pages: a cheaper car arrives, the 40.00 car is booked over the window.
    app.add_car("LIS", "Seat", "15.00").await;
    let (customer, _) = app.register("pages-cars@fleet.test").await;
    app.ok(
        Some(&customer),
        "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
        json!({ "i": { "carId": cars[3], "pickupAt": from, "returnAt": until } }),
    )
    .await;
    let second = search("PRICE_ASC", 2, end(&first)).await;
    assert_eq!(rates(&second), ["30.00", "50.00"], "{second:#}");
    assert_eq!(
        second["data"]["searchCars"]["pageInfo"]["hasNextPage"],
        false
    );
    assert_eq!(second["data"]["searchCars"]["totalCount"], 5);

    // One car at a time, every order reads as one page of all.
    for sort in ["PRICE_ASC", "PRICE_DESC", "DISTANCE", "RATING"] {
        let all = rates(&search(sort, 100, None).await);
        assert_eq!(all.len(), 5, "{sort}: {all:?}");
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = search(sort, 1, after.clone()).await;
            paged.extend(rates(&page));
            if page["data"]["searchCars"]["pageInfo"]["hasNextPage"] != true {
                break;
            }
            after = end(&page);
        }
        assert_eq!(paged, all, "{sort}");
    }
    // Nearest first: Lisbon's cars (cheapest first among them), then Porto's.
    assert_eq!(
        rates(&search("DISTANCE", 100, None).await),
        ["10.00", "15.00", "30.00", "50.00", "20.00"]
    );

    // A cursor of another order, or none at all, is refused.
    let price_cursor = end(&first);
    for (sort, after) in [
        ("DISTANCE", price_cursor.clone()),
        ("PRICE_ASC", Some("o:2".to_owned())),
        ("PRICE_ASC", Some("c:near:zz:1:x".to_owned())),
    ] {
        let body = search(sort, 2, after).await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{sort}: {body:#}"
        );
        assert_eq!(
            body["errors"][0]["extensions"]["field"], "after",
            "{body:#}"
        );
    }
    app.shutdown().await;
}

/// `searchCars` shows exactly the cars the write side would book: for random reservations and
/// maintenance on a small fleet at two branches, and random windows (an hour to three days,
/// with and without a branch; half of them starting or ending near a reservation's edge, where
/// the turnaround decides), the cars found equal those whose aggregate has no block that
/// clashes with the window and its turnaround, brute force from the events.
#[tokio::test]
async fn car_search_agrees_with_the_cars_own_calendars() {
    use rand::{Rng, SeedableRng};
    let app = TestApp::start().await;
    let admin = app.admin_token.clone();
    app.add_branch("LIS", 38.72, -9.14).await;
    app.add_branch("OPO", 41.15, -8.61).await;
    let mut cars = Vec::new();
    for i in 0..8 {
        let branch = if i % 2 == 0 { "LIS" } else { "OPO" };
        cars.push(app.add_car(branch, "Fiat", &format!("{}.00", 30 + i)).await);
    }
    let (customer, _) = app.register("calendar@fleet.test").await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_261_207);
    let base = chrono::Utc::now() + chrono::TimeDelta::hours(2);
    let minutes = |m: i64| chrono::TimeDelta::minutes(m);
    for car in &cars {
        for _ in 0..rng.random_range(1..4) {
            let start = base + minutes(rng.random_range(0..10 * 24 * 60));
            let end = start + minutes(rng.random_range(60..3 * 24 * 60));
            // Overlapping requests are refused; what was booked is what counts.
            let (_, booked) = app
                .post(
                    Some(&customer),
                    "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
                    json!({ "i": { "carId": car, "pickupAt": start.to_rfc3339(),
                        "returnAt": end.to_rfc3339() } }),
                )
                .await;
            let Some(id) = booked["data"]["requestBooking"]["id"].as_str() else {
                continue;
            };
            // Some move (the car's reservation changes) and some are cancelled (released).
            match rng.random_range(0..4) {
                0 => {
                    let to = start + minutes(rng.random_range(-600..600));
                    let _ = app
                        .post(
                            Some(&customer),
                            "mutation($b: UUID!, $p: DateTime!, $r: DateTime!) {
                                modifyBooking(id: $b, pickupAt: $p, returnAt: $r) { id } }",
                            json!({ "b": id, "p": to.to_rfc3339(),
                                    "r": (to + (end - start) + minutes(120)).to_rfc3339() }),
                        )
                        .await;
                }
                1 => {
                    app.ok(
                        Some(&customer),
                        "mutation($b: UUID!) { cancelBooking(id: $b) { id } }",
                        json!({ "b": id }),
                    )
                    .await;
                }
                _ => {}
            }
        }
        if rng.random_bool(0.25) {
            let start = base + minutes(rng.random_range(0..10 * 24 * 60));
            let _ = app
                .post(
                    Some(&admin),
                    "mutation($c: UUID!, $s: DateTime!, $e: DateTime!) { scheduleMaintenance(
                        id: $c, start: $s, end: $e, reason: \"service\") { id } }",
                    json!({ "c": car, "s": start.to_rfc3339(),
                            "e": (start + minutes(600)).to_rfc3339() }),
                )
                .await;
        }
    }
    let mut calendars = Vec::new();
    for car in &cars {
        calendars.push(app.services.bookings.car(*car).await.unwrap());
    }
    let edges: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = calendars
        .iter()
        .flat_map(|c| c.blocks.iter().map(|b| (b.window.start, b.window.end)))
        .collect();
    assert!(edges.len() >= cars.len(), "{edges:?}");
    let (mut busy_seen, mut free_seen) = (0, 0);
    for round in 0..40 {
        let (start, end) = if round % 2 == 0 {
            let start = base + minutes(rng.random_range(0..12 * 24 * 60));
            (start, start + minutes(rng.random_range(60..3 * 24 * 60)))
        } else {
            // Just after a block ends (inside or past its hour of turnaround), or ending just
            // before one starts.
            let (block_start, block_end) = edges[rng.random_range(0..edges.len())];
            let jitter = minutes(rng.random_range(0..120));
            if rng.random_bool(0.5) {
                (block_end + jitter, block_end + jitter + minutes(180))
            } else {
                (block_start - jitter - minutes(180), block_start - jitter)
            }
        };
        let branch = [None, Some("LIS"), Some("OPO")][rng.random_range(0..3)];
        let found = app
            .ok(
                None,
                "query($f: DateTime!, $t: DateTime!, $b: String) { searchCars(filter: {
                    pickupAt: $f, returnAt: $t, branchCode: $b }, first: 100) {
                    edges { node { id } } } }",
                json!({ "f": start.to_rfc3339(), "t": end.to_rfc3339(), "b": branch }),
            )
            .await;
        let mut shown: Vec<String> = found["searchCars"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["id"].as_str().unwrap().to_owned())
            .collect();
        shown.sort();
        let window = domain::TimeWindow::new(start, end).unwrap();
        let mut free = Vec::new();
        for (car, state) in cars.iter().zip(&calendars) {
            if branch.is_some_and(|b| state.branch.as_deref() != Some(b)) {
                continue;
            }
            // A round trip: the car's own branch's turnaround (the default hour) follows it.
            if state.blocks.iter().any(|b| b.clashes(&window, 60)) {
                busy_seen += 1;
            } else {
                free_seen += 1;
                free.push(car.to_string());
            }
        }
        free.sort();
        assert_eq!(shown, free, "round {round}: {start} to {end} at {branch:?}");
        // The total agrees, whether the first page holds every match or a count runs.
        for first in [100, 2] {
            let counted = app
                .ok(
                    None,
                    "query($f: DateTime!, $t: DateTime!, $b: String, $n: Int) { searchCars(
                        filter: { pickupAt: $f, returnAt: $t, branchCode: $b }, first: $n) {
                        totalCount } }",
                    json!({ "f": start.to_rfc3339(), "t": end.to_rfc3339(), "b": branch,
                            "n": first }),
                )
                .await;
            assert_eq!(
                counted["searchCars"]["totalCount"],
                free.len(),
                "round {round}, first {first}"
            );
        }
    }
    // The rounds met both answers.
    assert!(
        busy_seen > 10 && free_seen > 10,
        "{busy_seen} busy, {free_seen} free"
    );
    app.shutdown().await;
}
