//! A half-open time window `[start, end)`, the unit of reservations and maintenance.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimeWindow {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the end of a time window must be after its start")]
pub struct EmptyWindow;

impl TimeWindow {
    /// A window that ends after it starts, to the microsecond: the precision PostgreSQL keeps,
    /// so that a window read back from a read model is the very window decided on (a
    /// nanosecond more in the aggregate made a free range that availability answered refuse a
    /// booking).
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Result<Self, EmptyWindow> {
        use chrono::SubsecRound as _;
        let (start, end) = (start.trunc_subsecs(6), end.trunc_subsecs(6));
        if end <= start {
            return Err(EmptyWindow);
        }
        Ok(Self { start, end })
    }

    /// Whether the two windows, each widened by `buffer` on both sides, share an instant.
    pub fn overlaps(&self, other: &TimeWindow, buffer: Duration) -> bool {
        self.start < other.end + buffer && other.start < self.end + buffer
    }

    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }

    pub fn duration(&self) -> Duration {
        self.end - self.start
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn h(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, hour, 0, 0)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn windows_are_half_open_and_buffered() {
        let a = TimeWindow::new(h(8), h(10)).unwrap();
        let b = TimeWindow::new(h(10), h(12)).unwrap();
        assert!(!a.overlaps(&b, Duration::zero()));
        assert!(a.overlaps(&b, Duration::minutes(1)));
        assert!(a.overlaps(&TimeWindow::new(h(9), h(11)).unwrap(), Duration::zero()));
        assert_eq!(TimeWindow::new(h(10), h(10)), Err(EmptyWindow));
        assert!(a.contains(h(8)) && !a.contains(h(10)));
    }
}
