//! The application services the API drives, built once by the binary (or a test) and shared.

use std::time::Duration;

use commands::Executor;
use commands::accounts::Accounts;
use commands::booking::BookingService;
use commands::branches::Branches;
use commands::checkout::Checkout;
use commands::fleet::Fleet;
use domain::car::Car;
use domain::telemetry::{Telemetry, TelemetryPolicy};
use eventstore::{Checkpoint, EventStore};

use crate::error::{ApiResult, AppError};

/// Everything a resolver may call. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub store: EventStore,
    pub accounts: Accounts,
    pub branches: Branches,
    pub bookings: BookingService,
    pub checkout: Checkout,
    pub cars: Executor<Car>,
    pub telemetry: Executor<Telemetry>,
    pub telemetry_policy: TelemetryPolicy,
    pub fleet: Fleet,
    /// How long a mutation waits for the read models to reflect it.
    pub read_your_writes_timeout: Duration,
    /// The process's one reader of the log, which every GraphQL subscription follows.
    pub tail: eventstore::LogTail,
}

/// What [`Services::build`] needs beyond the database.
pub struct ServicesConfig {
    pub executor: commands::ExecutorConfig,
    pub booking: commands::booking::BookingConfig,
    pub lock: commands::locks::HotCarLock,
    pub keys: commands::accounts::JwtKeys,
    pub gateways: commands::payments::GatewayRouter,
    pub read_your_writes_timeout: Duration,
}

impl Services {
    /// Wire every service over one pool, as `fleetledger serve` runs them.
    pub fn build(pool: sqlx::PgPool, config: ServicesConfig) -> Self {
        let store = commands::upcasters::event_store(pool.clone());
        let executor = || config.executor.clone();
        let bookings = BookingService::new(
            store.clone(),
            Executor::new(store.clone(), (), executor()),
            Executor::new(store.clone(), (), executor()),
            config.lock,
            config.booking,
        );
        let payments = commands::payments::PaymentService::new(
            Executor::new(store.clone(), (), executor()),
            config.gateways,
        );
        let telemetry_policy = TelemetryPolicy::default();
        let cars = Executor::new(store.clone(), (), executor());
        let telemetry = Executor::new(store.clone(), telemetry_policy.clone(), executor());
        Self {
            accounts: Accounts::new(pool.clone(), config.keys),
            branches: Branches::new(pool),
            checkout: Checkout::new(bookings.clone(), payments),
            fleet: Fleet::new(cars.clone(), telemetry.clone()),
            bookings,
            cars,
            telemetry,
            telemetry_policy,
            read_your_writes_timeout: config.read_your_writes_timeout,
            // Woken by this process's appends at once, by others' through LISTEN (one
            // connection for the process) or, failing that, the poll.
            tail: eventstore::LogTail::new(
                store.clone(),
                eventstore::SubscribeOptions {
                    poll_interval: Duration::from_millis(250),
                    ..eventstore::SubscribeOptions::default()
                },
            ),
            store,
        }
    }

    /// Wait until every projection in `names` has applied `target` (read-your-writes), polling
    /// the checkpoints cheaply with a growing pause, up to the configured deadline. Past it the
    /// caller gets UNAVAILABLE: retry the read. For a query or a subscription's start; a
    /// command's answer uses [`Services::projections_behind`] and answers from the log instead.
    pub async fn wait_for_projections(
        &self,
        names: &[&str],
        target: Option<Checkpoint>,
    ) -> ApiResult<()> {
        if self.projections_behind(names, target).await?.is_empty() {
            Ok(())
        } else {
            Err(AppError::Unavailable)
        }
    }

    /// Wait as [`Services::wait_for_projections`] does; the projections of `names` still
    /// behind `target` at the deadline (empty: all caught up).
    pub async fn projections_behind(
        &self,
        names: &[&str],
        target: Option<Checkpoint>,
    ) -> ApiResult<Vec<String>> {
        let Some(target) = target else {
            return Ok(Vec::new());
        };
        let deadline = tokio::time::Instant::now() + self.read_your_writes_timeout;
        let mut pauses =
            eventstore::backoff::Backoff::new(Duration::from_millis(2), Duration::from_millis(50))
                .pauses();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        loop {
            let behind = ::projections::status::behind(self.store.pool(), &names, target).await?;
            if behind.is_empty() {
                return Ok(behind);
            }
            let pause = pauses.next().unwrap_or(Duration::from_millis(50));
            if tokio::time::Instant::now() + pause > deadline {
                tracing::warn!(projections = ?behind, target = %target,
                    "read models did not reach the command's position in time");
                metrics::counter!("fleetledger_read_your_writes_timeouts_total").increment(1);
                return Ok(behind);
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// The projections that back each kind of answer.
pub mod projections {
    pub const SEARCH: &str = "search";
    pub const AVAILABILITY: &str = "availability";
    pub const HISTORY: &str = "history";
    pub const ANALYTICS: &str = "analytics";
    pub const TELEMETRY: &str = "telemetry";
    pub const CARS: &[&str] = &[SEARCH, AVAILABILITY];
    pub const BOOKINGS: &[&str] = &[SEARCH, AVAILABILITY, HISTORY];
    pub const PAYMENTS: &[&str] = &[HISTORY];
}

/// The checkpoint of the last of `events` (the command's position), if it wrote any.
pub fn last_checkpoint(events: &[eventstore::RecordedEvent]) -> Option<Checkpoint> {
    events
        .iter()
        .map(eventstore::RecordedEvent::checkpoint)
        .max()
}
