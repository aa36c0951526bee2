//! The ports of orderflow, kept apart from its domain logic and from any adapter:
//!
//! - [`bus`]: the bus port (append, consume by key partition, commit after processing) and the consumer
//!   policy shared by every adapter (retry transient failures, dead-letter poison records).
//! - [`store`]: the store port, one trait per service's tables, designed query-first.
//! - [`fencing`]: the partition epochs and the fence that makes a zombie owner's writes lose.
//! - [`conformance`]: the suites every adapter runs (bus and store).
//! - [`telemetry`]: tracing and the Prometheus recorder.
//! - [`connection`]: how the adapters log in to Kafka and the CQL database (SASL, passwords, TLS).
//!
//! The adapters are crates of their own that depend on this one: `orderflow-embedded` (both ports on fjall,
//! the default), `orderflow-kafka` (the bus) and `orderflow-cql` (the store). The binary picks them at run
//! time from a URL-like setting ([`backend::BackendUrl`]).

pub mod backend;
pub mod bus;
pub mod conformance;
pub mod connection;
pub mod fencing;
pub mod secret;
pub mod store;
pub mod telemetry;

pub use backend::{BackendUrl, Backends};
pub use bus::{Bus, BusError, BusRecord, Delivery, Handler, HandlerError};
pub use store::{Page, StoreError, Stores};
