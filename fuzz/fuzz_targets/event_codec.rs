//! Bus records: the event envelope, and the stock-alert, stock-command and product-update records, decoded from
//! arbitrary bytes. Never panics; a decoded envelope encodes back to bytes that decode to the same one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_schemas::{codec, product_events, stock_alert, stock_command};

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = codec::decode(data) {
        let encoded = codec::encode(&envelope).expect("a decoded envelope encodes");
        let again = codec::decode(&encoded).expect("an encoded envelope decodes");
        assert_eq!(again, envelope, "the envelope does not round-trip");
    }
    if let Ok(alert) = stock_alert::decode(data) {
        let encoded = stock_alert::encode(&alert).expect("a decoded alert encodes");
        assert_eq!(stock_alert::decode(&encoded).ok().as_ref(), Some(&alert), "the alert does not round-trip");
    }
    if let Ok(command) = stock_command::decode(data) {
        let encoded = stock_command::encode(&command).expect("a decoded stock command encodes");
        assert_eq!(stock_command::decode(&encoded).ok().as_ref(), Some(&command), "the command does not round-trip");
    }
    let _ = product_events::decode(data);
});
