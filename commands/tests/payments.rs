//! Payments against a real PostgreSQL and the sandbox gateways: capture, declines, gateway
//! fallback, idempotent double submits, refunds, and every gateway down.

use std::time::{Duration, Instant};

use commands::payments::sandbox::{
    DECLINE_INSUFFICIENT_FUNDS, TOKEN_DECLINE_INSUFFICIENT_FUNDS, TOKEN_SUCCESS, TOKEN_TIMEOUT,
};
use commands::payments::{
    ChargeRequest, INTERRUPTED, PayRequest, PaymentGateway, PaymentService, PaymentServiceError,
    PaymentToken, PaymentView, RefundRequest, SandboxGateways, payment_id,
};
use commands::{CommandContext, Executor, ExecutorConfig};
use domain::payment::{
    ALL_GATEWAYS_UNAVAILABLE, IdempotencyKey, Payment, PaymentCommand, PaymentError,
    PaymentMethodKind, PaymentStatus, Unreached, UnreachedGateway,
};
use domain::{Currency, Money};
use eventstore::testing::TestDatabase;
use eventstore::{EventStore, StreamId};
use uuid::Uuid;

/// Short, so the timeout tests are quick; a sandbox with no delay answers in microseconds.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::USD)
}

fn ctx() -> CommandContext {
    CommandContext::new("user-1")
}

fn service(store: &EventStore, sandbox: &SandboxGateways) -> PaymentService {
    PaymentService::new(
        Executor::new(store.clone(), (), ExecutorConfig::default()),
        sandbox.router(ATTEMPT_TIMEOUT),
    )
}

fn pay_request(booking_id: Uuid, minor: i64, token: &str, key: &str) -> PayRequest {
    PayRequest {
        booking_id,
        amount: usd(minor),
        method: PaymentMethodKind::Card,
        token: PaymentToken::new(token),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        gateway: None,
    }
}

async fn event_types(store: &EventStore, id: Uuid) -> Vec<String> {
    store
        .read_stream(&StreamId::new("payment", id.to_string()), 1, None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

async fn payment_streams(db: &TestDatabase) -> i64 {
    sqlx::query_scalar(
        "SELECT count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'payment'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn captured(payments: &PaymentService, booking: Uuid, minor: i64) -> PaymentView {
    let view = payments
        .pay(pay_request(booking, minor, TOKEN_SUCCESS, "k1"), &ctx())
        .await
        .unwrap();
    assert_eq!(view.status, PaymentStatus::Captured);
    view
}

#[tokio::test]
async fn a_successful_payment_is_captured_and_names_its_gateway() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);
    let booking = Uuid::now_v7();
    let before = chrono::Utc::now();

    let view = payments
        .pay(pay_request(booking, 12_345, TOKEN_SUCCESS, "k1"), &ctx())
        .await
        .unwrap();

    let key = IdempotencyKey::parse("k1").unwrap();
    assert_eq!(view.id, payment_id(booking, &key));
    assert_eq!(view.booking_id, booking);
    assert_eq!(view.amount, usd(12_345));
    assert_eq!(view.refunded, usd(0));
    assert_eq!(view.method, PaymentMethodKind::Card);
    assert_eq!(view.status, PaymentStatus::Captured);
    assert_eq!(view.gateway.as_deref(), Some("sandbox-card"));
    assert_eq!(view.failure_reason, None);
    assert!(view.created_at >= before - chrono::Duration::seconds(5));
    assert_eq!(view.version, 3);
    assert_eq!(
        event_types(&db.store(), view.id).await,
        ["PaymentRequested", "PaymentAuthorized", "PaymentCaptured"]
    );
    let charges = sandbox.card.charges().await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].amount, usd(12_345));
    assert!(charges[0].captured);
    assert_eq!(charges[0].idempotency_key, view.id.to_string());
    assert_eq!(sandbox.card_backup.authorize_calls(), 0);

    // The token never reaches the log.
    let stored = db
        .store()
        .read_stream(&StreamId::new("payment", view.id.to_string()), 1, None)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|e| !e.payload.to_string().contains("tok_"))
    );
    assert_eq!(payments.get(view.id).await.unwrap(), Some(view));
}

#[tokio::test]
async fn paypal_and_wallet_use_their_own_gateways() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);
    for (method, gateway) in [
        (PaymentMethodKind::Paypal, "sandbox-paypal"),
        (PaymentMethodKind::Wallet, "sandbox-wallet"),
    ] {
        let request = PayRequest {
            method,
            ..pay_request(Uuid::now_v7(), 2_500, TOKEN_SUCCESS, "k1")
        };
        let view = payments.pay(request, &ctx()).await.unwrap();
        assert_eq!(
            (view.status, view.method, view.gateway.as_deref()),
            (PaymentStatus::Captured, method, Some(gateway))
        );
    }
    assert_eq!(sandbox.paypal.charge_count().await, 1);
    assert_eq!(sandbox.wallet.charge_count().await, 1);
    assert_eq!(sandbox.card.charge_count().await, 0);
}

#[tokio::test]
async fn a_declined_payment_fails_and_a_new_attempt_with_another_key_succeeds() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);
    let booking = Uuid::now_v7();

    let declined = payments
        .pay(
            pay_request(booking, 8_000, TOKEN_DECLINE_INSUFFICIENT_FUNDS, "try-1"),
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(declined.status, PaymentStatus::Failed);
    assert_eq!(
        declined.failure_reason.as_deref(),
        Some(DECLINE_INSUFFICIENT_FUNDS)
    );
    assert_eq!(declined.gateway.as_deref(), Some("sandbox-card"));
    assert_eq!(
        sandbox.card_backup.authorize_calls(),
        0,
        "a decline is never retried on the fallback"
    );

    // The declined payment is terminal: the same key again (even with a good token) returns it.
    let again = payments
        .pay(pay_request(booking, 8_000, TOKEN_SUCCESS, "try-1"), &ctx())
        .await
        .unwrap();
    assert_eq!(again, declined);
    assert_eq!(sandbox.card.authorize_calls(), 1);

    // Paying again with a new key is a new payment.
    let paid = payments
        .pay(pay_request(booking, 8_000, TOKEN_SUCCESS, "try-2"), &ctx())
        .await
        .unwrap();
    assert_ne!(paid.id, declined.id);
    assert_eq!(paid.status, PaymentStatus::Captured);
    assert_eq!(paid.amount, usd(8_000));
    assert_eq!(sandbox.card.charge_count().await, 1);
    assert_eq!(
        event_types(&db.store(), declined.id).await,
        ["PaymentRequested", "PaymentFailed"]
    );
    assert_eq!(payment_streams(&db).await, 2);
}

#[tokio::test]
async fn the_backup_processes_the_payment_when_the_primary_is_down() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);
    sandbox.card.set_available(false);

    let view = captured(&payments, Uuid::now_v7(), 4_200).await;

    assert_eq!(view.gateway.as_deref(), Some("sandbox-card-backup"));
    assert_eq!(sandbox.card.charge_count().await, 0);
    assert_eq!(sandbox.card_backup.charge_count().await, 1);

    // The refund goes to the gateway that holds the charge, whatever the primary's state.
    sandbox.card.set_available(true);
    let refunded = payments
        .refund(view.id, Some(usd(1_000)), "goodwill", &ctx())
        .await
        .unwrap();
    assert_eq!(refunded.refunded, usd(1_000));
    assert_eq!(sandbox.card_backup.charges().await[0].refunded, usd(1_000));
    assert_eq!(sandbox.card.refund_count().await, 0);
}

#[tokio::test]
async fn the_backup_processes_the_payment_when_the_primary_times_out() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);
    sandbox.card.set_response_delay(Duration::from_secs(30));

    let started = Instant::now();
    let view = captured(&payments, Uuid::now_v7(), 4_200).await;

    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(view.gateway.as_deref(), Some("sandbox-card-backup"));
    assert_eq!(sandbox.card.charge_count().await, 0);
    assert_eq!(sandbox.card_backup.charge_count().await, 1);
}

#[tokio::test]
async fn a_double_submit_with_one_key_charges_once() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);
    let booking = Uuid::now_v7();

    // Concurrently, in one process: the second waits and returns the first's outcome.
    let context = ctx();
    let (a, b) = tokio::join!(
        payments.pay(
            pay_request(booking, 9_900, TOKEN_SUCCESS, "double"),
            &context
        ),
        payments.pay(
            pay_request(booking, 9_900, TOKEN_SUCCESS, "double"),
            &context
        ),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    assert_eq!(a.status, PaymentStatus::Captured);
    // Sequentially, later: the stored payment comes back, no gateway is asked.
    let c = payments
        .pay(pay_request(booking, 9_900, TOKEN_SUCCESS, "double"), &ctx())
        .await
        .unwrap();
    assert_eq!(c, a);

    assert_eq!(sandbox.card.charge_count().await, 1);
    assert_eq!(sandbox.card.authorize_calls(), 1);
    assert_eq!(payment_streams(&db).await, 1);
    assert_eq!(event_types(&db.store(), a.id).await.len(), 3);

    // The same key for another amount is refused, not charged.
    let err = payments
        .pay(pay_request(booking, 9_901, TOKEN_SUCCESS, "double"), &ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PaymentServiceError::Rejected(PaymentError::IdempotencyKeyReused)
        ),
        "{err:?}"
    );
    assert_eq!(sandbox.card.charge_count().await, 1);
}

/// Two services stand for two processes: separate executors and queues, one gateway.
#[tokio::test]
async fn a_double_submit_across_two_processes_charges_once() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let one = service(&EventStore::new(db.new_pool("proc-a", 4).await), &sandbox);
    let two = service(&EventStore::new(db.new_pool("proc-b", 4).await), &sandbox);
    let mut saw_pending = 0;
    for round in 0..10 {
        let booking = Uuid::now_v7();
        let context = ctx();
        let (a, b) = tokio::join!(
            one.pay(pay_request(booking, 5_000, TOKEN_SUCCESS, "k"), &context),
            two.pay(pay_request(booking, 5_000, TOKEN_SUCCESS, "k"), &context),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.id, b.id);
        // Whoever lost the race saw the payment in flight (PENDING, or AUTHORIZED between the
        // authorization and the capture) or already captured.
        for view in [&a, &b] {
            assert!(
                matches!(
                    view.status,
                    PaymentStatus::Pending | PaymentStatus::Authorized | PaymentStatus::Captured
                ),
                "{view:?}"
            );
        }
        assert!(a.status == PaymentStatus::Captured || b.status == PaymentStatus::Captured);
        saw_pending +=
            usize::from(a.status == PaymentStatus::Pending || b.status == PaymentStatus::Pending);
        assert_eq!(sandbox.card.charge_count().await, round + 1);
    }
    assert_eq!(payment_streams(&db).await, 10);
    eprintln!("rounds where the second process saw the payment in flight: {saw_pending}/10");
}

#[tokio::test]
async fn refunds_partial_then_full_and_never_above_the_capture() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);
    let paid = captured(&payments, Uuid::now_v7(), 10_000).await;

    let partial = payments
        .refund(paid.id, Some(usd(3_000)), "shorter trip", &ctx())
        .await
        .unwrap();
    assert_eq!(partial.status, PaymentStatus::PartiallyRefunded);
    assert_eq!(partial.refunded, usd(3_000));

    let err = payments
        .refund(paid.id, Some(usd(7_001)), "too much", &ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PaymentServiceError::Rejected(PaymentError::RefundExceedsCaptured {
                requested,
                refundable,
            }) if requested == usd(7_001) && refundable == usd(7_000)
        ),
        "{err:?}"
    );

    let full = payments
        .refund(paid.id, None, "cancelled", &ctx())
        .await
        .unwrap();
    assert_eq!(full.status, PaymentStatus::Refunded);
    assert_eq!(full.refunded, usd(10_000));

    let err = payments
        .refund(paid.id, Some(usd(1)), "again", &ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PaymentServiceError::Rejected(PaymentError::InvalidTransition {
                action: "refund",
                status: PaymentStatus::Refunded,
            })
        ),
        "{err:?}"
    );
    assert_eq!(sandbox.card.refund_count().await, 2);
    assert_eq!(sandbox.card.charges().await[0].refunded, usd(10_000));
    assert_eq!(
        event_types(&db.store(), paid.id).await,
        [
            "PaymentRequested",
            "PaymentAuthorized",
            "PaymentCaptured",
            "RefundRequested",
            "PaymentRefunded",
            "RefundRequested",
            "PaymentRefunded",
        ]
    );
}

#[tokio::test]
async fn a_refund_the_gateway_could_not_take_is_finished_by_the_next_call_once() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);
    let paid = captured(&payments, Uuid::now_v7(), 10_000).await;

    sandbox.card.set_available(false);
    let err = payments
        .refund(paid.id, Some(usd(2_500)), "late pickup", &ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PaymentServiceError::GatewayUnavailable { gateway, payment_id }
            if gateway == "sandbox-card" && *payment_id == paid.id),
        "{err:?}"
    );
    let view = payments.get(paid.id).await.unwrap().unwrap();
    assert_eq!(
        (view.status, view.refunded),
        (PaymentStatus::Captured, usd(0))
    );

    // The retry finishes the reserved refund, once, rather than adding a second one.
    sandbox.card.set_available(true);
    let view = payments
        .refund(paid.id, Some(usd(2_500)), "late pickup", &ctx())
        .await
        .unwrap();
    assert_eq!(
        (view.status, view.refunded),
        (PaymentStatus::PartiallyRefunded, usd(2_500))
    );
    assert_eq!(sandbox.card.refund_count().await, 1);
    assert_eq!(sandbox.card.charges().await[0].refunded, usd(2_500));
}

#[tokio::test]
async fn refunds_of_unknown_or_uncaptured_payments_are_refused() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);
    let missing = Uuid::now_v7();
    assert!(matches!(
        payments.refund(missing, None, "x", &ctx()).await,
        Err(PaymentServiceError::NotFound(id)) if id == missing
    ));
    assert_eq!(payments.get(missing).await.unwrap(), None);

    let declined = payments
        .pay(
            pay_request(Uuid::now_v7(), 100, TOKEN_DECLINE_INSUFFICIENT_FUNDS, "k"),
            &ctx(),
        )
        .await
        .unwrap();
    let err = payments
        .refund(declined.id, None, "x", &ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PaymentServiceError::Rejected(PaymentError::InvalidTransition {
                action: "refund",
                status: PaymentStatus::Failed,
            })
        ),
        "{err:?}"
    );

    let err = payments
        .pay(pay_request(Uuid::now_v7(), 0, TOKEN_SUCCESS, "k"), &ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PaymentServiceError::Rejected(ref e) if *e == PaymentError::NonPositiveAmount && e.is_invalid_input()),
        "{err:?}"
    );
    assert_eq!(payment_streams(&db).await, 1);
}

#[tokio::test]
async fn with_every_gateway_down_nothing_is_charged_and_the_same_key_retries() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);
    let booking = Uuid::now_v7();
    sandbox.card.set_available(false);
    sandbox.card_backup.set_available(false);

    let err = payments
        .pay(pay_request(booking, 6_000, TOKEN_SUCCESS, "k"), &ctx())
        .await
        .unwrap_err();
    let id = payment_id(booking, &IdempotencyKey::parse("k").unwrap());
    match err {
        PaymentServiceError::GatewaysUnavailable { payment_id, tried } => {
            assert_eq!(payment_id, id);
            assert_eq!(
                tried,
                [
                    UnreachedGateway {
                        gateway: "sandbox-card".into(),
                        cause: Unreached::Unavailable
                    },
                    UnreachedGateway {
                        gateway: "sandbox-card-backup".into(),
                        cause: Unreached::Unavailable
                    },
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    let pending = payments.get(id).await.unwrap().unwrap();
    assert_eq!(pending.status, PaymentStatus::Pending);
    assert_eq!(
        pending.failure_reason.as_deref(),
        Some(ALL_GATEWAYS_UNAVAILABLE)
    );
    assert_eq!(pending.gateway, None);
    assert_eq!(
        sandbox.card.charge_count().await + sandbox.card_backup.charge_count().await,
        0
    );

    // Still down: the retry fails the same way, on the same payment.
    assert!(matches!(
        payments
            .pay(pay_request(booking, 6_000, TOKEN_SUCCESS, "k"), &ctx())
            .await,
        Err(PaymentServiceError::GatewaysUnavailable { .. })
    ));

    // Back up: the same key finishes the same payment.
    sandbox.card_backup.set_available(true);
    let paid = payments
        .pay(pay_request(booking, 6_000, TOKEN_SUCCESS, "k"), &ctx())
        .await
        .unwrap();
    assert_eq!(paid.id, id);
    assert_eq!(paid.status, PaymentStatus::Captured);
    assert_eq!(paid.gateway.as_deref(), Some("sandbox-card-backup"));
    assert_eq!(paid.failure_reason, None);
    assert_eq!(sandbox.card_backup.charge_count().await, 1);
    assert_eq!(
        event_types(&db.store(), id).await,
        [
            "PaymentRequested",
            "PaymentAttemptFailed",
            "PaymentRetried",
            "PaymentAttemptFailed",
            "PaymentRetried",
            "PaymentAuthorized",
            "PaymentCaptured",
        ]
    );
    assert_eq!(payment_streams(&db).await, 1);
}

#[tokio::test]
async fn a_token_that_never_answers_times_out_on_every_gateway() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);

    let err = payments
        .pay(pay_request(Uuid::now_v7(), 700, TOKEN_TIMEOUT, "k"), &ctx())
        .await
        .unwrap_err();
    match err {
        PaymentServiceError::GatewaysUnavailable { tried, .. } => assert_eq!(
            tried
                .iter()
                .map(|t| (t.gateway.as_str(), t.cause))
                .collect::<Vec<_>>(),
            [
                ("sandbox-card", Unreached::TimedOut),
                ("sandbox-card-backup", Unreached::TimedOut)
            ]
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sandbox.card.charge_count().await + sandbox.card_backup.charge_count().await,
        0
    );
}

/// A payment whose earlier request stopped half-way, written straight through the executor.
async fn interrupted(
    store: &EventStore,
    booking: Uuid,
    authorization: Option<(&str, String)>,
) -> Uuid {
    let payments: Executor<Payment> = Executor::new(store.clone(), (), ExecutorConfig::default());
    let key = IdempotencyKey::parse("k").unwrap();
    let id = payment_id(booking, &key);
    let mut commands = vec![PaymentCommand::Request {
        id,
        booking_id: booking,
        amount: usd(3_300),
        method: PaymentMethodKind::Card,
        idempotency_key: key,
    }];
    if let Some((gateway, reference)) = authorization {
        commands.push(PaymentCommand::RecordAuthorization {
            gateway: gateway.into(),
            reference,
            payment_method: None,
        });
    }
    for command in commands {
        payments
            .execute(&id.to_string(), command, &ctx())
            .await
            .unwrap();
    }
    id
}

#[tokio::test]
async fn a_payment_whose_capture_failed_is_captured_by_the_same_request() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);
    let booking = Uuid::now_v7();
    let authorization = sandbox
        .card
        .authorize(&ChargeRequest {
            payment_id: Uuid::nil(),
            amount: usd(3_300),
            method: PaymentMethodKind::Card,
            token: PaymentToken::new(TOKEN_SUCCESS),
            idempotency_key: "first-request".into(),
        })
        .await
        .unwrap();
    let id = interrupted(
        &db.store(),
        booking,
        Some(("sandbox-card", authorization.reference)),
    )
    .await;

    sandbox.card.set_available(false);
    let err = payments
        .pay(pay_request(booking, 3_300, TOKEN_SUCCESS, "k"), &ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PaymentServiceError::GatewayUnavailable { gateway, payment_id }
            if gateway == "sandbox-card" && *payment_id == id),
        "{err:?}"
    );
    assert_eq!(
        payments.get(id).await.unwrap().unwrap().status,
        PaymentStatus::Authorized
    );

    sandbox.card.set_available(true);
    let view = payments
        .pay(pay_request(booking, 3_300, TOKEN_SUCCESS, "k"), &ctx())
        .await
        .unwrap();
    assert_eq!(view.status, PaymentStatus::Captured);
    assert_eq!(sandbox.card.authorize_calls(), 1, "no second authorization");
    assert!(sandbox.card.charges().await[0].captured);
}

#[tokio::test]
async fn an_interrupted_payment_is_settled_from_the_gateways_record() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);

    // The gateway charged, the process died before recording it: a retry learns of the charge
    // by the key and captures it, with no second authorization.
    let booking = Uuid::now_v7();
    let id = interrupted(&db.store(), booking, None).await;
    let charged = sandbox
        .card
        .authorize(&ChargeRequest {
            payment_id: id,
            amount: usd(3_300),
            method: PaymentMethodKind::Card,
            token: PaymentToken::new(TOKEN_SUCCESS),
            idempotency_key: id.to_string(),
        })
        .await
        .unwrap();
    let view = payments
        .pay(pay_request(booking, 3_300, TOKEN_SUCCESS, "k"), &ctx())
        .await
        .unwrap();
    assert_eq!(
        (view.status, view.gateway.as_deref()),
        (PaymentStatus::Captured, Some("sandbox-card"))
    );
    assert_eq!(sandbox.card.authorize_calls(), 1, "no second authorization");
    assert_eq!(sandbox.card.charges().await[0].reference, charged.reference);
    assert!(sandbox.card.charges().await[0].captured);

    // The backup declined it: the decline is recorded, nothing is tried again.
    let booking = Uuid::now_v7();
    let id = interrupted(&db.store(), booking, None).await;
    sandbox
        .card_backup
        .authorize(&ChargeRequest {
            payment_id: id,
            amount: usd(3_300),
            method: PaymentMethodKind::Card,
            token: PaymentToken::new("tok_chargeDeclined"),
            idempotency_key: id.to_string(),
        })
        .await
        .unwrap_err();
    let view = payments.finish(id, &ctx()).await.unwrap().unwrap();
    assert_eq!(
        (
            view.status,
            view.gateway.as_deref(),
            view.failure_reason.as_deref()
        ),
        (
            PaymentStatus::Failed,
            Some("sandbox-card-backup"),
            Some("card declined")
        )
    );

    // No gateway has it: the worker abandons it (nothing was charged), a retry answers that.
    let booking = Uuid::now_v7();
    let id = interrupted(&db.store(), booking, None).await;
    let view = payments.finish(id, &ctx()).await.unwrap().unwrap();
    assert_eq!(
        (
            view.status,
            view.failure_reason.as_deref(),
            view.gateway.as_deref()
        ),
        (PaymentStatus::Failed, Some(INTERRUPTED), None)
    );
    let again = payments
        .pay(pay_request(booking, 3_300, TOKEN_SUCCESS, "k"), &ctx())
        .await
        .unwrap();
    assert_eq!(again, view);
    assert_eq!(
        sandbox.card.charge_count().await,
        1,
        "only the first payment"
    );

    // No gateway has it, and the payer retries (it has the token): the attempt is made.
    let booking = Uuid::now_v7();
    interrupted(&db.store(), booking, None).await;
    let view = payments
        .pay(pay_request(booking, 3_300, TOKEN_SUCCESS, "k"), &ctx())
        .await
        .unwrap();
    assert_eq!(view.status, PaymentStatus::Captured);
    assert_eq!(sandbox.card.charge_count().await, 2);

    // A gateway that cannot answer the lookup leaves it open: nobody can say what it did.
    let booking = Uuid::now_v7();
    let id = interrupted(&db.store(), booking, None).await;
    sandbox.card.set_available(false);
    let err = payments.finish(id, &ctx()).await.unwrap_err();
    assert!(
        matches!(&err, PaymentServiceError::GatewayUnavailable { gateway, .. } if gateway == "sandbox-card"),
        "{err:?}"
    );
    assert_eq!(
        payments.get(id).await.unwrap().unwrap().status,
        PaymentStatus::Pending
    );
}

#[tokio::test]
async fn a_refund_the_gateway_declines_is_released() {
    let db = TestDatabase::create().await;
    let sandbox = SandboxGateways::new();
    let payments = service(&db.store(), &sandbox);
    let paid = captured(&payments, Uuid::now_v7(), 10_000).await;
    // Someone refunded 8,000 at the provider directly (its dashboard), bypassing us.
    sandbox
        .card
        .refund(&RefundRequest {
            reference: sandbox.card.charges().await[0].reference.clone(),
            amount: usd(8_000),
            idempotency_key: "dashboard".into(),
        })
        .await
        .unwrap();

    let err = payments
        .refund(paid.id, Some(usd(5_000)), "cancelled", &ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PaymentServiceError::RefundDeclined { gateway, reason }
            if gateway == "sandbox-card" && reason == "refund exceeds the captured amount"),
        "{err:?}"
    );
    // Released: a refund the provider can still make goes through.
    let view = payments
        .refund(paid.id, Some(usd(2_000)), "cancelled", &ctx())
        .await
        .unwrap();
    assert_eq!(
        (view.status, view.refunded),
        (PaymentStatus::PartiallyRefunded, usd(2_000))
    );
    assert_eq!(
        event_types(&db.store(), paid.id).await[3..],
        [
            "RefundRequested",
            "RefundFailed",
            "RefundRequested",
            "PaymentRefunded"
        ]
    );
}
