//! What every bus adapter does around a handler: retry transient failures with capped exponential
//! backoff (for as long as it takes, since skipping would lose an order), and move poison records to
//! the dead-letter topic with the reason so the partition keeps flowing.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use orderflow_schemas::topics;
use tokio_util::sync::CancellationToken;

use super::{Bus, BusError, BusRecord, Delivery, Handler, HandlerError};

/// The namespace of the headers this module writes on dead letters.
pub const OWN_HEADER_PREFIX: &str = "orderflow.";
/// Header with the reason a record was dead-lettered.
pub const ERROR_HEADER: &str = "orderflow.error";
/// Headers naming where a dead-lettered record came from.
pub const SOURCE_TOPIC_HEADER: &str = "orderflow.source.topic";
pub const SOURCE_PARTITION_HEADER: &str = "orderflow.source.partition";
pub const SOURCE_OFFSET_HEADER: &str = "orderflow.source.offset";
pub const GROUP_HEADER: &str = "orderflow.group";

/// Runs a handler call, turning a panic into a poison error for that call: a bug or an input no check
/// foresaw must cost one record (dead-lettered with the panic's message), never the partition's consumer,
/// which would otherwise end quietly and leave every later record of the partition waiting.
async fn contained(call: impl std::future::Future<Output = Result<(), HandlerError>>) -> Result<(), HandlerError> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(call).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            metrics::counter!("orderflow_handler_panics_total").increment(1);
            Err(HandlerError::Poison(format!("handler_panicked: {message}")))
        }
    }
}

/// Runs `handler` on consecutive records of one partition: one [`Handler::handle_batch`] call, and if
/// that fails, each record on its own under [`handle_with_policy`]. Returns `Err` only when shutting
/// down; then no position in the batch may be committed (some may be handled again: idempotence).
pub async fn handle_batch_with_policy(
    bus: &dyn Bus,
    group: &str,
    handler: &dyn Handler,
    batch: &[Delivery],
    shutdown: &CancellationToken,
) -> Result<(), BusError> {
    if let [one] = batch {
        return handle_with_policy(bus, group, handler, one, shutdown).await;
    }
    let started = std::time::Instant::now();
    match contained(handler.handle_batch(batch)).await {
        Ok(()) => {
            metrics::histogram!("orderflow_handler_duration_seconds", "group" => group.to_owned())
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("orderflow_handler_batch_size", "group" => group.to_owned()).record(batch.len() as f64);
            metrics::counter!("orderflow_records_processed_total", "group" => group.to_owned())
                .increment(batch.len() as u64);
            Ok(())
        }
        Err(e) => {
            tracing::debug!(group, error = %e, records = batch.len(), "batch failed; handling its records one by one");
            for d in batch {
                handle_with_policy(bus, group, handler, d, shutdown).await?;
            }
            Ok(())
        }
    }
}

/// Runs `handler` on `delivery` until it succeeds or is poison. Returns `Err` only when shutting down
/// before the record was handled; the caller must then not commit its position.
pub async fn handle_with_policy(
    bus: &dyn Bus,
    group: &str,
    handler: &dyn Handler,
    delivery: &Delivery,
    shutdown: &CancellationToken,
) -> Result<(), BusError> {
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let started = std::time::Instant::now();
        let outcome = contained(handler.handle(delivery)).await;
        metrics::histogram!("orderflow_handler_duration_seconds", "group" => group.to_owned())
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => {
                metrics::counter!("orderflow_records_processed_total", "group" => group.to_owned()).increment(1);
                return Ok(());
            }
            Err(HandlerError::Poison(reason)) => {
                tracing::warn!(group, topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset, %reason, "dead-lettering record");
                metrics::counter!("orderflow_records_dead_lettered_total", "group" => group.to_owned()).increment(1);
                let mut record = BusRecord::new(topics::DEAD_LETTER, delivery.key.clone(), delivery.payload.clone());
                // The producer's own headers travel along, but never ones in our namespace: a record that
                // arrived with `orderflow.error` or `orderflow.source.*` set must not pass them off as ours.
                record.headers =
                    delivery.headers.iter().filter(|(k, _)| !k.starts_with(OWN_HEADER_PREFIX)).cloned().collect();
                record.headers.extend([
                    (ERROR_HEADER.to_owned(), reason),
                    (SOURCE_TOPIC_HEADER.to_owned(), delivery.topic.clone()),
                    (SOURCE_PARTITION_HEADER.to_owned(), delivery.partition.to_string()),
                    (SOURCE_OFFSET_HEADER.to_owned(), delivery.offset.to_string()),
                    (GROUP_HEADER.to_owned(), group.to_owned()),
                ]);
                // Dead-lettering itself can fail transiently; retry it like any other step.
                match bus.publish(vec![record]).await {
                    Ok(()) => return Ok(()),
                    Err(e) => tracing::warn!(error = %e, "dead-letter publish failed; retrying"),
                }
            }
            Err(HandlerError::Transient(reason)) => {
                metrics::counter!("orderflow_handler_retries_total", "group" => group.to_owned()).increment(1);
                tracing::warn!(group, topic = %delivery.topic, offset = delivery.offset, %reason, "handler failed; retrying");
            }
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Err(BusError::ShuttingDown),
        }
    }
}
