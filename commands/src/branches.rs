//! Branches (being written).
