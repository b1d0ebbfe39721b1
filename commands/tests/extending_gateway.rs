//! docs/extending.md's third worked example, built and run: a payment provider of one's own
//! behind `PaymentGateway`, taking payments, double submits and refunds through the same
//! `PaymentService` the API uses. The guide quotes this file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commands::payments::{
    Authorization, CaptureRequest, ChargeRequest, GatewayError, GatewayFuture, GatewayRouter,
    PayRequest, PaymentGateway, PaymentService, PaymentToken, Recorded, RefundReceipt,
    RefundRequest,
};
use commands::{CommandContext, Executor, ExecutorConfig};
use domain::payment::{IdempotencyKey, PaymentMethodKind, PaymentStatus};
use domain::{Currency, Money};
use eventstore::testing::TestDatabase;
use uuid::Uuid;

/// What the provider keeps per charge (a real one keeps it on its side; `lookup` asks it).
#[derive(Clone, Debug)]
struct Charge {
    reference: String,
    amount: Money,
    outcome: Result<(), String>,
    captured: bool,
    refunded: Money,
}

/// "Acme Pay": cards only; a token `acme_decline` is declined. Every call honours its
/// idempotency key: a repeat returns the first outcome and moves no money again.
#[derive(Default)]
struct AcmePay {
    charges: Mutex<HashMap<String, Charge>>,
    refunds: Mutex<HashMap<String, RefundReceipt>>,
}

impl AcmePay {
    fn charges(&self) -> Vec<Charge> {
        self.charges
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl PaymentGateway for AcmePay {
    fn name(&self) -> &str {
        "acme"
    }

    fn supports(&self, method: PaymentMethodKind) -> bool {
        method == PaymentMethodKind::Card
    }

    fn authorize<'a>(&'a self, request: &'a ChargeRequest) -> GatewayFuture<'a, Authorization> {
        Box::pin(async move {
            let mut charges = self.charges.lock().map_err(|_| GatewayError::Unavailable)?;
            let count = charges.len();
            let charge = charges
                .entry(request.idempotency_key.clone())
                .or_insert_with(|| Charge {
                    reference: format!("acme_ch_{}", count + 1),
                    amount: request.amount,
                    outcome: if request.token.expose() == "acme_decline" {
                        Err("do not honour".to_owned())
                    } else {
                        Ok(())
                    },
                    captured: false,
                    refunded: Money::zero(request.amount.currency),
                });
            match &charge.outcome {
                Ok(()) => Ok(Authorization {
                    reference: charge.reference.clone(),
                    payment_method: None,
                }),
                Err(reason) => Err(GatewayError::Declined(reason.clone())),
            }
        })
    }

    fn lookup<'a>(&'a self, idempotency_key: &'a str) -> GatewayFuture<'a, Recorded> {
        Box::pin(async move {
            let charges = self.charges.lock().map_err(|_| GatewayError::Unavailable)?;
            // "Unknown" must mean "never charged": answered from the provider's own record,
            // never from a search that may lag behind it.
            Ok(match charges.get(idempotency_key) {
                None => Recorded::Unknown,
                Some(Charge {
                    outcome: Err(reason),
                    ..
                }) => Recorded::Declined(reason.clone()),
                Some(charge) => Recorded::Authorized(Authorization {
                    reference: charge.reference.clone(),
                    payment_method: None,
                }),
            })
        })
    }

    fn capture<'a>(&'a self, request: &'a CaptureRequest) -> GatewayFuture<'a, ()> {
        Box::pin(async move {
            let mut charges = self.charges.lock().map_err(|_| GatewayError::Unavailable)?;
            let charge = charges
                .values_mut()
                .find(|c| c.reference == request.reference && c.outcome.is_ok())
                .ok_or_else(|| GatewayError::Declined("no such charge".into()))?;
            charge.captured = true;
            Ok(())
        })
    }

    fn refund<'a>(&'a self, request: &'a RefundRequest) -> GatewayFuture<'a, RefundReceipt> {
        Box::pin(async move {
            let mut refunds = self.refunds.lock().map_err(|_| GatewayError::Unavailable)?;
            if let Some(receipt) = refunds.get(&request.idempotency_key) {
                return Ok(receipt.clone());
            }
            let mut charges = self.charges.lock().map_err(|_| GatewayError::Unavailable)?;
            let charge = charges
                .values_mut()
                .find(|c| c.reference == request.reference && c.captured)
                .ok_or_else(|| GatewayError::Declined("nothing captured to refund".into()))?;
            charge.refunded = charge
                .refunded
                .checked_add(request.amount)
                .map_err(|_| GatewayError::Declined("another currency".into()))?;
            let receipt = RefundReceipt {
                reference: format!("acme_re_{}", refunds.len() + 1),
            };
            refunds.insert(request.idempotency_key.clone(), receipt.clone());
            Ok(receipt)
        })
    }
}

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::EUR)
}

fn pay(booking_id: Uuid, token: &str, key: &str) -> PayRequest {
    PayRequest {
        booking_id,
        amount: eur(8_000),
        method: PaymentMethodKind::Card,
        token: PaymentToken::new(token),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        gateway: None,
    }
}

#[tokio::test]
async fn a_gateway_of_ones_own_takes_payments_double_submits_and_refunds() {
    let db = TestDatabase::create().await;
    let acme = Arc::new(AcmePay::default());
    // Wired as app/src/wiring.rs wires a provider named in FLEETLEDGER_PAYMENT_GATEWAYS.
    let router = GatewayRouter::new(Duration::from_secs(2)).route(
        PaymentMethodKind::Card,
        [acme.clone() as Arc<dyn PaymentGateway>],
    );
    let payments = PaymentService::new(
        Executor::new(db.store(), (), ExecutorConfig::default()),
        router,
    );
    let ctx = CommandContext::new("customer-1");
    let booking = Uuid::now_v7();

    let paid = payments
        .pay(pay(booking, "acme_tok_1", "k1"), &ctx)
        .await
        .unwrap();
    assert_eq!(paid.status, PaymentStatus::Captured);
    assert_eq!(paid.gateway.as_deref(), Some("acme"));
    assert_eq!(paid.amount, eur(8_000));
    // The same request again: the first answer, and still one charge at the provider.
    let again = payments
        .pay(pay(booking, "acme_tok_1", "k1"), &ctx)
        .await
        .unwrap();
    assert_eq!(again, paid);
    let charges = acme.charges();
    assert_eq!(charges.len(), 1);
    assert!(charges[0].captured);
    assert_eq!(charges[0].amount, eur(8_000));

    let declined = payments
        .pay(pay(Uuid::now_v7(), "acme_decline", "k2"), &ctx)
        .await
        .unwrap();
    assert_eq!(declined.status, PaymentStatus::Failed);
    assert_eq!(declined.failure_reason.as_deref(), Some("do not honour"));

    let refunded = payments
        .refund(paid.id, None, "cancelled", &ctx)
        .await
        .unwrap();
    assert_eq!(refunded.status, PaymentStatus::Refunded);
    assert_eq!(refunded.refunded, eur(8_000));
    let charge = acme
        .charges()
        .into_iter()
        .find(|c| c.reference == charges[0].reference)
        .unwrap();
    assert_eq!(charge.refunded, eur(8_000));
}
