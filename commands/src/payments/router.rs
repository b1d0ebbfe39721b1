//! The gateway router: per payment method an ordered fallback list of gateways, a timeout per
//! attempt, and the rule for when to try the next one.
//!
//! An attempt goes to the first gateway of the method's list. When that gateway is unavailable
//! or does not answer within the timeout, the next one is tried, and so on. A decline is final:
//! the provider looked at the payment and said no, and asking another provider would be
//! retrying a decline. The outcome names the gateway that processed the attempt.
//!
//! A timeout is taken as "not processed". That holds for the sandbox; a real provider may still
//! have charged after we stopped waiting, so with real providers a charge found later on the
//! primary has to be reconciled (voided or refunded) — that reconciliation is not built yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use domain::payment::{PaymentMethodKind, Unreached, UnreachedGateway};

use super::gateway::{Authorization, ChargeRequest, GatewayError, GatewayFuture, PaymentGateway};

/// How long one gateway call may take unless configured otherwise.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where an authorization ended up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routed {
    Authorized {
        gateway: String,
        authorization: Authorization,
    },
    Declined {
        gateway: String,
        reason: String,
    },
    /// No gateway processed it, in the order tried (empty if the method has no gateway).
    Unreached(Vec<UnreachedGateway>),
}

/// Per-method ordered gateways with a per-attempt timeout. Cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct GatewayRouter {
    routes: HashMap<PaymentMethodKind, Vec<Arc<dyn PaymentGateway>>>,
    attempt_timeout: Duration,
}

impl GatewayRouter {
    pub fn new(attempt_timeout: Duration) -> Self {
        Self {
            routes: HashMap::new(),
            attempt_timeout,
        }
    }

    /// Set `method`'s gateways, primary first. A gateway that does not support the method is
    /// left out (and logged): it could only ever fail.
    pub fn route(
        mut self,
        method: PaymentMethodKind,
        gateways: impl IntoIterator<Item = Arc<dyn PaymentGateway>>,
    ) -> Self {
        let gateways = gateways
            .into_iter()
            .filter(|g| {
                let supported = g.supports(method);
                if !supported {
                    tracing::error!(gateway = g.name(), %method, "gateway does not support the method; left out of its route");
                }
                supported
            })
            .collect();
        self.routes.insert(method, gateways);
        self
    }

    /// Add `other`'s gateways after this router's, method by method: a provider named later
    /// is a fallback to the ones before it.
    pub fn extend(mut self, other: GatewayRouter) -> Self {
        for (method, gateways) in other.routes {
            self.routes.entry(method).or_default().extend(gateways);
        }
        self
    }

    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    /// `method`'s gateways in fallback order.
    pub fn gateways(&self, method: PaymentMethodKind) -> &[Arc<dyn PaymentGateway>] {
        self.routes.get(&method).map_or(&[], Vec::as_slice)
    }

    /// The gateway called `name`, on any route (captures and refunds go to the gateway that
    /// processed the payment, never to a fallback).
    pub fn gateway(&self, name: &str) -> Option<&Arc<dyn PaymentGateway>> {
        self.routes.values().flatten().find(|g| g.name() == name)
    }

    /// One gateway call, cut off after the attempt timeout.
    pub async fn call<T>(&self, call: GatewayFuture<'_, T>) -> Result<T, GatewayError> {
        tokio::time::timeout(self.attempt_timeout, call)
            .await
            .unwrap_or(Err(GatewayError::Timeout))
    }

    /// Authorize along `request.method`'s route, falling back on unavailability and timeouts.
    pub async fn authorize(&self, request: &ChargeRequest) -> Routed {
        self.authorize_over(self.gateways(request.method), request)
            .await
    }

    /// Authorize at the named gateway only, no fallback: a charge with a saved payment method
    /// goes where the method lives.
    pub async fn authorize_at(&self, gateway: &str, request: &ChargeRequest) -> Routed {
        match self.gateway(gateway) {
            Some(found) => {
                self.authorize_over(std::slice::from_ref(found), request)
                    .await
            }
            None => Routed::Unreached(Vec::new()),
        }
    }

    async fn authorize_over(
        &self,
        gateways: &[Arc<dyn PaymentGateway>],
        request: &ChargeRequest,
    ) -> Routed {
        let mut tried = Vec::new();
        for gateway in gateways {
            let name = gateway.name();
            let cause = match self.call(gateway.authorize(request)).await {
                Ok(authorization) => {
                    return Routed::Authorized {
                        gateway: name.to_owned(),
                        authorization,
                    };
                }
                Err(GatewayError::Declined(reason)) => {
                    return Routed::Declined {
                        gateway: name.to_owned(),
                        reason,
                    };
                }
                Err(GatewayError::Unavailable) => Unreached::Unavailable,
                Err(GatewayError::Timeout) => Unreached::TimedOut,
            };
            tracing::warn!(gateway = name, payment.id = %request.payment_id, ?cause, "gateway did not process the payment; trying the next");
            tried.push(UnreachedGateway {
                gateway: name.to_owned(),
                cause,
            });
        }
        Routed::Unreached(tried)
    }
}

#[cfg(test)]
mod tests {
    use domain::{Currency, Money};
    use uuid::Uuid;

    use super::*;
    use crate::payments::PaymentToken;
    use crate::payments::sandbox::{self, SandboxGateway};

    fn charge(method: PaymentMethodKind, token: &str) -> ChargeRequest {
        ChargeRequest {
            payment_id: Uuid::nil(),
            amount: Money::new(1_000, Currency::USD),
            method,
            token: PaymentToken::new(token),
            idempotency_key: Uuid::now_v7().to_string(),
        }
    }

    fn two_cards() -> (Arc<SandboxGateway>, Arc<SandboxGateway>, GatewayRouter) {
        let a = Arc::new(SandboxGateway::new("a", &[PaymentMethodKind::Card]));
        let b = Arc::new(SandboxGateway::new("b", &[PaymentMethodKind::Card]));
        let router = GatewayRouter::new(Duration::from_millis(100))
            .route(PaymentMethodKind::Card, [a.clone() as _, b.clone() as _]);
        (a, b, router)
    }

    #[tokio::test]
    async fn a_decline_is_not_retried_on_the_next_gateway() {
        let (a, b, router) = two_cards();
        let routed = router
            .authorize(&charge(
                PaymentMethodKind::Card,
                sandbox::TOKEN_DECLINE_EXPIRED,
            ))
            .await;
        assert_eq!(
            routed,
            Routed::Declined {
                gateway: "a".into(),
                reason: sandbox::DECLINE_EXPIRED.into()
            }
        );
        assert_eq!((a.authorize_calls(), b.authorize_calls()), (1, 0));
    }

    #[tokio::test]
    async fn unavailable_and_slow_gateways_fall_back_in_order() {
        let (a, b, router) = two_cards();
        a.set_available(false);
        let routed = router
            .authorize(&charge(PaymentMethodKind::Card, sandbox::TOKEN_SUCCESS))
            .await;
        assert!(
            matches!(&routed, Routed::Authorized { gateway, .. } if gateway == "b"),
            "{routed:?}"
        );

        a.set_available(true);
        a.set_response_delay(Duration::from_secs(5));
        b.set_available(false);
        let routed = router
            .authorize(&charge(PaymentMethodKind::Card, sandbox::TOKEN_SUCCESS))
            .await;
        assert_eq!(
            routed,
            Routed::Unreached(vec![
                UnreachedGateway {
                    gateway: "a".into(),
                    cause: Unreached::TimedOut
                },
                UnreachedGateway {
                    gateway: "b".into(),
                    cause: Unreached::Unavailable
                },
            ])
        );
        assert_eq!(a.charge_count().await + b.charge_count().await, 1);
    }

    #[tokio::test]
    async fn a_route_keeps_only_gateways_that_support_its_method() {
        let card = Arc::new(SandboxGateway::new("card", &[PaymentMethodKind::Card]));
        let router = GatewayRouter::new(DEFAULT_ATTEMPT_TIMEOUT)
            .route(PaymentMethodKind::Wallet, [card as Arc<dyn PaymentGateway>]);
        assert!(router.gateways(PaymentMethodKind::Wallet).is_empty());
        assert!(router.gateways(PaymentMethodKind::Paypal).is_empty());
        assert_eq!(
            router
                .authorize(&charge(PaymentMethodKind::Wallet, sandbox::TOKEN_SUCCESS))
                .await,
            Routed::Unreached(vec![])
        );
    }
}
