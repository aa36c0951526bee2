//! Who may do what, and what is not taken on trust: the role table on every route (`authorization`),
//! production mode (`production_mode`), and records that move money checked against the store of record
//! (`forged_events`). One test binary for the three: each binary of this crate links all of orderflow.

#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod authorization;
mod customer_cancel;
mod forged_events;
mod production_mode;
