//! Paying for bookings against real PostgreSQL: a decline then a success, a crash between the
//! payment and the confirmation finished by the worker, a paid cancellation refunded, and fees
//! found at return charged to the saved card (or left as a balance due when it declines).

use std::time::Duration as StdDuration;

use chrono::{Duration, Utc};
use commands::booking::{BookingConfig, BookingFlowError, BookingRequest, BookingService};
use commands::checkout::{Checkout, MAX_FEE_CHARGES};
use commands::locks::HotCarLock;
use commands::payments::sandbox::{
    TOKEN_CHARGE_CUSTOMER_FAIL, TOKEN_DECLINE_INSUFFICIENT_FUNDS, TOKEN_SUCCESS,
};
use commands::payments::{
    PayRequest, PaymentGateway, PaymentService, PaymentToken, SandboxGateways, payment_id,
};
use commands::worker::Worker;
use commands::{CommandContext, Executor, ExecutorConfig};
use domain::TimeWindow;
use domain::booking::{BookingError, BookingStatus, CancelledBy};
use domain::car::{Car, CarClass, CarCommand, CarDetails, CarError, FuelType, Transmission};
use domain::payment::{IdempotencyKey, PaymentMethodKind, PaymentStatus};
use domain::pricing::{EarlyReturn, PricingPolicy};
use domain::{Currency, Money};
use eventstore::testing::TestDatabase;
use uuid::Uuid;

struct Shop {
    _db: TestDatabase,
    checkout: Checkout,
    bookings: BookingService,
    gateways: SandboxGateways,
    car_id: Uuid,
}

async fn shop() -> Shop {
    shop_with(StdDuration::from_millis(300)).await
}

/// A shop whose gateways are given up on after `attempt_timeout`.
async fn shop_with(attempt_timeout: StdDuration) -> Shop {
    shop_of(attempt_timeout, BookingConfig::default()).await
}

/// A shop with `config` for its bookings.
async fn shop_of(attempt_timeout: StdDuration, config: BookingConfig) -> Shop {
    let db = TestDatabase::create().await;
    let store = db.store();
    let cars: Executor<Car> = Executor::new(store.clone(), (), ExecutorConfig::default());
    let car_id = Uuid::now_v7();
    let register = CarCommand::Register {
        id: car_id,
        details: CarDetails {
            make: "VW".into(),
            model: "Golf".into(),
            year: 2025,
            class: CarClass::Compact,
            seats: 5,
            transmission: Transmission::Automatic,
            fuel: FuelType::Diesel,
            features: vec![],
        },
        daily_rate: Money::new(5_000, Currency::EUR),
        branch: "LIS".into(),
    };
    cars.execute(&car_id.to_string(), register, &CommandContext::new("staff"))
        .await
        .unwrap();
    let bookings = BookingService::new(
        store.clone(),
        cars,
        Executor::new(store.clone(), (), ExecutorConfig::default()),
        HotCarLock::disabled(),
        config,
    );
    let gateways = SandboxGateways::new();
    let payments = PaymentService::new(
        Executor::new(store.clone(), (), ExecutorConfig::default()),
        gateways.router(attempt_timeout),
    );
    Shop {
        _db: db,
        checkout: Checkout::new(bookings.clone(), payments),
        bookings,
        gateways,
        car_id,
    }
}

/// Pay `booking` by card with `token` under the idempotency key `key`.
async fn pay(
    shop: &Shop,
    ctx: &CommandContext,
    booking: Uuid,
    token: &str,
    key: &str,
) -> commands::checkout::Paid {
    shop.checkout
        .pay_booking(
            ctx,
            booking,
            PaymentMethodKind::Card,
            token.into(),
            Some(key),
            Utc::now(),
        )
        .await
        .unwrap()
}

async fn hold(shop: &Shop, customer: Uuid) -> Uuid {
    let start = Utc::now() + Duration::days(3);
    let window = TimeWindow::new(start, start + Duration::days(2)).unwrap();
    let request = BookingRequest {
        car_id: shop.car_id,
        window,
        pickup_branch: None,
        return_branch: None,
        extras: Vec::new(),
    };
    shop.bookings
        .request_booking(
            &CommandContext::new(customer.to_string()),
            customer,
            request,
            None,
            Utc::now(),
        )
        .await
        .unwrap()
        .id
}

#[tokio::test]
async fn a_declined_then_accepted_payment_confirms_the_booking() {
    let shop = shop().await;
    let customer = Uuid::now_v7();
    let ctx = CommandContext::new(customer.to_string());
    let booking = hold(&shop, customer).await;

    let declined = shop
        .checkout
        .pay_booking(
            &ctx,
            booking,
            PaymentMethodKind::Card,
            TOKEN_DECLINE_INSUFFICIENT_FUNDS.into(),
            Some("try-1"),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(declined.payment.status, PaymentStatus::Failed);
    assert_eq!(
        declined.payment.failure_reason.as_deref(),
        Some("insufficient funds")
    );
    assert_eq!(declined.booking.status(), Some(BookingStatus::Held));

    let paid = shop
        .checkout
        .pay_booking(
            &ctx,
            booking,
            PaymentMethodKind::Card,
            TOKEN_SUCCESS.into(),
            Some("try-2"),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(paid.payment.status, PaymentStatus::Captured);
    assert_eq!(paid.payment.amount, Money::new(10_000, Currency::EUR));
    assert_eq!(paid.booking.status(), Some(BookingStatus::Confirmed));
    assert_eq!(paid.booking.state.payment_id, Some(paid.payment.id));

    // The same request again answers with the same payment and charges nothing more.
    let again = shop
        .checkout
        .pay_booking(
            &ctx,
            booking,
            PaymentMethodKind::Card,
            TOKEN_SUCCESS.into(),
            Some("try-2"),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(again.payment.id, paid.payment.id);
    assert_eq!(shop.gateways.card.charge_count().await, 1);
}

#[tokio::test]
async fn a_crash_between_payment_and_confirmation_is_finished_by_the_worker() {
    let shop = shop().await;
    let customer = Uuid::now_v7();
    let ctx = CommandContext::new(customer.to_string());
    let booking = hold(&shop, customer).await;
    let key = IdempotencyKey::parse("pay-1").unwrap();
    // What pay_booking does up to the crash: the step is stored, the card is charged...
    let payment_id = commands::payments::payment_id(booking, &key);
    sqlx::query("INSERT INTO workflow_steps (id, kind, booking_id, payload, due_at) VALUES ($1, 'confirm_payment', $2, $3, now())")
        .bind(Uuid::now_v7())
        .bind(booking)
        .bind(serde_json::json!({ "payment_id": payment_id }))
        .execute(shop.bookings.store().pool())
        .await
        .unwrap();
    let request = PayRequest {
        booking_id: booking,
        amount: Money::new(10_000, Currency::EUR),
        method: PaymentMethodKind::Card,
        token: PaymentToken::new(TOKEN_SUCCESS),
        idempotency_key: key,
        gateway: None,
    };
    shop.checkout.payments().pay(request, &ctx).await.unwrap();
    // ...and the process dies before confirming.
    assert_eq!(
        shop.bookings.get(booking).await.unwrap().status(),
        Some(BookingStatus::Held)
    );

    let worker = Worker::new(shop.bookings.clone()).with_checkout(shop.checkout.clone());
    let pass = worker
        .run_once(Utc::now() + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(pass.done, 1);
    let confirmed = shop.bookings.get(booking).await.unwrap();
    assert_eq!(confirmed.status(), Some(BookingStatus::Confirmed));
    assert_eq!(confirmed.state.payment_id, Some(payment_id));
}

#[tokio::test]
async fn cancelling_a_paid_booking_early_refunds_it_in_full() {
    let shop = shop().await;
    let customer = Uuid::now_v7();
    let ctx = CommandContext::new(customer.to_string());
    let booking = hold(&shop, customer).await;
    let paid = shop
        .checkout
        .pay_booking(
            &ctx,
            booking,
            PaymentMethodKind::Paypal,
            TOKEN_SUCCESS.into(),
            Some("p"),
            Utc::now(),
        )
        .await
        .unwrap();
    let cancelled = shop
        .bookings
        .cancel(&ctx, booking, CancelledBy::Customer, None, Utc::now())
        .await
        .unwrap();
    assert_eq!(cancelled.status(), Some(BookingStatus::Cancelled));
    assert_eq!(
        cancelled.state.cancellation_fee,
        Some(Money::new(0, Currency::EUR))
    );

    let worker = Worker::new(shop.bookings.clone()).with_checkout(shop.checkout.clone());
    let pass = worker
        .run_once(Utc::now() + Duration::seconds(1))
        .await
        .unwrap();
    assert!(pass.done >= 1 && pass.failed == 0, "{pass:?}");
    let payment = shop
        .checkout
        .payments()
        .get(paid.payment.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payment.status, PaymentStatus::Refunded);
    assert_eq!(payment.refunded, Money::new(10_000, Currency::EUR));
    // Running the steps again refunds nothing more.
    worker
        .run_once(Utc::now() + Duration::seconds(2))
        .await
        .unwrap();
    assert_eq!(shop.gateways.paypal.refund_count().await, 1);
}

/// Two workers at once, and a gateway that takes 2 s to answer: the refund step is run by one
/// of them only, the gateway is asked once, and the step is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_run_one_step_twice_however_slow_the_gateway() {
    let shop = shop_with(StdDuration::from_secs(10)).await;
    let customer = Uuid::now_v7();
    let ctx = CommandContext::new(customer.to_string());
    let booking = hold(&shop, customer).await;
    shop.checkout
        .pay_booking(
            &ctx,
            booking,
            PaymentMethodKind::Paypal,
            TOKEN_SUCCESS.into(),
            Some("slow"),
            Utc::now(),
        )
        .await
        .unwrap();
    shop.bookings
        .cancel(&ctx, booking, CancelledBy::Customer, None, Utc::now())
        .await
        .unwrap();
    shop.gateways
        .paypal
        .set_response_delay(StdDuration::from_secs(2));
    let a = Worker::new(shop.bookings.clone()).with_checkout(shop.checkout.clone());
    let b = Worker::new(shop.bookings.clone()).with_checkout(shop.checkout.clone());
    let at = Utc::now() + Duration::seconds(1);
    let (pa, pb) = tokio::join!(a.run_once(at), b.run_once(at));
    let (pa, pb) = (pa.unwrap(), pb.unwrap());
    assert_eq!((pa.failed, pb.failed), (0, 0));
    assert_eq!(shop.gateways.paypal.refund_calls(), 1, "{pa:?} {pb:?}");
    assert_eq!(shop.gateways.paypal.refund_count().await, 1);
    let refund_done: Vec<bool> =
        sqlx::query_scalar("SELECT done_at IS NOT NULL FROM workflow_steps WHERE kind = 'refund'")
            .fetch_all(shop.bookings.store().pool())
            .await
            .unwrap();
    assert_eq!(refund_done, [true]);
    assert_eq!(pa.done + pb.done, 1, "{pa:?} {pb:?}");
}

/// A worker's claim is its database session: when the worker dies (its connection gone),
/// another worker runs the step at once, with no lease to wait out.
#[tokio::test]
async fn a_dead_workers_claim_is_taken_over_at_once() {
    let shop = shop().await;
    let booking = hold(&shop, Uuid::now_v7()).await;
    let pool = shop.bookings.store().pool().clone();
    let step: Uuid = sqlx::query_scalar(
        "SELECT id FROM workflow_steps WHERE booking_id = $1 AND kind = 'expire_hold'",
    )
    .bind(booking)
    .fetch_one(&pool)
    .await
    .unwrap();
    // A worker that claimed the step, then died (its session ends with it).
    let mut dead = pool.acquire().await.unwrap().detach();
    let claimed: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtextextended('fleetledger.step:' || $1::text, 0))",
    )
    .bind(step)
    .fetch_one(&mut dead)
    .await
    .unwrap();
    assert!(claimed);
    let worker = Worker::new(shop.bookings.clone());
    let after_hold = Utc::now() + Duration::minutes(6);
    assert_eq!(
        worker.run_once(after_hold).await.unwrap().done,
        0,
        "claimed elsewhere"
    );
    drop(dead);
    eventstore::testing::eventually(10, "the claim is released with its session", || async {
        worker.run_once(after_hold).await.unwrap().done == 1
    })
    .await;
    assert_eq!(
        shop.bookings.get(booking).await.unwrap().status(),
        Some(BookingStatus::Expired)
    );
}

/// Pay with `token`, pick the car up on time, return it three hours late with 30 % less fuel:
/// the booking's final total exceeds what was paid by the fees. (The booking, the return time,
/// the fees.)
async fn returned_late(shop: &Shop, token: &str) -> (Uuid, chrono::DateTime<Utc>, i64) {
    let customer = Uuid::now_v7();
    let ctx = CommandContext::new(customer.to_string());
    let booking = hold(shop, customer).await;
    let paid = pay(shop, &ctx, booking, token, "pay").await;
    assert_eq!(paid.payment.status, PaymentStatus::Captured);
    let window = paid.booking.state.window.unwrap();
    let staff = CommandContext::new("staff");
    shop.bookings
        .pick_up(&staff, booking, 1_000.0, 80.0, window.start)
        .await
        .unwrap();
    let at = window.end + Duration::hours(3);
    let returned = shop
        .bookings
        .return_car(&staff, booking, 1_250.0, 50.0, "LIS".into(), at)
        .await
        .unwrap();
    assert_eq!(returned.status(), Some(BookingStatus::Completed));
    let fees = returned.state.total.unwrap().minor - paid.payment.amount.minor;
    assert!(fees > 0, "a late return with less fuel costs extra");
    (booking, at, fees)
}

fn fee_payment(booking: Uuid, n: u32) -> Uuid {
    payment_id(
        booking,
        &IdempotencyKey::parse(&format!("balance-{n}")).unwrap(),
    )
}

#[tokio::test]
async fn fees_found_at_return_are_charged_to_the_saved_card_once() {
    let shop = shop().await;
    let worker = Worker::new(shop.bookings.clone()).with_checkout(shop.checkout.clone());
    let (booking, at, fees) = returned_late(&shop, TOKEN_SUCCESS).await;

    worker.run_once(at).await.unwrap();
    let fee = shop
        .checkout
        .payments()
        .get(fee_payment(booking, 1))
        .await
        .unwrap()
        .expect("a charge for the fees");
    assert_eq!(
        (fee.status, fee.amount, fee.gateway.as_deref()),
        (
            PaymentStatus::Captured,
            Money::new(fees, Currency::EUR),
            Some("sandbox-card")
        )
    );
    let charges = shop.gateways.card.charges().await;
    assert_eq!(
        charges
            .iter()
            .map(|c| (c.amount.minor, c.captured))
            .collect::<Vec<_>>(),
        vec![(10_000, true), (fees, true)],
        "the booking, then the fees, charged without the customer"
    );
    // Running the worker again charges nothing more: the balance is settled.
    worker.run_once(at + Duration::hours(1)).await.unwrap();
    assert_eq!(shop.gateways.card.charge_count().await, 2);
    assert!(
        shop.checkout
            .payments()
            .get(fee_payment(booking, 2))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_declined_fee_charge_is_retried_with_backoff_then_left_to_staff() {
    let shop = shop().await;
    let worker = Worker::new(shop.bookings.clone()).with_checkout(shop.checkout.clone());
    let (booking, at, fees) = returned_late(&shop, TOKEN_CHARGE_CUSTOMER_FAIL).await;
    let pool = shop.bookings.store().pool().clone();
    let step = || async {
        sqlx::query_as::<
            _,
            (
                Option<chrono::DateTime<Utc>>,
                chrono::DateTime<Utc>,
                Option<String>,
            ),
        >(
            "SELECT done_at, due_at, last_error FROM workflow_steps \
             WHERE booking_id = $1 AND kind = 'settle_balance'",
        )
        .bind(booking)
        .fetch_one(&pool)
        .await
        .unwrap()
    };

    // Each pass that finds the step due makes one charge, declined; the step waits longer each
    // time (2 s, 4 s, 8 s: the worker's backoff).
    let mut now = at;
    for n in 1..=MAX_FEE_CHARGES {
        worker.run_once(now).await.unwrap();
        let fee = shop
            .checkout
            .payments()
            .get(fee_payment(booking, n))
            .await
            .unwrap()
            .expect("a charge for the fees");
        assert_eq!(
            (fee.status, fee.amount, fee.failure_reason.as_deref()),
            (
                PaymentStatus::Failed,
                Money::new(fees, Currency::EUR),
                Some("card declined")
            )
        );
        let (done, due, error) = step().await;
        assert_eq!(done, None);
        assert_eq!(
            error.as_deref(),
            Some(format!("charge {n} for the balance declined: card declined").as_str())
        );
        assert!(due > now, "retried later, not at once");
        // Not due yet: nothing happens.
        worker.run_once(now).await.unwrap();
        assert!(
            shop.checkout
                .payments()
                .get(fee_payment(booking, n + 1))
                .await
                .unwrap()
                .is_none()
        );
        now = due;
    }
    // After the last decline the balance is left to staff: the step stops retrying and waits
    // in staff's list of stuck steps; no further charge.
    worker.run_once(now).await.unwrap();
    let stuck = commands::worker::stuck_steps(&pool, None, 10)
        .await
        .unwrap();
    assert_eq!(stuck.len(), 1);
    assert_eq!(
        (stuck[0].kind.as_str(), stuck[0].booking_id),
        ("settle_balance", booking)
    );
    assert_eq!(
        stuck[0].last_error.as_deref(),
        Some("balance left for staff to collect: 3 charges for the balance were declined")
    );
    worker.run_once(now + Duration::hours(1)).await.unwrap();
    assert!(
        shop.checkout
            .payments()
            .get(fee_payment(booking, MAX_FEE_CHARGES + 1))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        shop.bookings.get(booking).await.unwrap().status(),
        Some(BookingStatus::Completed)
    );
    assert_eq!(
        shop.gateways.card.charge_count().await,
        1,
        "only the booking was ever charged"
    );
}

#[tokio::test]
async fn changing_a_paid_booking_charges_or_refunds_the_difference() {
    let shop = shop().await;
    let worker = Worker::new(shop.bookings.clone()).with_checkout(shop.checkout.clone());
    let customer = Uuid::now_v7();
    let ctx = CommandContext::new(customer.to_string());
    let booking = hold(&shop, customer).await;
    let paid = pay(&shop, &ctx, booking, TOKEN_SUCCESS, "pay").await;
    let start = paid.booking.state.window.unwrap().start;
    let eur = |minor| Money::new(minor, Currency::EUR);
    let payments = shop.checkout.payments();

    // Two days become four: the other 100.00 is charged to the saved card.
    let now = Utc::now();
    let longer = TimeWindow::new(start, start + Duration::days(4)).unwrap();
    let changed = shop
        .bookings
        .modify(&ctx, booking, longer, now)
        .await
        .unwrap();
    assert_eq!(changed.state.total, Some(eur(20_000)));
    worker.run_once(now).await.unwrap();
    let extra = payments
        .get(fee_payment(booking, 1))
        .await
        .unwrap()
        .expect("a charge for the difference");
    assert_eq!(
        (extra.status, extra.amount),
        (PaymentStatus::Captured, eur(10_000))
    );

    // Four days become one: 150.00 goes back, the first payment first.
    let shorter = TimeWindow::new(start, start + Duration::days(1)).unwrap();
    shop.bookings
        .modify(&ctx, booking, shorter, now)
        .await
        .unwrap();
    worker.run_once(now).await.unwrap();
    let first = payments.get(paid.payment.id).await.unwrap().unwrap();
    let extra = payments.get(extra.id).await.unwrap().unwrap();
    assert_eq!(
        (first.status, first.refunded),
        (PaymentStatus::Refunded, eur(10_000))
    );
    assert_eq!(
        (extra.status, extra.refunded),
        (PaymentStatus::PartiallyRefunded, eur(5_000))
    );
    // What the booking holds is its total; the gateway agrees.
    let charges = shop.gateways.card.charges().await;
    let held: i64 = charges
        .iter()
        .map(|c| c.amount.minor - c.refunded.minor)
        .sum();
    assert_eq!(held, 5_000);
    // Nothing more happens on the next pass.
    worker.run_once(now).await.unwrap();
    assert_eq!(shop.gateways.card.charge_count().await, 2);
    assert_eq!(shop.gateways.card.refund_count().await, 2);
}

/// The events of one payment's stream of a type.
async fn count_events(shop: &Shop, payment: Uuid, event_type: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'payment' AND aggregate_id = $1 \
         AND event_type = $2",
    )
    .bind(payment.to_string())
    .bind(event_type)
    .fetch_one(shop.bookings.store().pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_declined_refund_waits_for_staff_with_one_failure_per_decision() {
    let shop = shop().await;
    let worker = Worker::new(shop.bookings.clone()).with_checkout(shop.checkout.clone());
    let pool = shop.bookings.store().pool().clone();
    let customer = Uuid::now_v7();
    let ctx = CommandContext::new(customer.to_string());
    let booking = hold(&shop, customer).await;
    let paid = pay(&shop, &ctx, booking, TOKEN_SUCCESS, "p").await;
    // 80.00 went back through the provider's dashboard, past Fleetledger: the full refund of
    // the cancellation can only be declined.
    let charge = shop.gateways.card.charges().await[0].reference.clone();
    shop.gateways
        .card
        .refund(&commands::payments::RefundRequest {
            reference: charge,
            amount: Money::new(8_000, Currency::EUR),
            idempotency_key: "dashboard".into(),
        })
        .await
        .unwrap();
    shop.bookings
        .cancel(&ctx, booking, CancelledBy::Customer, None, Utc::now())
        .await
        .unwrap();

    // However often the worker passes, the decline is asked and recorded once.
    for hours in 0..4 {
        worker
            .run_once(Utc::now() + Duration::hours(hours))
            .await
            .unwrap();
    }
    assert_eq!(
        count_events(&shop, paid.payment.id, "RefundFailed").await,
        1
    );
    let stuck = commands::worker::stuck_steps(&pool, None, 10)
        .await
        .unwrap();
    assert_eq!(stuck.len(), 1);
    assert_eq!(
        (stuck[0].kind.as_str(), stuck[0].booking_id),
        ("refund", booking)
    );
    assert_eq!(
        stuck[0].last_error.as_deref(),
        Some("refund declined by sandbox-card: refund exceeds the captured amount")
    );
    let counts = commands::worker::step_counts(&pool, Utc::now() + Duration::hours(5))
        .await
        .unwrap();
    assert_eq!(counts.stuck, 1);

    // Staff sends it back: one more decision, one more failure, stuck again.
    assert!(
        commands::worker::retry_step(&pool, stuck[0].id)
            .await
            .unwrap()
    );
    assert!(
        !commands::worker::retry_step(&pool, stuck[0].id)
            .await
            .unwrap(),
        "not stuck now"
    );
    worker
        .run_once(Utc::now() + Duration::hours(6))
        .await
        .unwrap();
    assert_eq!(
        count_events(&shop, paid.payment.id, "RefundFailed").await,
        2
    );
    assert_eq!(
        commands::worker::stuck_steps(&pool, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_paid_booking_nobody_picks_up_becomes_a_no_show_and_an_unreturned_car_overdue() {
    let shop = shop().await;
    let worker = Worker::new(shop.bookings.clone()).with_checkout(shop.checkout.clone());
    let eur = |minor| Money::new(minor, Currency::EUR);
    // Nobody comes: within the grace nothing happens, after it the car is released and one
    // day's rate kept, the rest refunded.
    let customer = Uuid::now_v7();
    let ctx = CommandContext::new(customer.to_string());
    let booking = hold(&shop, customer).await;
    let paid = pay(&shop, &ctx, booking, TOKEN_SUCCESS, "pay").await;
    let start = paid.booking.state.window.unwrap().start;
    worker
        .run_once(start + Duration::minutes(119))
        .await
        .unwrap();
    assert_eq!(
        shop.bookings.get(booking).await.unwrap().status(),
        Some(BookingStatus::Confirmed)
    );
    worker
        .run_once(start + Duration::minutes(121))
        .await
        .unwrap();
    let gone = shop.bookings.get(booking).await.unwrap();
    assert_eq!(gone.status(), Some(BookingStatus::NoShow));
    assert_eq!(gone.state.no_show_fee, Some(eur(5_000)));
    // The refund step is due at once; the next pass pays it.
    worker
        .run_once(start + Duration::minutes(122))
        .await
        .unwrap();
    let payment = shop
        .checkout
        .payments()
        .get(paid.payment.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (payment.status, payment.refunded),
        (PaymentStatus::PartiallyRefunded, eur(5_000))
    );
    // The car is free for the window again: another customer can have it.
    let again = hold(&shop, Uuid::now_v7()).await;
    assert_eq!(
        shop.bookings.get(again).await.unwrap().status(),
        Some(BookingStatus::Held)
    );

    // A rental not back by its return time and grace is overdue (once), and stays ACTIVE.
    let shop = self::shop().await;
    let worker = Worker::new(shop.bookings.clone()).with_checkout(shop.checkout.clone());
    let customer = Uuid::now_v7();
    let ctx = CommandContext::new(customer.to_string());
    let booking = hold(&shop, customer).await;
    let paid = pay(&shop, &ctx, booking, TOKEN_SUCCESS, "pay").await;
    let window = paid.booking.state.window.unwrap();
    shop.bookings
        .pick_up(
            &CommandContext::new("staff"),
            booking,
            10.0,
            90.0,
            window.start,
        )
        .await
        .unwrap();
    worker.run_once(window.end).await.unwrap();
    assert!(!shop.bookings.get(booking).await.unwrap().state.overdue);
    worker
        .run_once(window.end + Duration::minutes(60))
        .await
        .unwrap();
    let late = shop.bookings.get(booking).await.unwrap();
    assert!(late.state.overdue);
    assert_eq!(late.status(), Some(BookingStatus::Active));
    let overdue_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'RentalOverdue' AND aggregate_id = $1",
    )
    .bind(booking.to_string())
    .fetch_one(shop.bookings.store().pool())
    .await
    .unwrap();
    assert_eq!(overdue_events, 1);
}

#[tokio::test]
async fn an_early_pick_up_and_an_extended_rental_are_priced_and_charged() {
    let shop = shop().await;
    let worker = Worker::new(shop.bookings.clone()).with_checkout(shop.checkout.clone());
    let customer = Uuid::now_v7();
    let ctx = CommandContext::new(customer.to_string());
    let staff = CommandContext::new("staff");
    let booking = hold(&shop, customer).await;
    let paid = pay(&shop, &ctx, booking, TOKEN_SUCCESS, "pay").await;
    let booked = paid.booking.state.window.unwrap();
    let eur = |minor| Money::new(minor, Currency::EUR);
    let payments = shop.checkout.payments();

    // Booked for two days from three days ahead; the car goes out now: five days at 50.00.
    let now = Utc::now();
    let out = shop
        .bookings
        .pick_up(&staff, booking, 1_000.0, 100.0, now)
        .await
        .unwrap();
    let from_now = TimeWindow::new(now, booked.end).unwrap();
    assert_eq!(out.state.window, Some(from_now));
    assert_eq!(out.state.total, Some(eur(25_000)));
    worker.run_once(now).await.unwrap();
    let extra = payments
        .get(fee_payment(booking, 1))
        .await
        .unwrap()
        .expect("a charge for the three days more");
    assert_eq!(
        (extra.status, extra.amount),
        (PaymentStatus::Captured, eur(15_000))
    );
    // Nobody else can take the car for the time it is out.
    let other = Uuid::now_v7();
    let taken = shop
        .bookings
        .request_booking(
            &CommandContext::new(other.to_string()),
            other,
            BookingRequest {
                car_id: shop.car_id,
                window: TimeWindow::new(now + Duration::days(1), now + Duration::days(2)).unwrap(),
                pickup_branch: None,
                return_branch: None,
                extras: Vec::new(),
            },
            None,
            now,
        )
        .await;
    assert!(
        matches!(
            taken,
            Err(BookingFlowError::Car(CarError::NotAvailable { .. }))
        ),
        "{taken:?}"
    );

    // Out on the rental, the customer keeps the car a day longer: 50.00 more, charged.
    let longer = TimeWindow::new(now, booked.end + Duration::days(1)).unwrap();
    let extended = shop
        .bookings
        .modify(&ctx, booking, longer, now)
        .await
        .unwrap();
    assert_eq!(extended.state.total, Some(eur(30_000)));
    worker.run_once(now).await.unwrap();
    let second = payments
        .get(fee_payment(booking, 2))
        .await
        .unwrap()
        .expect("a charge for the extra day");
    assert_eq!(
        (second.status, second.amount),
        (PaymentStatus::Captured, eur(5_000))
    );
    // Its pick-up cannot move any more.
    let moved = shop
        .bookings
        .modify(
            &ctx,
            booking,
            TimeWindow::new(now + Duration::hours(1), longer.end).unwrap(),
            now,
        )
        .await;
    assert!(
        matches!(
            moved,
            Err(BookingFlowError::Booking(BookingError::Invalid {
                field: "pickupAt",
                ..
            }))
        ),
        "{moved:?}"
    );
    // The gateway holds what the booking costs.
    let charges = shop.gateways.card.charges().await;
    let held: i64 = charges
        .iter()
        .map(|c| c.amount.minor - c.refunded.minor)
        .sum();
    assert_eq!(held, 30_000);
}

#[tokio::test]
async fn an_early_return_is_refunded_by_the_policy_less_its_fee() {
    let policy = PricingPolicy {
        early_return: EarlyReturn::PerDayUsed { fee_minor: 2_000 },
        ..PricingPolicy::default()
    };
    let shop = shop_of(
        StdDuration::from_millis(300),
        BookingConfig {
            pricing: policy,
            ..BookingConfig::default()
        },
    )
    .await;
    let worker = Worker::new(shop.bookings.clone()).with_checkout(shop.checkout.clone());
    let customer = Uuid::now_v7();
    let ctx = CommandContext::new(customer.to_string());
    let staff = CommandContext::new("staff");
    let booking = hold(&shop, customer).await;
    let paid = pay(&shop, &ctx, booking, TOKEN_SUCCESS, "pay").await;
    let window = paid.booking.state.window.unwrap();
    let eur = |minor| Money::new(minor, Currency::EUR);
    shop.bookings
        .pick_up(&staff, booking, 1_000.0, 100.0, window.start)
        .await
        .unwrap();
    // Booked two days (100.00), back after one: one day used (50.00), 50.00 credited, 20.00
    // fee: 70.00 owed, 30.00 goes back to the card.
    let at = window.start + Duration::hours(23);
    let returned = shop
        .bookings
        .return_car(&staff, booking, 1_100.0, 100.0, "LIS".into(), at)
        .await
        .unwrap();
    assert_eq!(returned.state.total, Some(eur(7_000)));
    let lines: Vec<(String, i64)> = returned
        .state
        .extra_charges
        .iter()
        .map(|l| (l.label.clone(), l.amount.minor))
        .collect();
    assert_eq!(
        lines,
        [
            ("early return, 1 day(s) used".to_owned(), -5_000),
            ("early return fee".to_owned(), 2_000)
        ]
    );
    worker.run_once(at).await.unwrap();
    let first = shop
        .checkout
        .payments()
        .get(paid.payment.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.status, first.refunded),
        (PaymentStatus::PartiallyRefunded, eur(3_000))
    );
    // Nothing more on the next pass; the car is free again from the return.
    worker.run_once(at).await.unwrap();
    assert_eq!(shop.gateways.card.refund_count().await, 1);
}

#[tokio::test]
async fn a_car_returned_elsewhere_strands_its_next_booking_until_staff_move_it() {
    let shop = shop().await;
    let worker = Worker::new(shop.bookings.clone()).with_checkout(shop.checkout.clone());
    sqlx::query(
        "INSERT INTO branches (code, name, city, latitude, longitude) \
         VALUES ('OPO', 'Porto', 'Porto', 41.15, -8.63)",
    )
    .execute(&shop._db.pool)
    .await
    .unwrap();
    let staff = CommandContext::new("staff");
    // A one-way rental LIS → OPO, and a later booking that expects the car at LIS.
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let start = Utc::now() + Duration::days(3);
    let one_way = shop
        .bookings
        .request_booking(
            &CommandContext::new(first.to_string()),
            first,
            BookingRequest {
                car_id: shop.car_id,
                window: TimeWindow::new(start, start + Duration::days(2)).unwrap(),
                pickup_branch: None,
                return_branch: Some("OPO".into()),
                extras: Vec::new(),
            },
            None,
            Utc::now(),
        )
        .await
        .unwrap()
        .id;
    let later = shop
        .bookings
        .request_booking(
            &CommandContext::new(second.to_string()),
            second,
            BookingRequest {
                car_id: shop.car_id,
                window: TimeWindow::new(start + Duration::days(5), start + Duration::days(6))
                    .unwrap(),
                pickup_branch: None,
                return_branch: None,
                extras: Vec::new(),
            },
            None,
            Utc::now(),
        )
        .await
        .unwrap()
        .id;
    pay(
        &shop,
        &CommandContext::new(first.to_string()),
        one_way,
        TOKEN_SUCCESS,
        "pay",
    )
    .await;
    pay(
        &shop,
        &CommandContext::new(second.to_string()),
        later,
        TOKEN_SUCCESS,
        "pay",
    )
    .await;
    shop.bookings
        .pick_up(&staff, one_way, 1_000.0, 100.0, start)
        .await
        .unwrap();
    let back = start + Duration::days(2);
    shop.bookings
        .return_car(&staff, one_way, 1_300.0, 100.0, "OPO".into(), back)
        .await
        .unwrap();

    // The worker finds the later booking stranded: it loses the car, for staff to move.
    worker.run_once(back).await.unwrap();
    let stranded = shop.bookings.get(later).await.unwrap();
    assert!(stranded.state.displaced);
    assert_eq!(stranded.status(), Some(BookingStatus::Confirmed));
    let car = shop.bookings.car(shop.car_id).await.unwrap();
    assert_eq!(car.branch.as_deref(), Some("OPO"));
    assert!(
        car.blocks.iter().all(|b| b.booking() != Some(later)),
        "{:?}",
        car.blocks
    );
    // Nothing is handed over at LIS meanwhile.
    let refused = shop
        .bookings
        .pick_up(&staff, later, 1_300.0, 100.0, start + Duration::days(5))
        .await;
    assert!(
        matches!(
            refused,
            Err(BookingFlowError::Booking(BookingError::Displaced))
        ),
        "{refused:?}"
    );
    // Another pass changes nothing.
    worker.run_once(back).await.unwrap();
    assert_eq!(
        shop.bookings.get(later).await.unwrap().version,
        stranded.version
    );

    // Staff bring the car home and give the booking its car back.
    shop.bookings
        .cars()
        .execute(
            &shop.car_id.to_string(),
            CarCommand::Relocate {
                branch: "LIS".into(),
                now: back,
            },
            &staff,
        )
        .await
        .unwrap();
    let moved = shop
        .bookings
        .reassign(&staff, later, shop.car_id, "car brought back".into(), back)
        .await
        .unwrap();
    assert!(!moved.state.displaced);
    let car = shop.bookings.car(shop.car_id).await.unwrap();
    assert!(car.blocks.iter().any(|b| b.booking() == Some(later)));
}
