//! Partition epochs: `orderflow_fencing.partition_epochs`, one row per (group, topic, partition), claimed
//! with a lightweight transaction once per assignment (see `schemas/cql/fencing.cql`).

use async_trait::async_trait;
use orderflow_schemas::now_ms;
use scylla::statement::prepared::PreparedStatement;

use super::{CqlStore, Lwt, MAX_CAS_ROUNDS, Scope, backoff, prepare, serial, to_i64, to_u64};
use orderflow_platform::store::{EpochStore, Result, StoreError};

pub(super) struct Statements {
    get_serial: PreparedStatement,
    first: PreparedStatement,
    next: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &Scope<'_>) -> Result<Self> {
        let get = prepare(
            s,
            "SELECT epoch, owner FROM orderflow_fencing.partition_epochs \
             WHERE consumer_group = ? AND topic = ? AND partition = ?",
            true,
        )
        .await?;
        Ok(Self {
            get_serial: serial(&get),
            first: prepare(
                s,
                "INSERT INTO orderflow_fencing.partition_epochs \
                 (consumer_group, topic, partition, epoch, owner, claimed_at_ms) VALUES (?, ?, ?, 1, ?, ?) \
                 IF NOT EXISTS",
                false,
            )
            .await?,
            next: prepare(
                s,
                "UPDATE orderflow_fencing.partition_epochs SET epoch = ?, owner = ?, claimed_at_ms = ? \
                 WHERE consumer_group = ? AND topic = ? AND partition = ? IF epoch = ?",
                false,
            )
            .await?,
        })
    }
}

#[async_trait]
impl EpochStore for CqlStore {
    async fn claim(&self, group: &str, topic: &str, partition: u32, owner: &str) -> Result<u64> {
        let st = &self.fencing;
        let partition = i32::try_from(partition).map_err(|_| StoreError::Corrupt(format!("partition {partition}")))?;
        for round in 0..MAX_CAS_ROUNDS {
            // SERIAL: sees every claim accepted before, so the next epoch is above all of them.
            let current: Option<(Option<i64>, Option<String>)> =
                self.first_row(&st.get_serial, (group, topic, partition)).await?;
            let (epoch, outcome) = match current {
                None => (1, self.lwt(&st.first, (group, topic, partition, owner, now_ms())).await?),
                Some((last, _)) => {
                    let last = to_u64(last.unwrap_or(0), "epoch")?;
                    let next = last + 1;
                    let values =
                        (to_i64(next, "epoch")?, owner, now_ms(), group, topic, partition, to_i64(last, "epoch")?);
                    (next, self.lwt(&st.next, values).await?)
                }
            };
            match outcome {
                Lwt::Applied => return Ok(epoch),
                Lwt::NotApplied => backoff(round).await,
                Lwt::Unknown(e) => {
                    tracing::warn!(group, topic, partition, error = %e, "epoch claim outcome unknown; settling with a SERIAL read");
                    let now: Option<(Option<i64>, Option<String>)> =
                        self.first_row(&st.get_serial, (group, topic, partition)).await?;
                    if let Some((Some(stored), Some(by))) = now
                        && to_u64(stored, "epoch")? == epoch
                        && by == owner
                    {
                        return Ok(epoch);
                    }
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "claiming partition {partition} of {topic} for {group}: {MAX_CAS_ROUNDS} rounds lost to other claims"
        )))
    }
}
