//! `fleetledger serve` killed with SIGKILL at each point of the payment path, for each sandbox
//! outcome: after a restart the payment ends CAPTURED or FAILED within seconds, never PENDING,
//! the card was charged exactly once (or not at all), the booking agrees, and a retry with the
//! same idempotency key answers that final state. Also killed right after a booking and after a
//! return committed: the retry answers that booking, and the return's fees are still collected.
//!
//! The process kills itself at a named crash point (`commands::crash`, armed by
//! FLEETLEDGER_CRASH_AT in the test build): SIGKILL at exactly that line, nothing after it runs.

mod common;

use std::os::unix::process::ExitStatusExt;

use common::{Serve, admin_token, customer_token, gql, gql_raw, in_days};
use eventstore::testing::{TestDatabase, eventually};
use serde_json::{Value, json};

const PAY: &str = "mutation($b: UUID!, $t: String!) {
    payBooking(bookingId: $b, method: { kind: CARD, token: $t }, idempotencyKey: \"pay-once\") {
        id status gateway failureReason
    }
}";

const BOOKING: &str = "query($b: UUID!) {
    booking(id: $b) { status payment { id status gateway failureReason } }
}";

/// What the sandbox's books hold for one payment: (charges, captured, refunded minor units).
async fn charged(db: &TestDatabase, payment: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE captured), coalesce(sum(refunded_minor), 0)::bigint \
         FROM sandbox_authorizations WHERE idempotency_key = $1 AND reference IS NOT NULL",
    )
    .bind(payment)
    .fetch_one(db.store().pool())
    .await
    .unwrap()
}

/// The final state a case must reach.
struct Expect {
    payment: &'static str,
    gateway: Option<&'static str>,
    reason: Option<&'static str>,
    booking: &'static str,
    charges: (i64, i64, i64),
}

/// A fleet of one car at BER, an admin and a customer on a `serve` that dies at `point`.
struct Desk {
    serve: Serve,
    admin: String,
    customer: String,
    car: Value,
}

impl Desk {
    /// `point`: the crash point to arm, if any.
    async fn open(db: &TestDatabase, point: Option<&str>) -> Self {
        let env: Vec<(&str, &str)> = point
            .map(|p| ("FLEETLEDGER_CRASH_AT", p))
            .into_iter()
            .collect();
        let serve = Serve::start(&db.url(), &env);
        let addr = serve.addr.clone();
        let admin = admin_token(&addr).await;
        gql(
            &addr,
            Some(&admin),
            "mutation { addBranch(input: { code: \"BER\", name: \"Berlin\", city: \"Berlin\",
                position: { latitude: 52.5, longitude: 13.4 } }) { code } }",
            json!({}),
        )
        .await;
        let car = gql(
            &addr,
            Some(&admin),
            "mutation($i: CarInput!) { addCar(input: $i) { id } }",
            json!({ "i": { "make": "Fiat", "model": "500", "year": 2025, "class": "ECONOMY",
                "seats": 4, "transmission": "MANUAL", "fuel": "PETROL", "features": [],
                "dailyRate": "35.00", "currency": "EUR", "branchCode": "BER" } }),
        )
        .await["addCar"]["id"]
            .clone();
        let customer = customer_token(&addr, "crash@fleet.test").await;
        Self {
            serve,
            admin,
            customer,
            car,
        }
    }

    fn addr(&self) -> String {
        self.serve.addr.clone()
    }

    async fn book(&self, addr: &str) -> Result<Value, reqwest::Error> {
        gql_raw(
            addr,
            Some(&self.customer),
            "mutation($i: BookingRequestInput!) {
                requestBooking(input: $i, idempotencyKey: \"book-once\") { id status } }",
            json!({ "i": { "carId": self.car, "pickupAt": in_days(3), "returnAt": in_days(5) } }),
        )
        .await
    }

    /// A booking made through `addr`: its id.
    async fn booked(&self, addr: &str) -> String {
        let answer = self.book(addr).await.expect("the server answers");
        answer["data"]["requestBooking"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("a booking: {answer}"))
            .to_owned()
    }

    /// The request died with the process, by SIGKILL.
    fn died(&mut self, answer: &Result<Value, reqwest::Error>, point: &str) {
        assert!(answer.is_err(), "the process died mid-request: {answer:?}");
        assert_eq!(
            self.serve.wait().signal(),
            Some(9),
            "killed by SIGKILL at {point}"
        );
    }
}

async fn crash_and_finish(point: &str, token: &str, expect: Expect) {
    let db = TestDatabase::create().await;
    let url = db.url();
    let mut desk = Desk::open(&db, Some(point)).await;
    let addr = desk.addr();
    let customer = desk.customer.clone();
    let booking = desk.booked(&addr).await;

    // The payment request dies with the process.
    let answer = gql_raw(
        &addr,
        Some(&customer),
        PAY,
        json!({ "b": booking, "t": token }),
    )
    .await;
    desk.died(&answer, point);

    // Back up: within seconds the worker finishes it.
    let serve = Serve::start(&url, &[]);
    let addr = serve.addr.clone();
    let state = || async {
        gql(&addr, Some(&customer), BOOKING, json!({ "b": booking })).await["booking"].clone()
    };
    eventually(
        20,
        &format!("the payment is finished after {point}"),
        || async {
            let now: Value = state().await;
            now["payment"]["status"] == expect.payment && now["status"] == expect.booking
        },
    )
    .await;
    let last = state().await;
    let payment = last["payment"].clone();
    assert_eq!(
        (
            payment["gateway"].as_str(),
            payment["failureReason"].as_str()
        ),
        (expect.gateway, expect.reason),
        "{last}"
    );
    let payment_id = payment["id"].as_str().unwrap().to_owned();
    assert_eq!(charged(&db, &payment_id).await, expect.charges);

    // The same request again answers the final state and charges nothing more.
    let retried = gql(
        &addr,
        Some(&customer),
        PAY,
        json!({ "b": booking, "t": token }),
    )
    .await["payBooking"]
        .clone();
    assert_eq!(
        retried, payment,
        "a retry with the same key answers the final state"
    );
    assert_eq!(charged(&db, &payment_id).await, expect.charges);
}

#[tokio::test]
async fn killed_after_a_booking_committed_a_retry_answers_that_booking() {
    let db = TestDatabase::create().await;
    let mut desk = Desk::open(&db, Some("booking.requested")).await;
    let answer = desk.book(&desk.addr()).await;
    desk.died(&answer, "booking.requested");

    let serve = Serve::start(&db.url(), &[]);
    let retried = desk.book(&serve.addr).await.unwrap();
    let booking = &retried["data"]["requestBooking"];
    assert_eq!(booking["status"], "HELD", "{retried}");
    // One booking, one reservation of the car, one expiry step: the commit stood whole.
    let counts: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events WHERE event_type = 'BookingHeld'), \
                (SELECT count(*) FROM events WHERE event_type = 'CarReserved'), \
                (SELECT count(*) FROM workflow_steps WHERE kind = 'expire_hold' AND booking_id = $1)",
    )
    .bind(booking["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap())
    .fetch_one(db.store().pool())
    .await
    .unwrap();
    assert_eq!(counts, (1, 1, 1));
}

#[tokio::test]
async fn killed_after_a_return_committed_the_fees_are_still_collected() {
    let db = TestDatabase::create().await;
    let mut desk = Desk::open(&db, Some("booking.returned")).await;
    let addr = desk.addr();
    let booking = desk.booked(&addr).await;
    let paid = gql(
        &addr,
        Some(&desk.customer),
        PAY,
        json!({ "b": booking, "t": "tok_visa" }),
    )
    .await;
    assert_eq!(paid["payBooking"]["status"], "CAPTURED");
    gql(
        &addr,
        Some(&desk.admin),
        "mutation($b: UUID!) { pickUpCar(bookingId: $b, odometerKm: 100, fuelPercent: 100) { id } }",
        json!({ "b": booking }),
    )
    .await;
    // Out days before its booked time: the days added are charged first.
    eventually(20, "the days added at pick-up are charged", || async {
        gql(
            &addr,
            Some(&desk.admin),
            "query($b: UUID!) { booking(id: $b) { payments { status } } }",
            json!({ "b": booking }),
        )
        .await["booking"]["payments"][1]["status"]
            == "CAPTURED"
    })
    .await;
    let answer = gql_raw(
        &addr,
        Some(&desk.admin),
        "mutation($b: UUID!) { returnCar(bookingId: $b, odometerKm: 150, fuelPercent: 70, branchCode: \"BER\") { status } }",
        json!({ "b": booking }),
    )
    .await;
    desk.died(&answer, "booking.returned");

    let serve = Serve::start(&db.url(), &[]);
    let fees = || async {
        gql(
            &serve.addr,
            Some(&desk.admin),
            "query($b: UUID!) { booking(id: $b) { status balance { due { amount } }
                payments { status amount { amount } } } }",
            json!({ "b": booking }),
        )
        .await["booking"]
            .clone()
    };
    // The days added at the pick-up were the second payment; the fees found at return are the
    // third.
    eventually(20, "the fees are charged after the restart", || async {
        fees().await["payments"][2]["status"] == "CAPTURED"
    })
    .await;
    let seen = fees().await;
    assert_eq!(seen["status"], "COMPLETED");
    assert_eq!(seen["balance"]["due"]["amount"], "0.00");
    assert_eq!(seen["payments"].as_array().map(Vec::len), Some(3), "{seen}");
    // Refuelling 30 % of the tank at 1.50 a point.
    assert_eq!(seen["payments"][2]["amount"]["amount"], "45.00");
}

/// The gateway never answers (`tok_timeout`) and the process is killed from outside while
/// the request waits on it: after the restart no gateway has the key on record, so nothing was
/// charged and the payment is FAILED, never left PENDING.
#[tokio::test]
async fn killed_from_outside_while_the_gateway_hangs_nothing_is_charged() {
    let db = TestDatabase::create().await;
    let mut desk = Desk::open(&db, None).await;
    let addr = desk.addr();
    let customer = desk.customer.clone();
    let booking = desk.booked(&addr).await;
    let paying = tokio::spawn({
        let (addr, customer, booking) = (addr.clone(), customer.clone(), booking.clone());
        async move {
            gql_raw(
                &addr,
                Some(&customer),
                PAY,
                json!({ "b": booking, "t": "tok_timeout" }),
            )
            .await
        }
    });
    // The attempt is open (PaymentRequested recorded) and the gateway is being waited on.
    let pool = db.store().pool().clone();
    eventually(10, "the payment attempt is under way", || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'PaymentRequested'")
                .fetch_one(&pool)
                .await
                .unwrap();
        n == 1
    })
    .await;
    assert_eq!(desk.serve.kill_9().signal(), Some(9));
    assert!(
        paying.await.unwrap().is_err(),
        "the request died with the process"
    );

    let serve = Serve::start(&db.url(), &[]);
    let state = || async {
        gql(
            &serve.addr,
            Some(&customer),
            BOOKING,
            json!({ "b": booking }),
        )
        .await["booking"]
            .clone()
    };
    eventually(20, "the interrupted payment is finished", || async {
        state().await["payment"]["status"] == "FAILED"
    })
    .await;
    let last = state().await;
    assert_eq!(last["status"], "HELD");
    assert_eq!(last["payment"]["failureReason"], INTERRUPTED);
    let payment = last["payment"]["id"].as_str().unwrap().to_owned();
    assert_eq!(charged(&db, &payment).await, (0, 0, 0));
}

/// Captured by the primary card gateway, charged once, the booking confirmed.
const CAPTURED_ONCE: Expect = Expect {
    payment: "CAPTURED",
    gateway: Some("sandbox-card"),
    reason: None,
    booking: "CONFIRMED",
    charges: (1, 1, 0),
};

const INTERRUPTED: &str =
    "interrupted before any gateway processed it; nothing was charged; pay again";

#[tokio::test]
async fn killed_before_the_gateway_call_nothing_is_charged_and_the_payment_fails() {
    for token in ["tok_visa", "tok_chargeDeclined"] {
        crash_and_finish(
            "payment.before_gateway",
            token,
            Expect {
                payment: "FAILED",
                gateway: None,
                reason: Some(INTERRUPTED),
                booking: "HELD",
                charges: (0, 0, 0),
            },
        )
        .await;
    }
}

#[tokio::test]
async fn killed_after_the_gateway_charged_the_charge_is_found_and_captured_once() {
    crash_and_finish("payment.gateway_answered", "tok_visa", CAPTURED_ONCE).await;
}

#[tokio::test]
async fn killed_after_the_gateway_declined_the_decline_is_recorded() {
    crash_and_finish(
        "payment.gateway_answered",
        "tok_chargeDeclined",
        Expect {
            payment: "FAILED",
            gateway: Some("sandbox-card"),
            reason: Some("card declined"),
            booking: "HELD",
            charges: (0, 0, 0),
        },
    )
    .await;
}

#[tokio::test]
async fn killed_after_the_authorization_was_recorded_it_is_captured_once() {
    crash_and_finish("payment.authorized", "tok_visa", CAPTURED_ONCE).await;
}

#[tokio::test]
async fn killed_after_the_capture_the_booking_is_confirmed() {
    crash_and_finish("payment.captured", "tok_visa", CAPTURED_ONCE).await;
}
