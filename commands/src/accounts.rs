//! User accounts (being written).
