//! `fleetledger seed`: a realistic, domain-consistent history for demos and benchmarks.
//!
//! Branches (BER, MUC, HAM, FRA), customer accounts (password `fleetledger-demo`), cars, and per
//! car a sequence of bookings over the last `--days` days and the next month: completed
//! rentals (paid, picked up, returned, some late with a fee, some rated), cancellations,
//! expired holds, rentals out now, confirmed future bookings, maintenance between rentals, and
//! telemetry during rentals. Each car's windows never overlap, odometers only go up, and every
//! stream is written whole in one append (hash-chained like any other), many streams per
//! statement. With `--seed` the same flags give the same history.

use crate::progress::Progress;
use anyhow::{Context, Result};
use chrono::{DateTime, Duration, Utc};
use domain::booking::{BookingEvent, CancelledBy};
use domain::car::{CarClass, CarDetails, CarEvent, FuelType, Transmission};
use domain::payment::{IdempotencyKey, PaymentEvent, PaymentMethodKind};
use domain::pricing::{Extra, ExtraKind};
use domain::telemetry::{GeoPoint, Reading, TelemetryEvent};
use domain::{Currency, Money, TimeWindow};
use eventstore::{EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend, StreamId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(clap::Args, Debug, Clone)]
pub struct SeedOptions {
    /// Cars to register.
    #[arg(long, default_value_t = 50)]
    pub cars: u32,
    /// Customer accounts (customer<N>@seed.fleetledger.test, password fleetledger-demo).
    #[arg(long, default_value_t = 20)]
    pub customers: u32,
    /// Bookings in all, spread over the cars.
    #[arg(long, default_value_t = 500)]
    pub bookings: u32,
    /// Telemetry readings recorded during each rental.
    #[arg(long, default_value_t = 4)]
    pub readings_per_rental: u32,
    /// How far back the history starts, in days.
    #[arg(long, default_value_t = 90)]
    pub days: i64,
    /// Random seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Events per append statement.
    #[arg(long, default_value_t = 2_000)]
    pub chunk: usize,
    /// Branches the cars are spread over: the four real ones, then more around their cities
    /// (BER5, MUC6...), as a large rental company has.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub branches: u32,
}

/// The `n` branches of a seeded fleet: (code, name, city, latitude, longitude). The first four
/// are real stations; the rest lie within about 30 km of one of their cities.
pub fn seeded_branches(n: u32) -> Vec<(String, String, String, f64, f64)> {
    (0..n.max(1) as usize)
        .map(|i| {
            let (code, name, city, lat, lon) = BRANCHES[i % BRANCHES.len()];
            if i < BRANCHES.len() {
                return (code.to_owned(), name.to_owned(), city.to_owned(), lat, lon);
            }
            // Spread on a small spiral around the city, the same for every run.
            let angle = i as f64 * 2.399_963;
            let distance =
                0.05 + 0.25 * ((i / BRANCHES.len()) as f64 / (f64::from(n) / 4.0).max(1.0));
            (
                format!("{code}{i}"),
                format!("{city} {i}"),
                city.to_owned(),
                lat + distance * angle.sin(),
                lon + distance * angle.cos() * 1.5,
            )
        })
        .collect()
}

/// What a seed run wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeedReport {
    pub cars: u64,
    pub bookings: u64,
    pub events: u64,
}

const BRANCHES: [(&str, &str, &str, f64, f64); 4] = [
    ("BER", "Berlin Hauptbahnhof", "Berlin", 52.5251, 13.3694),
    ("MUC", "Munich Airport", "Munich", 48.3538, 11.7861),
    ("HAM", "Hamburg Altona", "Hamburg", 53.5522, 9.9351),
    ("FRA", "Frankfurt Messe", "Frankfurt", 50.1117, 8.6494),
];

const MODELS: [(&str, &str, CarClass, u8, FuelType, i64); 9] = [
    ("Fiat", "500", CarClass::Economy, 4, FuelType::Petrol, 3_500),
    (
        "Volkswagen",
        "Golf",
        CarClass::Compact,
        5,
        FuelType::Petrol,
        4_500,
    ),
    (
        "Toyota",
        "Corolla",
        CarClass::Compact,
        5,
        FuelType::Hybrid,
        4_800,
    ),
    ("BMW", "320d", CarClass::Sedan, 5, FuelType::Diesel, 7_000),
    (
        "Tesla",
        "Model 3",
        CarClass::Electric,
        5,
        FuelType::Electric,
        8_500,
    ),
    (
        "Jeep",
        "Wrangler",
        CarClass::Suv,
        5,
        FuelType::Petrol,
        9_000,
    ),
    ("Ford", "Transit", CarClass::Van, 9, FuelType::Diesel, 9_500),
    (
        "Ford",
        "F-150",
        CarClass::Truck,
        5,
        FuelType::Petrol,
        10_000,
    ),
    (
        "Mercedes-Benz",
        "S 500",
        CarClass::Luxury,
        5,
        FuelType::Hybrid,
        18_000,
    ),
];

const FEATURES: [&str; 6] = [
    "bluetooth",
    "navigation",
    "child-seat",
    "roof-box",
    "towbar",
    "heated-seats",
];

/// Branches and customers (idempotent), then the event history.
pub async fn seed(pool: &PgPool, options: &SeedOptions) -> Result<SeedReport> {
    insert_branches(pool, options.branches).await?;
    let hash = demo_password_hash().await?;
    insert_staff(pool, &hash).await?;
    let customers = insert_customers(pool, options.customers.max(1), &hash).await?;
    let store = commands::upcasters::event_store(pool.clone());
    let bar = progress_bar(options);
    let report = write_history(&store, options, &customers, Utc::now(), &|n| {
        bar.inc(n);
    })
    .await?;
    bar.finish();
    Ok(report)
}

fn progress_bar(options: &SeedOptions) -> Progress {
    // Roughly ten events per booking plus the cars.
    let estimate = u64::from(options.bookings) * 10 + u64::from(options.cars) * 2;
    Progress::new("seeding", "events", estimate)
}

async fn insert_branches(pool: &PgPool, n: u32) -> Result<()> {
    for (code, name, city, lat, lon) in seeded_branches(n) {
        sqlx::query(
            "INSERT INTO branches (code, name, city, latitude, longitude) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (code) DO NOTHING",
        )
        .bind(code)
        .bind(name)
        .bind(city)
        .bind(lat)
        .bind(lon)
        .execute(pool)
        .await
        .context("inserting branches")?;
    }
    Ok(())
}

/// The password of every demo account `seed` makes.
pub const DEMO_PASSWORD: &str = "fleetledger-demo";

/// One demo account per staff role (email, role), next to the customers.
pub const DEMO_STAFF: [(&str, &str); 4] = [
    ("admin@seed.fleetledger.test", "ADMIN"),
    ("auditor@seed.fleetledger.test", "AUDITOR"),
    ("analyst@seed.fleetledger.test", "ANALYST"),
    ("integrator@seed.fleetledger.test", "INTEGRATOR"),
];

async fn demo_password_hash() -> Result<String> {
    tokio::task::spawn_blocking(|| commands::accounts::hash_password(DEMO_PASSWORD))
        .await
        .context("hashing the demo password")?
        .context("hashing the demo password")
}

/// The demo staff accounts (idempotent: an existing account keeps its role and password).
async fn insert_staff(pool: &PgPool, hash: &str) -> Result<()> {
    for (email, role) in DEMO_STAFF {
        sqlx::query(
            "INSERT INTO users (id, email, name, role, password_hash) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (lower(email)) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(email)
        .bind(format!("Demo {}", role.to_lowercase()))
        .bind(role)
        .bind(hash)
        .execute(pool)
        .await
        .context("inserting the demo staff accounts")?;
    }
    Ok(())
}

async fn insert_customers(pool: &PgPool, n: u32, hash: &str) -> Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(n as usize);
    for i in 1..=n {
        let email = format!("customer{i}@seed.fleetledger.test");
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO users (id, email, name, role, password_hash) \
             VALUES ($1, $2, $3, 'CUSTOMER', $4) \
             ON CONFLICT (lower(email)) DO UPDATE SET email = EXCLUDED.email RETURNING id",
        )
        .bind(Uuid::now_v7())
        .bind(&email)
        .bind(format!("Seed Customer {i}"))
        .bind(hash)
        .fetch_one(pool)
        .await
        .context("inserting customers")?;
        ids.push(id);
    }
    Ok(ids)
}

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::EUR)
}

fn uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

/// The streams of one car and everything that happened to it.
#[derive(Default)]
struct CarHistory {
    streams: Vec<StreamAppend>,
    events: u64,
    bookings: u64,
}

impl CarHistory {
    fn push<E: cqrs_es::DomainEvent>(
        &mut self,
        aggregate_type: &str,
        id: Uuid,
        events: &[E],
    ) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let encoded = events
            .iter()
            .map(commands::codec::encode)
            .collect::<Result<Vec<NewEvent>, _>>()?;
        self.events += encoded.len() as u64;
        self.streams.push(StreamAppend::new(
            StreamId::new(aggregate_type, id.to_string()),
            ExpectedVersion::NoStream,
            encoded,
        ));
        Ok(())
    }
}

/// Generate and append the history; `progress(n)` after every append of `n` events.
pub async fn write_history(
    store: &EventStore,
    options: &SeedOptions,
    customers: &[Uuid],
    now: DateTime<Utc>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SeedReport> {
    let mut rng = StdRng::seed_from_u64(
        options
            .seed
            .unwrap_or_else(|| u64::try_from(now.timestamp_micros()).unwrap_or(0)),
    );
    let metadata = EventMetadata::for_actor("system:seed");
    let cars = options.cars.max(1);
    let mut report = SeedReport::default();
    let mut pending: Vec<StreamAppend> = Vec::new();
    let mut pending_events = 0usize;
    for index in 0..cars {
        let share = options.bookings / cars + u32::from(index < options.bookings % cars);
        let history = car_history(&mut rng, options, customers, now, share)?;
        report.cars += 1;
        report.bookings += history.bookings;
        report.events += history.events;
        pending_events += history.events as usize;
        pending.extend(history.streams);
        if pending_events >= options.chunk.max(1) {
            store
                .append(&pending, &metadata)
                .await
                .context("appending the seed history")?;
            progress(pending_events as u64);
            pending.clear();
            pending_events = 0;
        }
    }
    if !pending.is_empty() {
        store
            .append(&pending, &metadata)
            .await
            .context("appending the seed history")?;
        progress(pending_events as u64);
    }
    Ok(report)
}

fn car_history(
    rng: &mut StdRng,
    options: &SeedOptions,
    customers: &[Uuid],
    now: DateTime<Utc>,
    bookings: u32,
) -> Result<CarHistory> {
    let mut out = CarHistory::default();
    let car = uuid(rng);
    let (make, model, class, seats, fuel, rate) = MODELS[rng.random_range(0..MODELS.len())];
    let rate = rate + rng.random_range(0..10) * 100;
    let branches = seeded_branches(options.branches);
    let mut branch = branches[rng.random_range(0..branches.len())].0.clone();
    let features = FEATURES
        .iter()
        .filter(|_| rng.random_bool(0.35))
        .map(|f| (*f).to_owned())
        .collect();
    let start = now - Duration::days(options.days.max(1));
    let mut car_events = vec![CarEvent::CarRegistered {
        id: car,
        details: CarDetails {
            make: make.to_owned(),
            model: model.to_owned(),
            year: rng.random_range(2019..=2026),
            class,
            seats,
            transmission: if rng.random_bool(0.7) {
                Transmission::Automatic
            } else {
                Transmission::Manual
            },
            fuel,
            features,
        },
        daily_rate: eur(rate),
        branch: branch.clone(),
        // In service before its first booking, so the history's utilization is real.
        in_service_from: Some(start - Duration::days(1)),
    }];
    let mut telemetry = Vec::new();
    let mut odometer = f64::from(rng.random_range(1_000..60_000));
    // The car's bookings spread over the whole span, from the start of the history to a month
    // ahead, one per slot: rentals in the past, one out now here and there, bookings to come.
    let horizon = now + Duration::days(30);
    // A day's rental and a gap need a day and a half: a calendar holds no more.
    let fits = u32::try_from(((horizon - start).num_hours() / 36).max(1)).unwrap_or(u32::MAX);
    let bookings = bookings.min(fits);
    let slot = (horizon - start) / i32::try_from(bookings.max(1)).unwrap_or(i32::MAX);
    let slot_hours = slot.num_hours().max(2);
    for index in 0..bookings {
        let booking = uuid(rng);
        let customer = customers[rng.random_range(0..customers.len())];
        // A rental takes at most about two thirds of its slot, so the gaps stay real.
        let days = rng.random_range(1..=(slot_hours * 2 / 3 / 24).clamp(1, 7));
        let pickup = start
            + slot * i32::try_from(index).unwrap_or(i32::MAX)
            + Duration::hours(rng.random_range(1..=(slot_hours / 6).max(1)));
        let ret = pickup + Duration::days(days);
        let next_slot = start + slot * i32::try_from(index + 1).unwrap_or(i32::MAX);
        // Booked some days before, and never after now; a few of the coming ones are still
        // held, waiting for payment.
        let held_now = pickup > now && rng.random_bool(0.05);
        let created = if held_now {
            now - Duration::minutes(rng.random_range(1..4))
        } else {
            (pickup - Duration::hours(rng.random_range(2..240)))
                .max(start)
                .min(now - Duration::minutes(rng.random_range(15..600)))
        };
        let window = TimeWindow::new(pickup, ret).context("seed window")?;
        let return_branch = if rng.random_bool(0.2) {
            branches[rng.random_range(0..branches.len())].0.clone()
        } else {
            branch.clone()
        };
        // Priced by the real rules (long-rental discount, one-way fee, extras, mileage), as
        // booking would; some renters take a child seat or the damage waiver.
        let policy = domain::pricing::PricingPolicy::default();
        let mut extras = Vec::new();
        for (kind, share) in [
            (ExtraKind::ChildSeat, 0.15),
            (ExtraKind::AdditionalDriver, 0.1),
            (ExtraKind::CollisionDamageWaiver, 0.3),
        ] {
            if rng.random_bool(share) {
                extras.push(Extra { kind, quantity: 1 });
            }
        }
        let quote = domain::pricing::quote(
            eur(rate),
            pickup,
            ret,
            return_branch != branch,
            &extras,
            &policy,
        )?;
        let held_until = created + Duration::minutes(5);
        car_events.push(CarEvent::CarReserved {
            booking_id: booking,
            window,
            at: created,
            turnaround_minutes: domain::car::LEGACY_TURNAROUND_MINUTES,
        });
        let mut booking_events = vec![BookingEvent::BookingHeld {
            booking_id: booking,
            customer_id: customer,
            car_id: car,
            window,
            pickup_branch: branch.clone(),
            return_branch: return_branch.clone(),
            quote: quote.clone(),
            held_until,
            at: created,
        }];
        let roll: f64 = rng.random();
        let dropped = ret < now && roll < 0.25;
        let mut paid = None;
        if dropped {
            let at = if roll < 0.15 {
                let at = created + Duration::minutes(rng.random_range(1..5));
                booking_events.push(BookingEvent::BookingCancelled {
                    by: CancelledBy::Customer,
                    reason: Some("plans changed".to_owned()),
                    fee: eur(0),
                    at,
                });
                at
            } else {
                booking_events.push(BookingEvent::BookingExpired { at: held_until });
                held_until
            };
            car_events.push(CarEvent::ReservationReleased {
                booking_id: booking,
                at,
            });
        } else if created + Duration::minutes(10) < now {
            let payment = uuid(rng);
            let paid_at = created + Duration::minutes(2);
            // Appended after the booking's stream: a payment follows its booking's hold.
            paid = Some((
                payment,
                [
                    PaymentEvent::PaymentRequested {
                        id: payment,
                        booking_id: booking,
                        amount: quote.total,
                        method: PaymentMethodKind::Card,
                        idempotency_key: IdempotencyKey::parse(&format!("seed-{booking}"))
                            .map_err(|e| anyhow::anyhow!("{e}"))?,
                    },
                    PaymentEvent::PaymentAuthorized {
                        gateway: "sandbox-card".to_owned(),
                        reference: format!("seed-{}", rng.random::<u32>()),
                        payment_method: None,
                    },
                    PaymentEvent::PaymentCaptured {
                        amount: quote.total,
                    },
                ],
            ));
            booking_events.push(BookingEvent::BookingConfirmed {
                payment_id: payment,
                at: paid_at,
            });
            if pickup < now {
                car_events.push(CarEvent::CarPickedUp {
                    booking_id: booking,
                    odometer_km: odometer,
                    at: pickup,
                });
                booking_events.push(BookingEvent::RentalStarted {
                    odometer_km: odometer,
                    fuel_percent: 100.0,
                    at: pickup,
                });
                // Late now and then, never into the next booking's slot.
                let late = rng.random_bool(0.1) && ret + Duration::hours(20) < next_slot;
                let returned = if late {
                    ret + Duration::hours(rng.random_range(2..20))
                } else {
                    ret - Duration::hours(rng.random_range(0..3))
                };
                if returned < now {
                    let driven = f64::from(rng.random_range(20..250)) * days as f64;
                    let readings = options.readings_per_rental.max(1);
                    let mut batch = Vec::new();
                    for k in 1..=readings {
                        let share = f64::from(k) / f64::from(readings + 1);
                        let at = pickup
                            + (returned - pickup) * i32::try_from(k).unwrap_or(1)
                                / i32::try_from(readings + 1).unwrap_or(1);
                        batch.push(Reading {
                            recorded_at: at,
                            position: GeoPoint {
                                latitude: 48.0 + rng.random_range(0.0..5.0),
                                longitude: 8.0 + rng.random_range(0.0..6.0),
                            },
                            speed_kph: Some(rng.random_range(0.0..130.0)),
                            fuel_percent: Some(100.0 - 60.0 * share),
                            battery_percent: None,
                            odometer_km: odometer + driven * share,
                            engine_temp_c: Some(rng.random_range(80.0..100.0)),
                        });
                    }
                    if options.readings_per_rental > 0 {
                        telemetry.push(TelemetryEvent::ReadingsRecorded {
                            car_id: car,
                            readings: batch,
                            duplicates: 0,
                            rejected: vec![],
                        });
                    }
                    // Most come back full; the others pay to refuel.
                    let fuel_in = if rng.random_bool(0.8) {
                        100.0
                    } else {
                        f64::from(rng.random_range(40..100))
                    };
                    let charges = domain::pricing::return_charges(
                        &domain::pricing::RentalReturn {
                            daily_rate: eur(rate),
                            booked_from: pickup,
                            booked_until: ret,
                            booked_total: quote.total,
                            one_way: return_branch != branch,
                            returned,
                            fuel_out_percent: 100.0,
                            fuel_in_percent: fuel_in,
                            odometer_out_km: odometer,
                            odometer_in_km: odometer + driven,
                            extras: quote.extras.clone(),
                            mileage: quote.mileage,
                        },
                        &policy,
                    )?;
                    odometer += driven;
                    let total = eur(
                        quote.total.minor + charges.iter().map(|c| c.amount.minor).sum::<i64>()
                    );
                    car_events.push(CarEvent::CarReturned {
                        booking_id: booking,
                        odometer_km: odometer,
                        branch: return_branch.clone(),
                        at: returned,
                    });
                    booking_events.push(BookingEvent::RentalCompleted {
                        odometer_km: odometer,
                        fuel_percent: fuel_in,
                        branch: return_branch.clone(),
                        charges,
                        total,
                        at: returned,
                    });
                    if rng.random_bool(0.5) {
                        booking_events.push(BookingEvent::FeedbackSubmitted {
                            rating: rng.random_range(3..=5),
                            comment: None,
                            at: returned + Duration::hours(2),
                        });
                    }
                    branch = return_branch;
                }
            }
        }
        out.push("booking", booking, &booking_events)?;
        if let Some((payment, events)) = paid {
            out.push("payment", payment, &events)?;
        }
        out.bookings += 1;
        // Now and then, maintenance in the gap before the next booking, where it fits (with
        // the turnarounds on both sides).
        let from = ret + Duration::hours(22);
        let until = from + Duration::hours(12);
        if until + Duration::hours(2) < next_slot && rng.random_bool(0.05) {
            let maintenance = uuid(rng);
            car_events.push(CarEvent::MaintenanceScheduled {
                maintenance_id: maintenance,
                window: TimeWindow::new(from, until).context("seed maintenance")?,
                reason: "scheduled service".to_owned(),
                at: ret,
                displaced: Vec::new(),
                turnaround_minutes: domain::car::LEGACY_TURNAROUND_MINUTES,
            });
            if until < now {
                car_events.push(CarEvent::MaintenanceCompleted {
                    maintenance_id: maintenance,
                    at: until,
                });
            }
        }
    }
    // The car first: its bookings' feedback counts toward a car the read models already know
    // (pushed after them, every seeded rating was dropped).
    let bookings_and_payments = std::mem::take(&mut out.streams);
    out.push("car", car, &car_events)?;
    out.streams.extend(bookings_and_payments);
    out.push("telemetry", car, &telemetry)?;
    Ok(out)
}
