//! Shared test support: append domain events to streams, run projections to the head.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::DomainEvent;
use domain::booking::{BookingEvent, CancelledBy};
use domain::car::{CarClass, CarDetails, CarEvent, FuelType, Transmission};
use domain::payment::{IdempotencyKey, PaymentEvent, PaymentMethodKind};
use domain::pricing::{PriceLine, Quote};
use domain::telemetry::{GeoPoint, Reading, TelemetryEvent};
use domain::{Currency, Money, TimeWindow};
use eventstore::{
    Checkpoint, EventMetadata, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamAppend,
    StreamId,
};
use projections::{Projection, Projector, RunOptions};
use uuid::Uuid;

pub fn t(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
}

pub fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::EUR)
}

pub fn window(start: DateTime<Utc>, end: DateTime<Utc>) -> TimeWindow {
    TimeWindow::new(start, end).unwrap()
}

pub fn details(make: &str, model: &str, features: &[&str]) -> CarDetails {
    CarDetails {
        make: make.to_owned(),
        model: model.to_owned(),
        year: 2024,
        class: CarClass::Suv,
        seats: 5,
        transmission: Transmission::Automatic,
        fuel: FuelType::Hybrid,
        features: features.iter().map(|f| (*f).to_owned()).collect(),
    }
}

pub fn quote(days: i64, daily: i64) -> Quote {
    Quote {
        days,
        lines: vec![PriceLine::new(
            domain::pricing::LineCode::RentalDays,
            format!("{days} days"),
            eur(days * daily),
        )],
        total: eur(days * daily),
        extras: Vec::new(),
        mileage: None,
    }
}

pub fn reading(at: DateTime<Utc>, odometer_km: f64, fuel: f64) -> Reading {
    Reading {
        recorded_at: at,
        position: GeoPoint {
            latitude: 52.5,
            longitude: 13.4,
        },
        speed_kph: Some(50.0),
        fuel_percent: Some(fuel),
        battery_percent: None,
        odometer_km,
        engine_temp_c: Some(90.0),
    }
}

pub fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::parse(k).unwrap()
}

pub fn encode<E: DomainEvent>(event: &E) -> NewEvent {
    commands::codec::encode(event).unwrap()
}

/// Append events to one stream (at whatever version it is).
pub async fn append<E: DomainEvent>(
    store: &EventStore,
    aggregate_type: &str,
    id: Uuid,
    events: Vec<E>,
) -> Vec<RecordedEvent> {
    let append = StreamAppend::new(
        StreamId::new(aggregate_type, id.to_string()),
        ExpectedVersion::Any,
        events.iter().map(encode).collect(),
    );
    store
        .append(&[append], &EventMetadata::for_actor("test"))
        .await
        .unwrap()
}

pub async fn append_raw(
    store: &EventStore,
    aggregate_type: &str,
    id: Uuid,
    event_type: &str,
    payload: serde_json::Value,
) -> RecordedEvent {
    let append = StreamAppend::new(
        StreamId::new(aggregate_type, id.to_string()),
        ExpectedVersion::Any,
        vec![NewEvent::new(event_type, 1, payload)],
    );
    store
        .append(&[append], &EventMetadata::for_actor("test"))
        .await
        .unwrap()
        .remove(0)
}

pub fn options() -> RunOptions {
    RunOptions {
        batch_size: 7,
        poll_interval: std::time::Duration::from_millis(50),
        lease_poll: std::time::Duration::from_millis(100),
        ..RunOptions::default()
    }
}

/// Apply everything visible to `projection` now.
pub async fn catch_up(store: &EventStore, projection: Arc<dyn Projection>) -> Checkpoint {
    Projector::postgres(store.clone(), projection, options())
        .catch_up()
        .await
        .unwrap()
}

pub async fn catch_up_all(store: &EventStore) {
    for p in projections::all() {
        catch_up(store, p).await;
    }
}

/// Ids of the scripted history.
pub struct Script {
    pub car: Uuid,
    pub car2: Uuid,
    pub completed: Uuid,
    pub cancelled: Uuid,
    pub expired: Uuid,
    pub payment: Uuid,
    pub maintenance: Uuid,
}

/// A small fleet's March: two cars, three bookings (completed with a late fee and feedback,
/// cancelled with a fee, expired), a payment captured then half refunded, maintenance
/// completed early, a relocation, a rate change, a retirement and telemetry.
pub async fn scripted_history(store: &EventStore) -> Script {
    let s = Script {
        car: Uuid::now_v7(),
        car2: Uuid::now_v7(),
        completed: Uuid::now_v7(),
        cancelled: Uuid::now_v7(),
        expired: Uuid::now_v7(),
        payment: Uuid::now_v7(),
        maintenance: Uuid::now_v7(),
    };
    append(
        store,
        "car",
        s.car,
        vec![
            CarEvent::CarRegistered {
                id: s.car,
                details: details("Toyota", "RAV4", &["towbar"]),
                daily_rate: eur(5_000),
                branch: "BER".into(),
                in_service_from: None,
            },
            CarEvent::CarDetailsUpdated {
                details: details("Toyota", "RAV4", &["towbar", "roof-box"]),
            },
            CarEvent::DailyRateChanged {
                from: eur(5_000),
                to: eur(6_000),
            },
        ],
    )
    .await;
    append(
        store,
        "car",
        s.car2,
        vec![CarEvent::CarRegistered {
            id: s.car2,
            details: details("Fiat", "500", &[]),
            daily_rate: eur(3_000),
            branch: "BER".into(),
            in_service_from: None,
        }],
    )
    .await;
    // Booking 1: held 1 Mar for 2-4 Mar, paid, picked up, returned late to MUC, feedback.
    let w1 = window(t(2, 10), t(4, 10));
    append(
        store,
        "car",
        s.car,
        vec![CarEvent::CarReserved {
            booking_id: s.completed,
            window: w1,
            at: t(1, 9),
            turnaround_minutes: 60,
        }],
    )
    .await;
    append(
        store,
        "booking",
        s.completed,
        vec![BookingEvent::BookingHeld {
            booking_id: s.completed,
            customer_id: customer(),
            car_id: s.car,
            window: w1,
            pickup_branch: "BER".into(),
            return_branch: "MUC".into(),
            quote: quote(2, 6_000),
            held_until: t(1, 10),
            at: t(1, 9),
        }],
    )
    .await;
    append(
        store,
        "payment",
        s.payment,
        vec![
            PaymentEvent::PaymentRequested {
                id: s.payment,
                booking_id: s.completed,
                amount: eur(12_000),
                method: PaymentMethodKind::Card,
                idempotency_key: key("pay-1"),
            },
            PaymentEvent::PaymentAuthorized {
                gateway: "sandbox-card".into(),
                reference: "ref-1".into(),
                payment_method: None,
            },
            PaymentEvent::PaymentCaptured {
                amount: eur(12_000),
            },
        ],
    )
    .await;
    append(
        store,
        "booking",
        s.completed,
        vec![BookingEvent::BookingConfirmed {
            payment_id: s.payment,
            at: t(1, 9),
        }],
    )
    .await;
    append(
        store,
        "car",
        s.car,
        vec![CarEvent::CarPickedUp {
            booking_id: s.completed,
            odometer_km: 1_000.0,
            at: t(2, 10),
        }],
    )
    .await;
    append(
        store,
        "booking",
        s.completed,
        vec![BookingEvent::RentalStarted {
            odometer_km: 1_000.0,
            fuel_percent: 100.0,
            at: t(2, 10),
        }],
    )
    .await;
    append(
        store,
        "telemetry",
        s.car,
        vec![TelemetryEvent::ReadingsRecorded {
            car_id: s.car,
            readings: vec![
                reading(t(3, 8), 1_200.0, 70.0),
                reading(t(3, 9), 1_250.0, 65.0),
            ],
            duplicates: 0,
            rejected: vec![],
        }],
    )
    .await;
    append(
        store,
        "car",
        s.car,
        vec![CarEvent::CarReturned {
            booking_id: s.completed,
            odometer_km: 1_300.0,
            branch: "MUC".into(),
            at: t(4, 12),
        }],
    )
    .await;
    append(
        store,
        "booking",
        s.completed,
        vec![
            BookingEvent::RentalCompleted {
                odometer_km: 1_300.0,
                fuel_percent: 80.0,
                branch: "MUC".into(),
                charges: vec![PriceLine::new(
                    domain::pricing::LineCode::LateHours,
                    "late return",
                    eur(2_500),
                )],
                total: eur(14_500),
                at: t(4, 12),
            },
            BookingEvent::FeedbackSubmitted {
                rating: 4,
                comment: Some("clean car".into()),
                at: t(4, 13),
            },
        ],
    )
    .await;
    append(
        store,
        "payment",
        s.payment,
        vec![
            PaymentEvent::RefundRequested {
                refund_id: Uuid::nil(),
                amount: eur(6_000),
                reason: "goodwill".into(),
            },
            PaymentEvent::PaymentRefunded {
                refund_id: Uuid::nil(),
                amount: eur(6_000),
                refunded_total: eur(6_000),
                reference: "r-1".into(),
            },
        ],
    )
    .await;
    // Booking 2 on car2: held then cancelled with a fee.
    let w2 = window(t(10, 10), t(12, 10));
    append(
        store,
        "car",
        s.car2,
        vec![CarEvent::CarReserved {
            booking_id: s.cancelled,
            window: w2,
            at: t(5, 9),
            turnaround_minutes: 60,
        }],
    )
    .await;
    append(
        store,
        "booking",
        s.cancelled,
        vec![BookingEvent::BookingHeld {
            booking_id: s.cancelled,
            customer_id: customer(),
            car_id: s.car2,
            window: w2,
            pickup_branch: "BER".into(),
            return_branch: "BER".into(),
            quote: quote(2, 3_000),
            held_until: t(5, 10),
            at: t(5, 9),
        }],
    )
    .await;
    append(
        store,
        "booking",
        s.cancelled,
        vec![BookingEvent::BookingCancelled {
            by: CancelledBy::Customer,
            reason: Some("plans changed".into()),
            fee: eur(1_000),
            at: t(5, 11),
        }],
    )
    .await;
    append(
        store,
        "car",
        s.car2,
        vec![CarEvent::ReservationReleased {
            booking_id: s.cancelled,
            at: t(5, 11),
        }],
    )
    .await;
    // Booking 3 on car2: held, moved, expired, released.
    let w3 = window(t(15, 10), t(16, 10));
    append(
        store,
        "car",
        s.car2,
        vec![
            CarEvent::CarReserved {
                booking_id: s.expired,
                window: w3,
                at: t(6, 9),
                turnaround_minutes: 60,
            },
            CarEvent::ReservationChanged {
                booking_id: s.expired,
                from: w3,
                to: window(t(17, 10), t(18, 10)),
                at: t(6, 9),
                turnaround_minutes: 60,
            },
        ],
    )
    .await;
    append(
        store,
        "booking",
        s.expired,
        vec![
            BookingEvent::BookingHeld {
                booking_id: s.expired,
                customer_id: other_customer(),
                car_id: s.car2,
                window: w3,
                pickup_branch: "BER".into(),
                return_branch: "BER".into(),
                quote: quote(1, 3_000),
                held_until: t(6, 10),
                at: t(6, 9),
            },
            BookingEvent::BookingModified {
                from: w3,
                to: window(t(17, 10), t(18, 10)),
                quote: quote(1, 3_000),
                at: t(6, 9),
            },
            BookingEvent::BookingExpired { at: t(6, 10) },
        ],
    )
    .await;
    append(
        store,
        "car",
        s.car2,
        vec![CarEvent::ReservationReleased {
            booking_id: s.expired,
            at: t(6, 10),
        }],
    )
    .await;
    // Maintenance on car 1, 20-22 Mar, completed early on the 21st; then car2 retired.
    append(
        store,
        "car",
        s.car,
        vec![
            CarEvent::MaintenanceScheduled {
                maintenance_id: s.maintenance,
                window: window(t(20, 8), t(22, 8)),
                reason: "brakes".into(),
                at: t(7, 8),
                displaced: Vec::new(),
                turnaround_minutes: 60,
            },
            CarEvent::MaintenanceCompleted {
                maintenance_id: s.maintenance,
                at: t(21, 8),
            },
        ],
    )
    .await;
    append(
        store,
        "car",
        s.car2,
        vec![
            CarEvent::CarRelocated {
                from: "BER".into(),
                to: "HAM".into(),
            },
            CarEvent::CarRetired {
                reason: "sold".into(),
                at: t(25, 8),
            },
        ],
    )
    .await;
    s
}

pub fn customer() -> Uuid {
    Uuid::from_u128(0xC0FFEE)
}

pub fn other_customer() -> Uuid {
    Uuid::from_u128(0xBEEF)
}
