//! Partition ownership for handlers that write state owned by their input partition (the order saga,
//! payment, fulfillment): one epoch claimed per assignment, and a [`Fence`] per record.
//!
//! The bus hands every record over with the [`crate::bus::Assignment`] it was read under. The first
//! record of a new assignment makes [`PartitionFences::fence`] claim the partition's next epoch (one
//! conditional write on CQL); every later record of that assignment reuses it, so the cost is once per
//! assignment, not once per record. A claim made for an assignment that was revoked meanwhile is not
//! used: the record is left to the partition's new owner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::bus::{Delivery, HandlerError};
use crate::store::{EpochStore, Fence};

/// The epochs one handler holds, per (topic, partition).
pub struct PartitionFences {
    epochs: Arc<dyn EpochStore>,
    group: String,
    owner: String,
    /// (topic, partition) -> (assignment id, epoch claimed for it).
    held: Mutex<HashMap<(String, u32), (u64, u64)>>,
}

impl std::fmt::Debug for PartitionFences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionFences").field("group", &self.group).finish_non_exhaustive()
    }
}

impl PartitionFences {
    pub fn new(epochs: Arc<dyn EpochStore>, group: impl Into<String>) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        Self {
            epochs,
            group: group.into(),
            owner: format!("{host}:{}", std::process::id()),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The fence to stamp the writes of `delivery` with: this consumer's epoch for the record's partition
    /// (claimed now if the partition was newly assigned) and the record's offset.
    pub async fn fence(&self, delivery: &Delivery) -> Result<Fence, HandlerError> {
        let slot = (delivery.topic.clone(), delivery.partition);
        let assignment = delivery.assignment.id;
        let poisoned = || HandlerError::Transient("fence table poisoned".into());
        if let Some((id, epoch)) = self.held.lock().map_err(|_| poisoned())?.get(&slot)
            && *id == assignment
        {
            return Ok(Fence::new(*epoch, delivery.offset));
        }
        let epoch = self.epochs.claim(&self.group, &delivery.topic, delivery.partition, &self.owner).await?;
        if delivery.assignment.revoked.is_cancelled() {
            return Err(HandlerError::Transient(format!(
                "partition {} of {} was revoked; its new owner takes over",
                delivery.partition, delivery.topic
            )));
        }
        tracing::info!(group = %self.group, topic = %delivery.topic, partition = delivery.partition, epoch, "claimed partition epoch");
        metrics::counter!("orderflow_partition_epochs_claimed_total", "group" => self.group.clone()).increment(1);
        self.held.lock().map_err(|_| poisoned())?.insert(slot, (assignment, epoch));
        Ok(Fence::new(epoch, delivery.offset))
    }
}
