//! GraphQL over HTTP: the JSON request body (`query`, `variables`, `operationName`) and the query
//! document, parsed as the server parses them. Never panics; a query that parses once parses again
//! from the request it was wrapped in.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<async_graphql::Request>(data) {
        let _ = async_graphql::parser::parse_query(&request.query);
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    if async_graphql::parser::parse_query(text).is_ok() {
        let body = serde_json::json!({ "query": text });
        let request: async_graphql::Request = serde_json::from_value(body).expect("a request body deserializes");
        assert!(async_graphql::parser::parse_query(&request.query).is_ok(), "the same query failed to parse");
    }
});
