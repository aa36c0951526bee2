//! The chaos suite's parts (see `main.rs` and scripts/chaos): the role processes and the faults done to
//! them, the workload, and the checker.

pub mod checker;
pub mod cluster;
pub mod workload;
