//! `POST /v1/orders` bodies: JSON into the intake's domain request. Never panics; whatever parses
//! prints back to a body that parses to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_schemas::order_request::PlaceOrderBody;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<PlaceOrderBody>(data) else { return };
    let Ok(request) = body.parse() else { return };
    let printed = serde_json::to_vec(&request.to_body()).expect("a parsed request serializes");
    let again: PlaceOrderBody = serde_json::from_slice(&printed).expect("a printed body is valid JSON");
    assert_eq!(again.parse().as_ref(), Ok(&request), "the canonical body does not round-trip");
});
