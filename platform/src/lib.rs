//! The plumbing of orderflow, kept apart from its domain logic:
//!
//! - [`bus`]: the bus port (append, consume by key partition, commit after processing) and the consumer
//!   policy shared by every adapter (retry transient failures, dead-letter poison records).
//! - [`store`]: the store port, one trait per service's tables, designed query-first.
//! - [`embedded`]: the default adapters for both ports, on one fjall database in the data directory.
//! - [`telemetry`]: tracing and the Prometheus recorder.
//!
//! Adapters are picked at run time from a URL-like setting ([`backend::BackendUrl`]).

pub mod backend;
pub mod bus;
pub mod conformance;
pub mod cql;
pub mod embedded;
pub mod fencing;
pub mod kafka;
pub mod store;
pub mod telemetry;

pub use backend::{BackendUrl, Backends};
pub use bus::{Bus, BusError, BusRecord, Delivery, Handler, HandlerError};
pub use store::{Page, StoreError, Stores};
