//! The money adds up, through `fleetledger serve` (API, worker, projectors): fees found at
//! return are charged to the card saved at booking, a card that refuses them leaves the booking
//! COMPLETED with a balance due, and analytics' revenue equals money captured minus refunded,
//! per day, per car and per booking, summed straight from the payments' events.

mod common;

use std::collections::BTreeMap;

use common::{Serve, admin_token, customer_token, gql, in_days};
use eventstore::testing::{TestDatabase, eventually};
use serde_json::{Value, json};

const BALANCE: &str = "query($b: UUID!) { booking(id: $b) { status carId: car { id }
    balance { owed { amount } paid { amount } refunded { amount } due { amount } }
    payments { status amount { amount } failureReason } } }";

struct Desk {
    addr: String,
    admin: String,
}

impl Desk {
    /// Signed in as the admin of `serve`, with the LIS branch added.
    async fn open(serve: &Serve) -> Self {
        let desk = Desk {
            addr: serve.addr.clone(),
            admin: admin_token(&serve.addr).await,
        };
        gql(
            &desk.addr,
            Some(&desk.admin),
            "mutation { addBranch(input: { code: \"LIS\", name: \"Lisboa\", city: \"Lisboa\",
                position: { latitude: 38.72, longitude: -9.14 } }) { code } }",
            json!({}),
        )
        .await;
        desk
    }

    async fn car(&self, make: &str) -> String {
        let data = gql(
            &self.addr,
            Some(&self.admin),
            "mutation($i: CarInput!) { addCar(input: $i) { id } }",
            json!({ "i": { "make": make, "model": "Any", "year": 2025, "class": "ECONOMY",
                "seats": 4, "transmission": "MANUAL", "fuel": "PETROL", "features": [],
                "dailyRate": "50.00", "currency": "EUR", "branchCode": "LIS" } }),
        )
        .await;
        data["addCar"]["id"].as_str().unwrap().to_owned()
    }

    /// A two-day booking of `car` from `start_seconds` ahead, paid with `token`.
    async fn paid(&self, customer: &str, car: &str, token: &str, start_seconds: i64) -> String {
        let booking = gql(
            &self.addr,
            Some(customer),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
            json!({ "i": { "carId": car, "pickupAt": in_seconds(start_seconds),
                           "returnAt": in_seconds(start_seconds + 2 * 86_400) } }),
        )
        .await["requestBooking"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let paid = self.pay(customer, &booking, token, "pay-1").await;
        assert_eq!(paid["status"], "CAPTURED", "{paid}");
        booking
    }

    /// `car` booked by `customer` over `[from, until)` and paid with a card that pays.
    async fn booked_and_paid(&self, customer: &str, car: &str, from: &str, until: &str) -> String {
        let booking = gql(
            &self.addr,
            Some(customer),
            "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
            json!({ "i": { "carId": car, "pickupAt": from, "returnAt": until } }),
        )
        .await["requestBooking"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let paid = gql(
            &self.addr,
            Some(customer),
            "mutation($b: UUID!) { payBooking(bookingId: $b, method: { kind: CARD, token: \"tok_visa\" }) { status } }",
            json!({ "b": booking }),
        )
        .await;
        assert_eq!(paid["payBooking"]["status"], "CAPTURED");
        booking
    }

    async fn pay(&self, customer: &str, booking: &str, token: &str, key: &str) -> Value {
        gql(
            &self.addr,
            Some(customer),
            "mutation($b: UUID!, $t: String!, $k: String!) {
                payBooking(bookingId: $b, method: { kind: CARD, token: $t }, idempotencyKey: $k) {
                    status failureReason } }",
            json!({ "b": booking, "t": token, "k": key }),
        )
        .await["payBooking"]
            .clone()
    }

    /// Picked up now (within the hour before its time, so not re-priced), returned now with
    /// 40 % of the tank missing: a refuelling fee of 40 points.
    async fn rented_and_returned_short_of_fuel(&self, booking: &str) {
        gql(
            &self.addr,
            Some(&self.admin),
            "mutation($b: UUID!) { pickUpCar(bookingId: $b, odometerKm: 100, fuelPercent: 100) { id } }",
            json!({ "b": booking }),
        )
        .await;
        let returned = gql(
            &self.addr,
            Some(&self.admin),
            "mutation($b: UUID!) { returnCar(bookingId: $b, odometerKm: 180, fuelPercent: 60, branchCode: \"LIS\") { status } }",
            json!({ "b": booking }),
        )
        .await;
        assert_eq!(returned["returnCar"]["status"], "COMPLETED");
    }

    async fn booking(&self, booking: &str) -> Value {
        gql(
            &self.addr,
            Some(&self.admin),
            BALANCE,
            json!({ "b": booking }),
        )
        .await["booking"]
            .clone()
    }
}

/// `serve` with `name=value` on `db` must stop at start: what it said.
fn refused_at_start(db: &TestDatabase, name: &str, value: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetledger"))
        .arg("serve")
        .env("DATABASE_URL", db.url())
        .env("FLEETLEDGER_HTTP_ADDR", "127.0.0.1:0")
        .env(name, value)
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve started with {name}={value}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A Money's amount ("123.45") in minor units, exactly.
fn amount(v: &Value) -> i64 {
    let text = v["amount"].as_str().unwrap();
    let (units, cents) = text.split_once('.').unwrap_or((text, "00"));
    let sign = if units.starts_with('-') { -1 } else { 1 };
    units.parse::<i64>().unwrap() * 100 + sign * cents.parse::<i64>().unwrap()
}

/// Money moved per payment's booking and per UTC day, summed from the events themselves:
/// captured minus refunded. (booking → minor, day → (net minor, refunded minor))
async fn from_the_log(db: &TestDatabase) -> (BTreeMap<String, i64>, BTreeMap<String, (i64, i64)>) {
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "WITH requested AS ( \
           SELECT aggregate_id, payload->>'booking_id' AS booking FROM events \
           WHERE aggregate_type = 'payment' AND event_type = 'PaymentRequested') \
         SELECT r.booking, (e.recorded_at AT TIME ZONE 'UTC')::date::text, \
           coalesce(sum((e.payload->'amount'->>'minor')::bigint) FILTER (WHERE e.event_type = 'PaymentCaptured'), 0)::bigint, \
           coalesce(sum((e.payload->'amount'->>'minor')::bigint) FILTER (WHERE e.event_type = 'PaymentRefunded'), 0)::bigint \
         FROM events e JOIN requested r USING (aggregate_id) \
         WHERE e.aggregate_type = 'payment' AND e.event_type IN ('PaymentCaptured', 'PaymentRefunded') \
         GROUP BY 1, 2",
    )
    .fetch_all(db.store().pool())
    .await
    .unwrap();
    let (mut bookings, mut days) = (BTreeMap::new(), BTreeMap::<String, (i64, i64)>::new());
    for (booking, day, captured, refunded) in rows {
        *bookings.entry(booking).or_default() += captured - refunded;
        let entry = days.entry(day).or_default();
        entry.0 += captured - refunded;
        entry.1 += refunded;
    }
    (bookings, days)
}

#[tokio::test]
async fn fees_are_collected_and_revenue_is_money_captured_minus_refunded() {
    let db = TestDatabase::create().await;
    let serve = Serve::start(&db.url(), &[]);
    let desk = Desk::open(&serve).await;
    let cars = [
        desk.car("Fiat").await,
        desk.car("Seat").await,
        desk.car("Opel").await,
        desk.car("Kia").await,
    ];
    let customer = customer_token(&desk.addr, "money@fleet.test").await;

    // Returned short of fuel, the saved card pays the fee.
    // Both start within the hour, so their pick-up now is on time.
    let settled = desk.paid(&customer, &cars[0], "tok_visa", 1_800).await;
    desk.rented_and_returned_short_of_fuel(&settled).await;
    // Returned short of fuel, the saved card refuses the fee.
    let owing = desk
        .paid(&customer, &cars[1], "tok_chargeCustomerFail", 1_800)
        .await;
    desk.rented_and_returned_short_of_fuel(&owing).await;
    // Paid, then cancelled days before pick-up (free until 24 h before): refunded in full.
    let cancelled = desk.paid(&customer, &cars[2], "tok_visa", 3 * 86_400).await;
    gql(
        &desk.addr,
        Some(&customer),
        "mutation($b: UUID!) { cancelBooking(id: $b) { status } }",
        json!({ "b": cancelled }),
    )
    .await;
    // A declined card, then another that pays.
    let second_try = gql(
        &desk.addr,
        Some(&customer),
        "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
        json!({ "i": { "carId": cars[3], "pickupAt": in_days(1), "returnAt": in_days(2) } }),
    )
    .await["requestBooking"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let declined = desk
        .pay(&customer, &second_try, "tok_chargeDeclined", "try-1")
        .await;
    assert_eq!(declined["status"], "FAILED");
    assert_eq!(
        desk.pay(&customer, &second_try, "tok_visa", "try-2").await["status"],
        "CAPTURED"
    );

    // The worker charges the fees (the refuelling of 40 % of the tank).
    eventually(30, "the fees are settled or declined", || async {
        let (a, b, c) = (
            desk.booking(&settled).await,
            desk.booking(&owing).await,
            desk.booking(&cancelled).await,
        );
        a["payments"].as_array().is_some_and(|p| p.len() == 2)
            && a["payments"][1]["status"] == "CAPTURED"
            && b["payments"].as_array().is_some_and(|p| p.len() >= 2)
            && c["payments"][0]["status"] == "REFUNDED"
    })
    .await;
    let a = desk.booking(&settled).await;
    let fee = amount(&a["payments"][1]["amount"]);
    assert!(fee > 0);
    assert_eq!(amount(&a["balance"]["owed"]), 10_000 + fee);
    assert_eq!(amount(&a["balance"]["paid"]), 10_000 + fee);
    assert_eq!(amount(&a["balance"]["due"]), 0);
    let b = desk.booking(&owing).await;
    assert_eq!(b["status"], "COMPLETED");
    assert_eq!(b["payments"][1]["status"], "FAILED");
    assert_eq!(b["payments"][1]["failureReason"], "card declined");
    assert_eq!(amount(&b["balance"]["due"]), fee, "the fee is still due");
    let c = desk.booking(&cancelled).await;
    assert_eq!(
        (
            amount(&c["balance"]["refunded"]),
            amount(&c["balance"]["due"])
        ),
        (10_000, 0)
    );

    // Every figure of money agrees with the payments' events, once the projections caught up.
    let (per_booking, per_day) = from_the_log(&db).await;
    for (booking, net) in &per_booking {
        let seen = desk.booking(booking).await;
        let held = amount(&seen["balance"]["paid"]) - amount(&seen["balance"]["refunded"]);
        assert_eq!(held, *net, "booking {booking}");
    }
    let first = per_day.keys().next().unwrap().clone();
    let last = per_day.keys().last().unwrap().clone();
    let analyst_view = || async {
        gql(
            &desk.addr,
            Some(&desk.admin),
            "query($f: NaiveDate!, $t: NaiveDate!) {
                dailyMetrics(from: $f, to: $t, branchCode: \"LIS\") {
                    date revenue { amount } refunds { amount } }
                carUtilization(from: $f, to: $t, branchCode: \"LIS\", first: 10) {
                    car { id } revenue { amount } } }",
            json!({ "f": first, "t": last }),
        )
        .await
    };
    let expected_days: Vec<(String, i64, i64)> = per_day
        .iter()
        .map(|(day, (net, refunded))| (day.clone(), *net, *refunded))
        .collect();
    let minor = amount;
    eventually(30, "analytics agree with the payments' events", || async {
        let seen = analyst_view().await;
        let days: Vec<(String, i64, i64)> = seen["dailyMetrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["date"].as_str().unwrap().to_owned(),
                    minor(&d["revenue"]),
                    minor(&d["refunds"]),
                )
            })
            .collect();
        days == expected_days
    })
    .await;
    // Per car: each car's revenue is its bookings' money.
    let seen = analyst_view().await;
    let mut per_car = BTreeMap::new();
    for booking in [&settled, &owing, &cancelled, &second_try] {
        let car = desk.booking(booking).await["carId"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        *per_car.entry(car).or_insert(0) += per_booking.get(booking.as_str()).copied().unwrap_or(0);
    }
    let cars_seen: BTreeMap<String, i64> = seen["carUtilization"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["car"]["id"].as_str().unwrap().to_owned(),
                minor(&c["revenue"]),
            )
        })
        .collect();
    let nonzero = |m: BTreeMap<String, i64>| -> BTreeMap<String, i64> {
        m.into_iter().filter(|(_, v)| *v != 0).collect()
    };
    assert_eq!(nonzero(cars_seen), nonzero(per_car));
}

#[tokio::test]
async fn a_deployment_takes_payments_only_through_the_gateways_it_names() {
    let db = TestDatabase::create().await;
    // A database of its own (not the development default), and no gateway named.
    let serve = Serve::start(&db.url(), &[("FLEETLEDGER_PAYMENT_GATEWAYS", "")]);
    let desk = Desk::open(&serve).await;
    let car = desk.car("Fiat").await;
    let customer = customer_token(&desk.addr, "nogateway@fleet.test").await;
    let booking = gql(
        &desk.addr,
        Some(&customer),
        "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
        json!({ "i": { "carId": car, "pickupAt": in_days(2), "returnAt": in_days(4) } }),
    )
    .await["requestBooking"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The sandbox's test token pays nothing here: no gateway is set up.
    let answer = common::gql_raw(
        &desk.addr,
        Some(&customer),
        "mutation($b: UUID!) { payBooking(bookingId: $b, method: { kind: CARD, token: \"tok_success\" }) { status } }",
        json!({ "b": booking }),
    )
    .await
    .unwrap();
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "UNAVAILABLE",
        "{answer}"
    );
    assert_eq!(
        answer["errors"][0]["message"],
        "no payment gateway is set up for CARD on this server"
    );
    let state = gql(
        &desk.addr,
        Some(&customer),
        BALANCE,
        json!({ "b": booking }),
    )
    .await;
    assert_eq!(state["booking"]["status"], "HELD");
    assert_eq!(state["booking"]["payments"], json!([]));
    drop(serve);

    // A name that is no gateway stops the server at start, saying which names exist.
    let said = refused_at_start(&db, "FLEETLEDGER_PAYMENT_GATEWAYS", "sandbox,stripe-live");
    assert!(
        said.contains(
            "FLEETLEDGER_PAYMENT_GATEWAYS names \"stripe-live\", which is not a payment gateway \
             (known: sandbox)"
        ),
        "{said}"
    );
}

/// An instant `seconds` from now, RFC 3339.
fn in_seconds(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(seconds)).to_rfc3339()
}

#[tokio::test]
async fn nobody_came_is_a_no_show_and_a_car_not_back_is_overdue_until_returned() {
    let db = TestDatabase::create().await;
    // No grace either way, so the clock need not wait for hours.
    let serve = Serve::start(
        &db.url(),
        &[
            ("FLEETLEDGER_NO_SHOW_GRACE_MINUTES", "0"),
            ("FLEETLEDGER_RETURN_GRACE_MINUTES", "0"),
        ],
    );
    let desk = Desk::open(&serve).await;
    let (first, second) = (desk.car("Fiat").await, desk.car("Seat").await);
    let customer = customer_token(&desk.addr, "late@fleet.test").await;
    let book = |car: String, from: String, until: String| {
        let (desk, customer) = (&desk, customer.clone());
        async move { desk.booked_and_paid(&customer, &car, &from, &until).await }
    };
    let state = |booking: String| {
        let (addr, admin) = (desk.addr.clone(), desk.admin.clone());
        async move {
            gql(
                &addr,
                Some(&admin),
                "query($b: UUID!) { booking(id: $b) { status overdueSince total { amount }
                    balance { owed { amount } paid { amount } refunded { amount } due { amount } }
                    activity { kind } } }",
                json!({ "b": booking }),
            )
            .await["booking"]
                .clone()
        }
    };

    // Two days from three seconds on, paid 100.00; nobody comes.
    let absent = book(first, in_seconds(3), in_seconds(2 * 86_400)).await;
    // One day from ten seconds on (time enough to hand it over before anyone could call it a
    // no-show), picked up at once, not back two seconds after its start.
    let kept = book(second, in_seconds(10), in_seconds(12)).await;
    gql(
        &desk.addr,
        Some(&desk.admin),
        "mutation($b: UUID!) { pickUpCar(bookingId: $b, odometerKm: 100, fuelPercent: 100) { status } }",
        json!({ "b": kept }),
    )
    .await;

    // The worker marks the no-show and keeps one day's rate: 50.00 goes back.
    eventually(30, "the no-show is marked and refunded", || async {
        let seen = state(absent.clone()).await;
        seen["status"] == "NO_SHOW" && seen["balance"]["due"]["amount"] == "0.00"
    })
    .await;
    let seen = state(absent.clone()).await;
    assert_eq!(
        seen["balance"],
        json!({ "owed": { "amount": "50.00" }, "paid": { "amount": "100.00" },
                "refunded": { "amount": "50.00" }, "due": { "amount": "0.00" } })
    );
    assert_eq!(
        seen["activity"].as_array().unwrap().last().unwrap()["kind"],
        "REFUNDED"
    );

    // The car not back is flagged for staff, and stays ACTIVE.
    eventually(60, "the rental is overdue", || async {
        state(kept.clone()).await["overdueSince"].is_string()
    })
    .await;
    let seen = state(kept.clone()).await;
    assert_eq!(seen["status"], "ACTIVE");
    assert!(
        seen["activity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "OVERDUE"),
        "{seen}"
    );
    // Back now, seconds late (late hours start a whole minute past the grace): the day booked.
    gql(
        &desk.addr,
        Some(&desk.admin),
        "mutation($b: UUID!) { returnCar(bookingId: $b, odometerKm: 150, fuelPercent: 100, branchCode: \"LIS\") { status } }",
        json!({ "b": kept }),
    )
    .await;
    eventually(30, "the rental is completed and settled", || async {
        state(kept.clone()).await["balance"]["due"]["amount"] == "0.00"
            && state(kept.clone()).await["status"] == "COMPLETED"
    })
    .await;
    let seen = state(kept.clone()).await;
    assert_eq!(seen["total"]["amount"], "50.00");
    assert_eq!(seen["balance"]["paid"]["amount"], "50.00");
}

#[tokio::test]
async fn cars_added_without_a_currency_are_priced_in_the_fleets() {
    let db = TestDatabase::create().await;
    let serve = Serve::start(&db.url(), &[("FLEETLEDGER_CURRENCY", "EUR")]);
    let desk = Desk::open(&serve).await;
    let car = gql(
        &desk.addr,
        Some(&desk.admin),
        "mutation { addCar(input: { make: \"Fiat\", model: \"500\", year: 2025, class: ECONOMY,
            seats: 4, transmission: MANUAL, fuel: PETROL, dailyRate: \"39.90\",
            branchCode: \"LIS\" }) { dailyRate { amount currency } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        car["addCar"]["dailyRate"],
        json!({ "amount": "39.90", "currency": "EUR" })
    );
    drop(serve);

    // A currency the fleet cannot price in stops the server at start.
    let said = refused_at_start(&db, "FLEETLEDGER_CURRENCY", "XAU");
    assert!(
        said.contains("FLEETLEDGER_CURRENCY=\"XAU\" is not an ISO 4217 currency with minor units"),
        "{said}"
    );
}

/// Yen have no minor unit and dinars three: amounts are taken, charged and shown with the
/// currency's own decimals, never as hundredths.
#[tokio::test]
async fn a_yen_fleet_prices_in_whole_yen() {
    let db = TestDatabase::create().await;
    let serve = Serve::start(&db.url(), &[("FLEETLEDGER_CURRENCY", "JPY")]);
    let desk = Desk::open(&serve).await;
    let add = |rate: &str, currency: Option<&str>| {
        let mut input = json!({ "make": "Toyota", "model": "Yaris", "year": 2025,
            "class": "ECONOMY", "seats": 4, "transmission": "MANUAL", "fuel": "PETROL",
            "features": [], "dailyRate": rate, "branchCode": "LIS" });
        if let Some(c) = currency {
            input["currency"] = json!(c);
        }
        common::gql_raw(
            &desk.addr,
            Some(&desk.admin),
            "mutation($i: CarInput!) { addCar(input: $i) { id dailyRate { amount currency } } }",
            json!({ "i": input }),
        )
    };
    let added = add("5000", None).await.unwrap();
    assert_eq!(
        added["data"]["addCar"]["dailyRate"],
        json!({ "amount": "5000", "currency": "JPY" })
    );
    let car = added["data"]["addCar"]["id"].as_str().unwrap().to_owned();
    // Half a yen, or a car priced in a currency with cents (the fleet's fees are in yen).
    for (rate, currency, said) in [
        (
            "5000.5",
            None,
            "invalid dailyRate: JPY has no minor unit: give a whole amount",
        ),
        (
            "39.90",
            Some("EUR"),
            "invalid currency: EUR has 2 decimal(s) and the fleet's JPY 0",
        ),
    ] {
        let refused = add(rate, currency).await.unwrap();
        assert_eq!(refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
        let message = refused["errors"][0]["message"].as_str().unwrap();
        assert!(message.starts_with(said), "{message}");
    }
    // Two days: 10000 yen, charged as such.
    let customer = customer_token(&desk.addr, "yen@fleet.test").await;
    let booked = gql(
        &desk.addr,
        Some(&customer),
        "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { total { amount currency } lines { label amount { amount } } } }",
        json!({ "i": { "carId": car, "pickupAt": in_days(2), "returnAt": in_days(4) } }),
    )
    .await;
    assert_eq!(
        booked["requestBooking"],
        json!({ "total": { "amount": "10000", "currency": "JPY" },
                "lines": [{ "label": "2 day(s) × 5000 JPY", "amount": { "amount": "10000" } }] })
    );
}

/// A car that breaks down takes nothing from its customer when a spare exists: the worker moves
/// the booking to the cheapest car of its class at its branch that is free over its window, at
/// the price booked (not the busy one, not a cheaper car of another class); when none is free,
/// the booking waits, displaced, for staff.
#[tokio::test]
async fn a_booking_whose_car_breaks_down_moves_to_a_free_spare_of_its_class_by_itself() {
    let db = TestDatabase::create().await;
    let serve = Serve::start(&db.url(), &[]);
    let desk = Desk::open(&serve).await;
    let car = |make: &'static str, class: &'static str, rate: &'static str| {
        let (addr, admin) = (desk.addr.clone(), desk.admin.clone());
        async move {
            gql(
                &addr,
                Some(&admin),
                "mutation($i: CarInput!) { addCar(input: $i) { id } }",
                json!({ "i": { "make": make, "model": "Any", "year": 2025, "class": class,
                    "seats": 4, "transmission": "MANUAL", "fuel": "PETROL", "features": [],
                    "dailyRate": rate, "currency": "EUR", "branchCode": "LIS" } }),
            )
            .await["addCar"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let broken = car("Fiat", "ECONOMY", "50.00").await;
    let busy = car("Seat", "ECONOMY", "60.00").await;
    let spare = car("Opel", "ECONOMY", "70.00").await;
    let _other_class = car("Dacia", "SUV", "30.00").await;
    let customer = customer_token(&desk.addr, "breakdown@fleet.test").await;
    let other = customer_token(&desk.addr, "busy@fleet.test").await;
    let (from, until) = (in_days(3), in_days(5));
    let book = |token: String, car: String| {
        let (desk, from, until) = (&desk, from.clone(), until.clone());
        async move { desk.booked_and_paid(&token, &car, &from, &until).await }
    };
    let booking = book(customer.clone(), broken.clone()).await;
    book(other, busy.clone()).await;
    // The read side shows the busy car taken before anything breaks.
    eventually(
        20,
        "the busy car's reservation is in the read model",
        || async {
            let found = gql(
                &desk.addr,
                Some(&desk.admin),
                "query($f: DateTime!, $t: DateTime!) { searchCars(filter: { pickupAt: $f,
                returnAt: $t, branchCode: \"LIS\" }) { edges { node { id } } } }",
                json!({ "f": from, "t": until }),
            )
            .await;
            let ids: Vec<&str> = found["searchCars"]["edges"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["node"]["id"].as_str())
                .collect();
            !ids.contains(&busy.as_str()) && !ids.contains(&broken.as_str())
        },
    )
    .await;

    let maintain = "mutation($c: UUID!, $s: DateTime!, $e: DateTime!) {
        scheduleMaintenance(id: $c, start: $s, end: $e, reason: \"engine warning\", urgent: true) { id } }";
    let shown = "query($b: UUID!) { booking(id: $b) { status car { id } displacedSince
        total { amount } activity { kind detail } } }";
    gql(
        &desk.addr,
        Some(&desk.admin),
        maintain,
        json!({ "c": broken, "s": in_days(1), "e": in_days(10) }),
    )
    .await;
    eventually(20, "the booking moved to the spare", || async {
        let b = gql(&desk.addr, Some(&customer), shown, json!({ "b": booking })).await;
        b["booking"]["car"]["id"] == spare.as_str()
    })
    .await;
    let moved =
        gql(&desk.addr, Some(&customer), shown, json!({ "b": booking })).await["booking"].clone();
    assert_eq!(moved["status"], "CONFIRMED");
    assert_eq!(moved["displacedSince"], Value::Null);
    assert_eq!(moved["total"]["amount"], "100.00");
    let activity = moved["activity"].as_array().unwrap();
    assert_eq!(
        activity[activity.len() - 2..],
        [
            json!({ "kind": "CAR_WITHDRAWN", "detail": "engine warning" }),
            json!({ "kind": "CAR_CHANGED",
                    "detail": "moved automatically to a free car of its class at LIS" }),
        ]
    );

    // The spare breaks down too: no car of the class is free, the booking waits for staff.
    gql(
        &desk.addr,
        Some(&desk.admin),
        maintain,
        json!({ "c": spare, "s": in_days(1), "e": in_days(10) }),
    )
    .await;
    let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
    eventually(20, "the second search for a spare ran", || async {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM workflow_steps WHERE kind = 'rehome' AND done_at IS NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let runs: i64 =
            sqlx::query_scalar("SELECT count(*) FROM workflow_steps WHERE kind = 'rehome'")
                .fetch_one(&pool)
                .await
                .unwrap();
        open == 0 && runs == 2
    })
    .await;
    let waiting =
        gql(&desk.addr, Some(&customer), shown, json!({ "b": booking })).await["booking"].clone();
    assert_eq!(waiting["car"]["id"], spare.as_str());
    assert!(waiting["displacedSince"].is_string(), "{waiting}");
}
