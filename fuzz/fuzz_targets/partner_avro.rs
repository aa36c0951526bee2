//! Partner order records (Avro single object) through decode and into the domain request, as partner
//! intake does. Never panics or allocates beyond the record's size (the fuzzer's -malloc_limit_mb
//! catches that); whatever decodes encodes back to bytes that decode to the same order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_schemas::partner;

fuzz_target!(|data: &[u8]| {
    let Ok(order) = partner::decode(data) else { return };
    let encoded = partner::encode(&order).expect("a decoded order encodes");
    assert_eq!(partner::decode(&encoded).ok().as_ref(), Some(&order), "the order does not round-trip");
    if let Ok((request, channel)) = order.clone().parse() {
        assert!(channel.starts_with("partner:"));
        assert_eq!(request.items.len(), order.items.len());
    }
});
