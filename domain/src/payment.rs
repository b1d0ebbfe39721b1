//! Payment aggregate (being written).
