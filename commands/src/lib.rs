//! Fleetledger's application layer: command execution on the event store with retries.

pub mod accounts;
pub mod booking;
pub mod branches;
pub mod checkout;
pub mod claims;
pub mod codec;
pub mod context;
pub mod crash;
pub mod executor;
pub mod fleet;
pub mod history;
pub mod locks;
pub mod payments;
pub mod upcasters;
pub mod worker;

pub use context::CommandContext;
pub use executor::{
    Committed, ExecuteError, Executor, ExecutorConfig, Loaded, RetryPolicy, replay,
};
