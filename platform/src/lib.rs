//! The ports of orderflow, kept apart from its domain logic and from any adapter:
//!
//! - [`bus`]: the bus port (append, consume by key partition, commit after processing) and the consumer
//!   policy shared by every adapter (retry transient failures, dead-letter poison records).
//! - [`store`]: the store port, one trait per service's tables, designed query-first.
//! - [`ledger`]: the simulated payment provider's own books ([`ProviderLedger`]), kept apart from the store.
//! - [`fencing`]: the partition epochs and the fence that makes a zombie owner's writes lose.
//! - [`conformance`]: the suites every adapter runs (bus, store and ledger).
//! - [`telemetry`]: tracing and the Prometheus recorder.
//! - [`connection`]: how the adapters log in to Kafka and the CQL database (SASL, passwords, TLS).
//!
//! The adapters are crates of their own that depend on this one: `orderflow-embedded` (the bus, the store
//! and the ledger on fjall, the default), `orderflow-kafka` (the bus) and `orderflow-cql` (the store and the
//! ledger). The binary picks them at run time from a URL-like setting ([`backend::BackendUrl`]); the ledger
//! goes with the store.

pub mod backend;
pub mod bus;
pub mod conformance;
pub mod connection;
pub mod fencing;
pub mod ledger;
pub mod secret;
pub mod store;
pub mod telemetry;

pub use backend::{BackendUrl, Backends};
pub use bus::{Bus, BusError, BusRecord, Delivery, Handler, HandlerError};
pub use ledger::{ProviderEntry, ProviderLedger};
pub use store::{Page, StoreError, Stores};
