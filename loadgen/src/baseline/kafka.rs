//! Raw Kafka produce rate, with the product's producer settings and the product's records: the seven
//! envelopes of a one-line order, Avro-encoded by the product's codec, keyed by order id, into a
//! throwaway topic with the pipeline topics' partition count.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use orderflow_kafka::{KafkaSecurity, apply_security};
use orderflow_schemas::events::{
    CapturePayment, CreateShipment, OrderPlaced, PaymentCaptured, ReserveLine, ReserveStock, ShipmentCreated,
    ShipmentLine, StockReserved,
};
use orderflow_schemas::{
    Envelope, EventId, Money, Order, OrderId, OrderLine, OrderStatus, Quantity, Sku, TimelineEntry, UserId, codec,
    topics,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use serde::Serialize;

use super::distributed::{self, DISTRIBUTED_ORDER_PLAN, PlanTotals};

/// How long a record may wait in the producer queue and for its acknowledgement (the product's value).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Records sent and acknowledged before the clock starts (connections, metadata, the producer id).
const WARM_UP_RECORDS: usize = 2_000;
/// A bound no run reaches, on top of the duration.
const MAX_RECORDS: u64 = 1_000_000_000;

/// The raw Kafka figures.
#[derive(Debug, Clone, Serialize)]
pub struct KafkaReport {
    pub bootstrap: String,
    pub partitions: u16,
    pub in_flight: usize,
    pub duration_s: f64,
    pub messages: u64,
    pub failed: u64,
    pub messages_per_s: f64,
    pub bytes_per_s: f64,
    pub mean_record_bytes: f64,
    pub plan: PlanTotals,
    /// `messages_per_s / plan.messages`.
    pub orders_per_s: f64,
}

/// The seven envelopes one order puts on the bus, in pipeline order, for order number `n`.
pub fn order_envelopes(n: u64) -> anyhow::Result<Vec<Envelope>> {
    let id = OrderId::parse(format!("ld-bench-{n:012}"))?;
    let user = UserId::parse(format!("load-user-{}", n % 10_000))?;
    let sku = Sku::parse("LD-bench0000-7")?;
    let quantity = Quantity::new(2)?;
    let price = Money::from_cents(450)?;
    let total = Money::from_cents(900)?;
    let now = orderflow_schemas::now_ms();
    let order = Order {
        id: id.clone(),
        user_id: user.clone(),
        lines: vec![OrderLine { sku: sku.clone(), quantity, unit_price: price }],
        total,
        status: OrderStatus::Pending,
        reason: None,
        channel: "http".into(),
        placed_at_ms: now,
        updated_at_ms: now,
        processed_at_ms: None,
        reserved_skus: vec![],
        payment_method: None,
        currency: None,
        capture_on: Default::default(),
        timeline: vec![TimelineEntry { at_ms: now, kind: "placed".into(), detail: format!("total {total}") }],
    };
    let env = |step: &str, body: orderflow_schemas::Event| Envelope {
        event_id: EventId::derived(&id, step),
        order_id: id.clone(),
        occurred_at_ms: now,
        body,
    };
    Ok(vec![
        OrderPlaced::envelope_of(&order),
        env(&format!("reserve:{sku}"), ReserveStock { lines: vec![ReserveLine { sku: sku.clone(), quantity }] }.into()),
        env(&format!("reserve_reply:{sku}"), StockReserved { units_reserved: 2, sku: Some(sku.clone()) }.into()),
        env(
            "capture",
            CapturePayment {
                user_id: user.clone(),
                amount_cents: total.cents(),
                idempotency_key: format!("{id}:capture"),
                payment_method: None,
                currency: None,
                authorise_only: false,
            }
            .into(),
        ),
        env(
            "capture_reply",
            PaymentCaptured {
                charge_id: format!("pay_{}", uuid::Uuid::new_v4().simple()),
                captured_cents: total.cents(),
                authorisation_id: None,
                authorised_only: false,
            }
            .into(),
        ),
        env("ship", CreateShipment { ship_to_user_id: user, lines: vec![ShipmentLine { sku, quantity }] }.into()),
        env(
            "shipment_created",
            ShipmentCreated { shipment_id: format!("sh_{}", uuid::Uuid::new_v4().simple()) }.into(),
        ),
    ])
}

fn admin(bootstrap: &str, security: &KafkaSecurity) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    apply_security(ClientConfig::new().set("bootstrap.servers", bootstrap), security)
        .create()
        .context("creating the Kafka admin client")
}

/// Produces the order records into a fresh topic for `duration`, with at most `in_flight` records sent and
/// not yet acknowledged, then deletes the topic.
pub async fn run_kafka(
    bootstrap: &str,
    security: &KafkaSecurity,
    in_flight: usize,
    duration: Duration,
    replication_factor: i32,
) -> anyhow::Result<KafkaReport> {
    let plan = distributed::totals(DISTRIBUTED_ORDER_PLAN);
    let payloads: Vec<Vec<u8>> =
        order_envelopes(0)?.iter().map(codec::encode).collect::<Result<_, _>>().context("encoding envelopes")?;
    if payloads.len() != plan.messages as usize {
        bail!("the order has {} envelopes but the plan counts {} records", payloads.len(), plan.messages);
    }
    let partitions = topics::ORDERS.partitions;
    let topic = format!("orderflow-bench-{}", uuid::Uuid::new_v4().simple());
    let admin = admin(bootstrap, security)?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, i32::from(partitions), TopicReplication::Fixed(replication_factor))],
            &opts,
        )
        .await
        .context("creating the bench topic")?;
    for r in created {
        if let Err((name, code)) = r
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            bail!("creating topic {name}: {code}");
        }
    }
    let outcome = produce(bootstrap, security, &topic, &payloads, in_flight, duration).await;
    // Throwaway: delete it whatever happened (a failure to delete only leaves a topic behind).
    if let Err(e) = admin.delete_topics(&[topic.as_str()], &opts).await {
        eprintln!("could not delete bench topic {topic}: {e}");
    }
    let (messages, failed, bytes, secs) = outcome?;
    Ok(KafkaReport {
        bootstrap: bootstrap.to_owned(),
        partitions,
        in_flight,
        duration_s: secs,
        messages,
        failed,
        messages_per_s: messages as f64 / secs,
        bytes_per_s: bytes as f64 / secs,
        mean_record_bytes: payloads.iter().map(Vec::len).sum::<usize>() as f64 / payloads.len() as f64,
        plan,
        orders_per_s: distributed::kafka_orders_per_s(messages as f64 / secs, &plan),
    })
}

/// `(acknowledged, failed, payload bytes acknowledged, seconds)` of the measured part.
async fn produce(
    bootstrap: &str,
    security: &KafkaSecurity,
    topic: &str,
    payloads: &[Vec<u8>],
    in_flight: usize,
    duration: Duration,
) -> anyhow::Result<(u64, u64, u64, f64)> {
    // The product's producer (platform/src/kafka/mod.rs `KafkaBus::connect`).
    let producer: FutureProducer = apply_security(ClientConfig::new().set("bootstrap.servers", bootstrap), security)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", PUBLISH_TIMEOUT.as_millis().to_string())
        .create()
        .context("creating the Kafka producer")?;
    let in_flight = in_flight.max(1);
    let send = |i: u64| {
        let producer = &producer;
        // Seven consecutive records share an order id (its key), like one order's records do.
        let order = i / payloads.len() as u64;
        let payload = &payloads[(i % payloads.len() as u64) as usize];
        async move {
            let key = format!("ld-bench-{order:012}");
            let record = FutureRecord::to(topic).key(&key).payload(payload);
            producer
                .send(record, Timeout::After(PUBLISH_TIMEOUT))
                .await
                .map(|_| payload.len() as u64)
                .map_err(|(e, _)| e)
        }
    };

    // Warm-up, not measured.
    let mut pending = FuturesUnordered::new();
    let mut next = 0u64;
    let mut warm_failures = 0usize;
    while (next as usize) < WARM_UP_RECORDS || !pending.is_empty() {
        while pending.len() < in_flight && (next as usize) < WARM_UP_RECORDS {
            pending.push(send(next));
            next += 1;
        }
        if let Some(Err(e)) = pending.next().await {
            warm_failures += 1;
            if warm_failures == 1 {
                eprintln!("warm-up send failed: {e}");
            }
        }
    }
    if warm_failures == WARM_UP_RECORDS {
        bail!("no record could be produced to {topic} at {bootstrap}");
    }

    let started = Instant::now();
    let deadline = started + duration;
    let (mut acked, mut failed, mut bytes) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    loop {
        while pending.len() < in_flight && Instant::now() < deadline && next < MAX_RECORDS {
            pending.push(send(next));
            next += 1;
        }
        match pending.next().await {
            Some(Ok(n)) => {
                acked += 1;
                bytes += n;
            }
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    if let Some(e) = first_error {
        eprintln!("{failed} record(s) failed, the first with: {e}");
    }
    producer.flush(Timeout::After(Duration::from_secs(10))).context("flushing the producer")?;
    Ok((acked, failed, bytes, secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_is_seven_envelopes_the_codec_round_trips() {
        let envs = order_envelopes(42).unwrap();
        assert_eq!(envs.len(), distributed::totals(DISTRIBUTED_ORDER_PLAN).messages as usize);
        let names: Vec<_> = envs.iter().map(|e| e.body.name()).collect();
        assert_eq!(
            names,
            [
                "OrderPlaced",
                "ReserveStock",
                "StockReserved",
                "CapturePayment",
                "PaymentCaptured",
                "CreateShipment",
                "ShipmentCreated"
            ]
        );
        for env in &envs {
            let bytes = codec::encode(env).unwrap();
            assert_eq!(&codec::decode(&bytes).unwrap(), env);
        }
    }
}
