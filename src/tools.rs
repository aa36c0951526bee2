//! Operator commands that are not long-running roles.

use orderflow_kafka::KafkaBus;
use orderflow_platform::BackendUrl;
use orderflow_platform::bus::BusRecord;
use orderflow_schemas::partner::{self, PartnerItem, PartnerOrder};
use orderflow_schemas::{now_ms, topics};

use crate::Settings;

fn kafka(settings: &Settings) -> anyhow::Result<KafkaBus> {
    let BackendUrl::Kafka(hosts) = &settings.bus else {
        anyhow::bail!("this command talks to Kafka: pass --bus kafka://HOST:PORT (or set ORDERFLOW_BUS)");
    };
    Ok(KafkaBus::connect(crate::backend::kafka_options(hosts, &settings.backend_options()?))?)
}

/// `orderflow topics`: creates missing topics and prints every topic with its partitions and key.
pub async fn topics(settings: &Settings) -> anyhow::Result<()> {
    let bus = kafka(settings)?;
    let created = bus.ensure_topics().await?;
    for t in topics::ALL {
        let name = bus.options().physical(t.name);
        let mark = if created.contains(&name) { "created" } else { "exists" };
        println!("{name:<32} partitions={:<3} key={:<18} {mark}", t.partitions, t.key);
    }
    Ok(())
}

/// `orderflow partner-order`: produces one partner order record.
pub async fn partner_order(
    settings: &Settings,
    partner_id: String,
    external_order_id: String,
    user_id: String,
    items: Vec<String>,
    total_amount: Option<String>,
) -> anyhow::Result<()> {
    let items = items
        .iter()
        .map(|i| {
            let (sku, q) = i.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("--item {i:?}: expected SKU:QUANTITY"))?;
            Ok(PartnerItem {
                sku: sku.to_owned(),
                quantity: q.parse().map_err(|_| anyhow::anyhow!("--item {i:?}: quantity is not a number"))?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let order =
        PartnerOrder { partner_id, external_order_id, user_id, items, total_amount, placed_at_ms: Some(now_ms()) };
    let bus = kafka(settings)?;
    bus.ensure_topics().await?;
    let record = BusRecord::new(topics::PARTNER_ORDERS, order.external_order_id.clone(), partner::encode(&order)?);
    orderflow_platform::Bus::publish(&bus, vec![record]).await?;
    println!(
        "sent partner order {} of {} to {}",
        order.external_order_id,
        order.partner_id,
        topics::PARTNER_ORDERS.name
    );
    Ok(())
}
