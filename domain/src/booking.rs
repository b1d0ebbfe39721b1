//! Booking aggregate (being written).
