//! Telemetry aggregate (being written).
