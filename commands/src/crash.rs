//! Crash points: named places on the payment path where a test makes the process die by
//! SIGKILL, to prove what a crash there leaves and that it is finished afterwards.
//!
//! Compiled in only with the `crash-points` feature (the test build; never the release binary).
//! `FLEETLEDGER_CRASH_AT=<point>` arms one point at start-up; reaching it sends SIGKILL to the
//! process itself, so nothing runs after it: no destructor, no flush, no graceful shutdown.
//! Without the feature [`crash_point!`] expands to nothing.
//!
//! | point | where |
//! |---|---|
//! | `payment.before_gateway` | the payment is requested (PENDING); no gateway was called |
//! | `payment.gateway_answered` | a gateway decided (charged or declined); the answer is not recorded |
//! | `payment.authorized` | the authorization is recorded; not captured |
//! | `payment.captured` | the capture is recorded; the booking is not confirmed |
//! | `booking.requested` | the hold (car reserved, booking HELD, expiry step) is committed; not answered |
//! | `booking.returned` | the return (car back, booking COMPLETED, fees step) is committed; not answered |

/// Every point a test may arm.
pub const POINTS: &[&str] = &[
    "payment.before_gateway",
    "payment.gateway_answered",
    "payment.authorized",
    "payment.captured",
    "booking.requested",
    "booking.returned",
];

/// Arm the point named by FLEETLEDGER_CRASH_AT, if any. Call once at start-up.
#[cfg(feature = "crash-points")]
pub fn arm_from_env() {
    if let Ok(point) = std::env::var("FLEETLEDGER_CRASH_AT") {
        assert!(
            POINTS.contains(&point.as_str()),
            "FLEETLEDGER_CRASH_AT={point} is not one of {POINTS:?}"
        );
        if let Err(e) = fail::cfg(point.as_str(), "return") {
            panic!("arming crash point {point}: {e}");
        }
        tracing::warn!(
            point,
            "crash point armed: this process will SIGKILL itself there"
        );
    }
}

/// Without the `crash-points` feature there is nothing to arm.
#[cfg(not(feature = "crash-points"))]
pub fn arm_from_env() {}

/// SIGKILL this process.
#[cfg(feature = "crash-points")]
pub fn die() -> ! {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    // SIGKILL cannot be caught; the process ends before this loop turns twice.
    loop {
        std::thread::park();
    }
}

/// Die here (SIGKILL) when this point is armed.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "crash-points")]
        {
            debug_assert!(
                $crate::crash::POINTS.contains(&$name),
                "unknown crash point {}",
                $name
            );
            if ::fail::eval($name, |_| ()).is_some() {
                $crate::crash::die();
            }
        }
    };
}
