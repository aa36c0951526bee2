//! Partition epochs (see `orderflow_platform::fencing`).

use async_trait::async_trait;
use fjall::Readable;

use super::super::unavailable;
use super::EmbeddedStore;
use orderflow_platform::store::*;

// Partition epochs: epochs[group 0x00 topic 0x00 partition(u32 BE)] = last epoch claimed (u64 BE). One
// process holds the data directory, so there are no zombies to fence here; the epochs still increase
// across restarts, as the port promises.

/// The embedded engine lives in this process: it is ready as long as the process runs (a failing disk
/// shows up as errors of the writes themselves).

#[async_trait]
impl EpochStore for EmbeddedStore {
    async fn claim(&self, group: &str, topic: &str, partition: u32, _owner: &str) -> Result<u64> {
        let key = [group.as_bytes(), b"\0", topic.as_bytes(), b"\0", &partition.to_be_bytes()].concat();
        self.db
            .write(move |db, tx| {
                let last = match tx.get(&db.epochs, &key).map_err(unavailable)? {
                    Some(v) => u64::from_be_bytes(
                        v.as_ref().try_into().map_err(|_| StoreError::Corrupt("partition epoch".into()))?,
                    ),
                    None => 0,
                };
                let next = last + 1;
                tx.insert(&db.epochs, key, next.to_be_bytes());
                Ok(next)
            })
            .await
    }
}
