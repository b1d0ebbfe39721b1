//! The money adds up, whatever the desk does: random sequences of bookings, payments (some
//! declined), changes, cancellations, early and late pick-ups, extensions, early and late
//! returns and no-shows on one car, with the clock moving and the worker running. Once the
//! worker has nothing left to do, every booking holds exactly what it owes (its total; its
//! cancellation or no-show fee; nothing when it never got paid) and the gateway's books hold
//! the sum of it.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, TimeDelta, Utc};
use commands::booking::{BookingConfig, BookingRequest, BookingService};
use commands::checkout::Checkout;
use commands::locks::HotCarLock;
use commands::payments::sandbox::{TOKEN_DECLINE_INSUFFICIENT_FUNDS, TOKEN_SUCCESS};
use commands::payments::{PaymentService, SandboxGateways, payment_id};
use commands::worker::Worker;
use commands::{CommandContext, Executor, ExecutorConfig};
use domain::TimeWindow;
use domain::booking::{BookingStatus, CancelledBy};
use domain::car::{Car, CarClass, CarCommand, CarDetails, FuelType, Transmission};
use domain::payment::{IdempotencyKey, PaymentMethodKind, PaymentStatus};
use domain::pricing::{EarlyReturn, PricingPolicy};
use domain::{Currency, Money};
use eventstore::testing::TestDatabase;
use proptest::prelude::*;
use uuid::Uuid;

/// One thing the desk (or a customer) does, on the `which`-th booking made so far.
#[derive(Clone, Debug)]
enum Act {
    Book {
        start_day: i64,
        days: i64,
    },
    Pay {
        which: usize,
        declined: bool,
    },
    Modify {
        which: usize,
        shift_days: i64,
        days: i64,
    },
    Cancel {
        which: usize,
    },
    /// Out `early_hours` before the booked time (0: on time; 30 and 72: re-priced).
    PickUp {
        which: usize,
        early_hours: i64,
    },
    Extend {
        which: usize,
        days: i64,
    },
    /// Back `offset_hours` from the booked end (negative: early), with the tank at `fuel` %.
    Return {
        which: usize,
        offset_hours: i64,
        fuel: u8,
    },
    Wait {
        hours: i64,
    },
}

fn act() -> impl Strategy<Value = Act> {
    let which = 0..4_usize;
    prop_oneof![
        3 => (1..8_i64, 1..6_i64).prop_map(|(start_day, days)| Act::Book { start_day, days }),
        4 => (which.clone(), proptest::bool::weighted(0.2))
            .prop_map(|(which, declined)| Act::Pay { which, declined }),
        1 => (which.clone(), -1..3_i64, 1..7_i64)
            .prop_map(|(which, shift_days, days)| Act::Modify { which, shift_days, days }),
        1 => which.clone().prop_map(|which| Act::Cancel { which }),
        2 => (which.clone(), prop_oneof![Just(0_i64), Just(30), Just(72)])
            .prop_map(|(which, early_hours)| Act::PickUp { which, early_hours }),
        1 => (which.clone(), 1..3_i64).prop_map(|(which, days)| Act::Extend { which, days }),
        2 => (which, -40..40_i64, 40..=100_u8)
            .prop_map(|(which, offset_hours, fuel)| Act::Return { which, offset_hours, fuel }),
        1 => (1..60_i64).prop_map(|hours| Act::Wait { hours }),
    ]
}

struct Desk {
    _db: TestDatabase,
    bookings: BookingService,
    checkout: Checkout,
    gateways: SandboxGateways,
    worker: Worker,
    car_id: Uuid,
}

async fn desk(policy: PricingPolicy) -> Desk {
    let db = TestDatabase::create().await;
    let store = db.store();
    let cars: Executor<Car> = Executor::new(store.clone(), (), ExecutorConfig::default());
    let car_id = Uuid::now_v7();
    cars.execute(
        &car_id.to_string(),
        CarCommand::Register {
            id: car_id,
            details: CarDetails {
                make: "VW".into(),
                model: "Polo".into(),
                year: 2025,
                class: CarClass::Economy,
                seats: 5,
                transmission: Transmission::Manual,
                fuel: FuelType::Petrol,
                features: vec![],
            },
            daily_rate: Money::new(4_599, Currency::EUR),
            branch: "LIS".into(),
        },
        &CommandContext::new("staff"),
    )
    .await
    .unwrap();
    let bookings = BookingService::new(
        store.clone(),
        cars,
        Executor::new(store.clone(), (), ExecutorConfig::default()),
        HotCarLock::disabled(),
        BookingConfig {
            pricing: policy,
            ..BookingConfig::default()
        },
    );
    let gateways = SandboxGateways::new();
    let payments = PaymentService::new(
        Executor::new(store.clone(), (), ExecutorConfig::default()),
        gateways.router(std::time::Duration::from_millis(300)),
    );
    let checkout = Checkout::new(bookings.clone(), payments);
    let worker = Worker::new(bookings.clone()).with_checkout(checkout.clone());
    Desk {
        _db: db,
        bookings,
        checkout,
        gateways,
        worker,
        car_id,
    }
}

/// Play `acts` from `start`; every refusal is a legitimate answer and changes nothing.
async fn play(desk: &Desk, acts: &[Act], start: DateTime<Utc>) -> Vec<(Uuid, Uuid)> {
    let staff = CommandContext::new("staff");
    let mut now = start;
    // (booking, customer) in the order made.
    let mut made: Vec<(Uuid, Uuid)> = Vec::new();
    let mut paid = 0_u32;
    for act in acts {
        let pick = |which: usize| made.get(which % made.len().max(1)).copied();
        match act.clone() {
            Act::Book { start_day, days } => {
                let customer = Uuid::now_v7();
                let from = start + Duration::days(start_day);
                let window = TimeWindow::new(from, from + Duration::days(days)).unwrap();
                let request = BookingRequest {
                    car_id: desk.car_id,
                    window,
                    pickup_branch: None,
                    return_branch: None,
                    extras: Vec::new(),
                };
                let ctx = CommandContext::new(customer.to_string());
                if let Ok(view) = desk
                    .bookings
                    .request_booking(&ctx, customer, request, None, now)
                    .await
                {
                    made.push((view.id, customer));
                }
            }
            Act::Pay { which, declined } => {
                let Some((booking, customer)) = pick(which) else {
                    continue;
                };
                paid += 1;
                let token = if declined {
                    TOKEN_DECLINE_INSUFFICIENT_FUNDS
                } else {
                    TOKEN_SUCCESS
                };
                let _ = desk
                    .checkout
                    .pay_booking(
                        &CommandContext::new(customer.to_string()),
                        booking,
                        PaymentMethodKind::Card,
                        token.into(),
                        Some(&format!("pay-{paid}")),
                        now,
                    )
                    .await;
            }
            Act::Modify {
                which,
                shift_days,
                days,
            } => {
                let Some((booking, customer)) = pick(which) else {
                    continue;
                };
                let Ok(view) = desk.bookings.get(booking).await else {
                    continue;
                };
                let Some(w) = view.state.window else { continue };
                let from = w.start + Duration::days(shift_days);
                let window = TimeWindow::new(from, from + Duration::days(days)).unwrap();
                let ctx = CommandContext::new(customer.to_string());
                let _ = desk.bookings.modify(&ctx, booking, window, now).await;
            }
            Act::Cancel { which } => {
                let Some((booking, customer)) = pick(which) else {
                    continue;
                };
                let ctx = CommandContext::new(customer.to_string());
                let _ = desk
                    .bookings
                    .cancel(&ctx, booking, CancelledBy::Customer, None, now)
                    .await;
            }
            Act::PickUp { which, early_hours } => {
                let Some((booking, _)) = pick(which) else {
                    continue;
                };
                let Ok(view) = desk.bookings.get(booking).await else {
                    continue;
                };
                let Some(w) = view.state.window else { continue };
                now = now.max(w.start - Duration::hours(early_hours));
                let _ = desk
                    .bookings
                    .pick_up(&staff, booking, 1_000.0, 100.0, now)
                    .await;
            }
            Act::Extend { which, days } => {
                let Some((booking, customer)) = pick(which) else {
                    continue;
                };
                let Ok(view) = desk.bookings.get(booking).await else {
                    continue;
                };
                let Some(w) = view.state.window else { continue };
                let longer = TimeWindow::new(w.start, w.end + Duration::days(days)).unwrap();
                let ctx = CommandContext::new(customer.to_string());
                let _ = desk.bookings.modify(&ctx, booking, longer, now).await;
            }
            Act::Return {
                which,
                offset_hours,
                fuel,
            } => {
                let Some((booking, _)) = pick(which) else {
                    continue;
                };
                let Ok(view) = desk.bookings.get(booking).await else {
                    continue;
                };
                let Some(w) = view.state.window else { continue };
                now = now.max(w.end + Duration::hours(offset_hours));
                let _ = desk
                    .bookings
                    .return_car(&staff, booking, 1_200.0, f64::from(fuel), "LIS".into(), now)
                    .await;
            }
            Act::Wait { hours } => now += Duration::hours(hours),
        }
        desk.worker.run_once(now).await.unwrap();
    }
    // Long after: every hold, no-show, overdue flag and balance has been dealt with.
    let later = now + Duration::days(60);
    for _ in 0..4 {
        desk.worker.run_once(later).await.unwrap();
    }
    made
}

/// What a booking's payments hold (captured minus refunded), and what it owes.
async fn held_and_owed(desk: &Desk, booking: Uuid) -> (i64, i64) {
    let view = desk.bookings.get(booking).await.unwrap();
    let payments = desk.checkout.payments();
    let mut ids: Vec<Uuid> = view.state.payment_id.into_iter().collect();
    // Every attempt to pay (the keys this test used) and every charge for a balance.
    for n in 1..=200 {
        let key = IdempotencyKey::parse(&format!("pay-{n}")).unwrap();
        ids.push(payment_id(booking, &key));
    }
    for n in 1..=20 {
        let key = IdempotencyKey::parse(&format!("balance-{n}")).unwrap();
        ids.push(payment_id(booking, &key));
    }
    ids.sort();
    ids.dedup();
    let mut held = 0;
    for id in ids {
        if let Some(p) = payments.get(id).await.unwrap()
            && matches!(
                p.status,
                PaymentStatus::Captured
                    | PaymentStatus::PartiallyRefunded
                    | PaymentStatus::Refunded
            )
        {
            held += p.amount.minor - p.refunded.minor;
        }
    }
    let s = &view.state;
    let owed = match s.status {
        Some(BookingStatus::Confirmed | BookingStatus::Active | BookingStatus::Completed) => {
            s.total.map_or(0, |t| t.minor)
        }
        Some(BookingStatus::Cancelled) => s.cancellation_fee.map_or(0, |f| f.minor),
        Some(BookingStatus::NoShow) => s.no_show_fee.map_or(0, |f| f.minor),
        _ => 0,
    };
    (held, owed)
}

fn check(policy: PricingPolicy, acts: Vec<Act>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let desk = desk(policy).await;
        let start = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap() + Duration::days(1);
        let made = play(&desk, &acts, start).await;
        let mut per_booking = BTreeMap::new();
        let mut held_total = 0;
        for (booking, _) in &made {
            let (held, owed) = held_and_owed(&desk, *booking).await;
            let status = desk.bookings.get(*booking).await.unwrap().status();
            prop_assert_eq!(held, owed, "booking {} ({:?})", booking, status);
            per_booking.insert(*booking, held);
            held_total += held;
        }
        // The gateway's own books say the same.
        let charges = desk.gateways.card.charges().await;
        let at_gateway: i64 = charges
            .iter()
            .filter(|c| c.captured)
            .map(|c| c.amount.minor - c.refunded.minor)
            .sum();
        prop_assert_eq!(at_gateway, held_total, "{:?}", per_booking);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_booking_holds_what_it_owes_charging_the_booked_days(
        acts in proptest::collection::vec(act(), 4..16)
    ) {
        check(PricingPolicy::default(), acts)?;
    }

    #[test]
    fn every_booking_holds_what_it_owes_charging_the_days_used(
        acts in proptest::collection::vec(act(), 4..16)
    ) {
        let policy = PricingPolicy {
            early_return: EarlyReturn::PerDayUsed { fee_minor: 2_000 },
            ..PricingPolicy::default()
        };
        check(policy, acts)?;
    }
}
