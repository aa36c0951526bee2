//! The catalog through the schema, on the embedded adapters with the catalog projector running: staff
//! writes (create, partial update, archive, optimistic concurrency), browsing (filter, search, sort,
//! Relay pagination both ways) and the rules on archived products.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use async_graphql::{Request, Variables};
use orderflow_graphql::{ApiState, OrderflowSchema, schema};
use orderflow_platform::Backends;
use serde_json::{Value, json};
use tempfile::TempDir;

mod support;

struct Api {
    _dir: TempDir,
    backends: Backends,
    state: ApiState,
    schema: OrderflowSchema,
    _processors: tokio_util::sync::DropGuard,
}

fn api() -> Result<Api> {
    let e = support::embedded(true)?;
    Ok(Api {
        _dir: e.dir,
        schema: schema(e.state.clone()),
        state: e.state,
        backends: e.backends,
        _processors: e.processors,
    })
}

impl Api {
    async fn run(&self, query: &str, variables: Value, staff: bool) -> Result<Value> {
        let request = Request::new(query).variables(Variables::from_json(variables)).data(support::caller(staff));
        Ok(serde_json::to_value(self.schema.execute(request).await)?)
    }

    async fn ok(&self, query: &str, variables: Value, staff: bool) -> Result<Value> {
        let resp = self.run(query, variables, staff).await?;
        if resp.get("errors").is_some() {
            return Err(anyhow!("unexpected errors: {resp}"));
        }
        Ok(resp["data"].clone())
    }

    /// Waits until reads show every product at its written version.
    async fn settle(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        'wait: loop {
            for (_, p) in self.backends.stores.catalog.products(None, 1000).await?.items {
                let read = self.state.catalog.product(&p.sku).await?;
                if read.is_none_or(|r| r.version < p.version) {
                    anyhow::ensure!(tokio::time::Instant::now() < deadline, "read model behind on {}", p.sku);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue 'wait;
                }
            }
            return Ok(());
        }
    }

    async fn create(&self, input: Value) -> Result<Value> {
        let data = self
            .ok(
                "mutation($i: CreateProductInput!) { createProduct(input: $i) { sku version category archived } }",
                json!({"i": input}),
                true,
            )
            .await?;
        Ok(data["createProduct"].clone())
    }

    /// The SKUs of one `products` page and its page info.
    async fn page(&self, args: &str, staff: bool) -> Result<(Vec<String>, Value, Vec<String>)> {
        let q = format!(
            "{{ products{args} {{ edges {{ cursor node {{ sku }} }} pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }} }} }}"
        );
        let data = self.ok(&q, json!({}), staff).await?;
        let edges = data["products"]["edges"].as_array().context("edges")?;
        let skus = edges.iter().filter_map(|e| e["node"]["sku"].as_str().map(str::to_owned)).collect();
        let cursors = edges.iter().filter_map(|e| e["cursor"].as_str().map(str::to_owned)).collect();
        Ok((skus, data["products"]["pageInfo"].clone(), cursors))
    }
}

fn code(resp: &Value) -> &str {
    resp["errors"][0]["extensions"]["code"].as_str().unwrap_or("<no code>")
}

async fn shop() -> Result<Api> {
    let api = api()?;
    for (sku, name, price, category) in [
        ("A-1", "Flat white", "3.50", "drinks"),
        ("A-2", "Iced latte", "4.20", "drinks"),
        ("B-1", "Butter croissant", "2.75", "bakery"),
        ("B-2", "Pain au chocolat", "3.10", "Bakery"),
        ("C-1", "White mug", "25.00", "merch"),
        ("C-2", "Tote bag", "12.00", "merch"),
    ] {
        api.create(json!({"sku": sku, "name": name, "price": price, "category": category})).await?;
    }
    api.settle().await?;
    Ok(api)
}

#[tokio::test]
async fn products_filter_search_and_sort() -> Result<()> {
    let api = shop().await?;
    assert_eq!(api.page("", false).await?.0, ["A-1", "A-2", "B-1", "B-2", "C-1", "C-2"]);
    assert_eq!(api.page("(filter: {category: \"BAKERY\"})", false).await?.0, ["B-1", "B-2"]);
    assert_eq!(
        api.page("(filter: {minPrice: \"3.10\", maxPrice: \"12\"})", false).await?.0,
        ["A-1", "A-2", "B-2", "C-2"],
        "the bounds are inclusive"
    );
    assert_eq!(api.page("(filter: {search: \"WHITE\"})", false).await?.0, ["A-1", "C-1"]);
    assert_eq!(api.page("(filter: {search: \"white mug\"})", false).await?.0, ["C-1"], "every word must match");
    assert_eq!(
        api.page("(filter: {category: \"drinks\", search: \"latte\"})", false).await?.0,
        ["A-2"],
        "filters combine"
    );
    assert_eq!(
        api.page("(sortBy: {field: PRICE, direction: DESC})", false).await?.0,
        ["C-1", "C-2", "A-2", "A-1", "B-2", "B-1"]
    );
    assert_eq!(api.page("(sortBy: {field: NAME})", false).await?.0, ["B-1", "A-1", "A-2", "B-2", "C-2", "C-1"]);
    assert_eq!(api.page("(first: 2, sortBy: {field: SKU, direction: DESC})", false).await?.0, ["C-2", "C-1"]);

    for (args, field) in [
        ("(filter: {minPrice: \"5\", maxPrice: \"4\"})", "filter.maxPrice"),
        ("(filter: {category: \"not a slug\"})", "filter.category"),
        ("(first: 2, last: 2)", "last"),
        ("(last: 0)", "last"),
    ] {
        let resp = api.run(&format!("{{ products{args} {{ edges {{ cursor }} }} }}"), json!({}), false).await?;
        assert_eq!(code(&resp), "invalid_input", "{args}: {resp}");
        assert_eq!(resp["errors"][0]["extensions"]["field"], field, "{resp}");
    }
    Ok(())
}

#[tokio::test]
async fn products_paginate_forwards_and_backwards_in_any_sort() -> Result<()> {
    let api = shop().await?;
    let sort = "sortBy: {field: PRICE, direction: DESC}";
    let all = ["C-1", "C-2", "A-2", "A-1", "B-2", "B-1"];
    let mut seen = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let (skus, info, _) = api.page(&format!("(first: 4, {sort}{after})"), false).await?;
        assert_eq!(info["hasPreviousPage"], json!(pages > 0), "{info}");
        seen.extend(skus);
        pages += 1;
        if info["hasNextPage"] != true {
            break;
        }
        after = format!(", after: {}", info["endCursor"]);
    }
    assert_eq!(pages, 2);
    assert_eq!(seen, all);

    // Backwards from the end, then the page before a cursor.
    let (skus, info, cursors) = api.page(&format!("(last: 2, {sort})"), false).await?;
    assert_eq!(skus, ["B-2", "B-1"]);
    assert_eq!((info["hasNextPage"].clone(), info["hasPreviousPage"].clone()), (json!(false), json!(true)));
    let (skus, _, _) = api.page(&format!("(last: 3, {sort}, before: \"{}\")", cursors[0]), false).await?;
    assert_eq!(skus, ["C-2", "A-2", "A-1"]);

    // A product changed between two pages does not shift the next page: the cursor is a position.
    let (first_page, info, _) = api.page(&format!("(first: 2, {sort})"), false).await?;
    assert_eq!(first_page, ["C-1", "C-2"]);
    api.ok("mutation { updateProduct(sku: \"C-1\", input: {price: \"1.00\"}) { version } }", json!({}), true).await?;
    api.settle().await?;
    let (next, _, _) = api.page(&format!("(first: 2, {sort}, after: {})", info["endCursor"]), false).await?;
    assert_eq!(next, ["A-2", "A-1"]);

    // A cursor belongs to its sort.
    let resp = api
        .run(
            &format!("{{ products(sortBy: {{field: NAME}}, after: {}) {{ edges {{ cursor }} }} }}", info["endCursor"]),
            json!({}),
            false,
        )
        .await?;
    assert_eq!(code(&resp), "invalid_cursor", "{resp}");
    Ok(())
}

#[tokio::test]
async fn staff_update_category_attributes_and_versions() -> Result<()> {
    let api = shop().await?;
    let q = "mutation($i: UpdateProductInput!) { updateProduct(sku: \"A-1\", input: $i) { \
             name price category version attributes { key value } } }";
    let input = json!({"category": "Coffee", "attributes": [{"key": "size", "value": "8oz"}, {"key": "milk", "value": "oat"}], "expectedVersion": 1});
    let data = api.ok(q, json!({"i": input}), true).await?;
    assert_eq!(
        data["updateProduct"],
        json!({"name": "Flat white", "price": "3.50", "category": "coffee", "version": 2,
               "attributes": [{"key": "milk", "value": "oat"}, {"key": "size", "value": "8oz"}]})
    );
    // The same edit again, from the copy at version 1: another change came first.
    let stale = api.run(q, json!({"i": {"name": "Espresso", "expectedVersion": 1}}), true).await?;
    assert_eq!(code(&stale), "version_conflict", "{stale}");
    assert_eq!(stale["errors"][0]["extensions"]["currentVersion"], 2);
    // Changing nothing is a safe retry: no new version.
    let same = api.ok(q, json!({"i": {"category": "coffee"}}), true).await?;
    assert_eq!(same["updateProduct"]["version"], 2);

    for (input, field) in [
        (json!({"attributes": [{"key": "k", "value": "1"}, {"key": "k", "value": "2"}]}), "input.attributes"),
        (json!({"attributes": [{"key": "no spaces", "value": "1"}]}), "input.attributes"),
        (json!({"category": ""}), "input.category"),
        (json!({"expectedVersion": -1}), "input.expectedVersion"),
        (json!({"name": "  "}), "input.name"),
    ] {
        let resp = api.run(q, json!({"i": input}), true).await?;
        assert_eq!(code(&resp), "invalid_input", "{input}: {resp}");
        assert_eq!(resp["errors"][0]["extensions"]["field"], field, "{resp}");
    }

    api.settle().await?;
    let read =
        api.ok("{ product(sku: \"A-1\") { category version attributes { key value } } }", json!({}), false).await?;
    assert_eq!(read["product"]["version"], 2);
    assert_eq!(read["product"]["category"], "coffee");
    assert_eq!(api.page("(filter: {category: \"coffee\"})", false).await?.0, ["A-1"]);
    assert_eq!(api.page("(filter: {category: \"drinks\"})", false).await?.0, ["A-2"], "it left its old category");
    Ok(())
}

#[tokio::test]
async fn archived_products_are_hidden_and_cannot_be_ordered() -> Result<()> {
    let api = shop().await?;
    let archived = api.ok("mutation { archiveProduct(sku: \"C-1\") { archived version } }", json!({}), true).await?;
    assert_eq!(archived["archiveProduct"], json!({"archived": true, "version": 2}));
    let guest = api.run("mutation { archiveProduct(sku: \"C-2\") { archived } }", json!({}), false).await?;
    assert_eq!(code(&guest), "unauthorized");
    api.settle().await?;

    assert_eq!(api.page("(filter: {category: \"merch\"})", false).await?.0, ["C-2"]);
    let with = "(filter: {category: \"merch\", includeArchived: true})";
    assert_eq!(api.page(with, true).await?.0, ["C-1", "C-2"], "staff can list archived products");
    let resp = api.run(&format!("{{ products{with} {{ edges {{ cursor }} }} }}"), json!({}), false).await?;
    assert_eq!(code(&resp), "unauthorized", "{resp}");
    let read = api.ok("{ product(sku: \"C-1\") { sku archived } }", json!({}), false).await?;
    assert_eq!(read["product"], json!({"sku": "C-1", "archived": true}), "the product page still answers");

    let place = "mutation($i: PlaceOrderInput!) { placeOrder(input: $i) { order { id } } }";
    let order = json!({"i": {"userId": "u1", "items": [{"sku": "C-1", "quantity": 1}]}});
    let refused = api.run(place, order.clone(), false).await?;
    assert_eq!(code(&refused), "product_archived", "{refused}");

    let again = api.ok("mutation { archiveProduct(sku: \"C-1\") { version } }", json!({}), true).await?;
    assert_eq!(again["archiveProduct"]["version"], 2, "archiving twice changes nothing");
    api.ok("mutation { updateProduct(sku: \"C-1\", input: {archived: false}) { archived } }", json!({}), true).await?;
    api.settle().await?;
    assert_eq!(api.page("(filter: {category: \"merch\"})", false).await?.0, ["C-1", "C-2"]);
    api.ok(place, order, false).await?;
    Ok(())
}

#[tokio::test]
async fn a_retried_create_returns_the_product_and_adds_stock_once() -> Result<()> {
    let api = api()?;
    let input = json!({"sku": "S-1", "name": "Mug", "price": "5.00", "stock": 4, "category": "merch"});
    let first = api.create(input.clone()).await?;
    assert_eq!(first, json!({"sku": "S-1", "version": 1, "category": "merch", "archived": false}));
    assert_eq!(api.create(input.clone()).await?, first);
    let mut other = input;
    other["name"] = json!("Cup");
    let resp = api
        .run("mutation($i: CreateProductInput!) { createProduct(input: $i) { sku } }", json!({"i": other}), true)
        .await?;
    assert_eq!(code(&resp), "sku_exists", "{resp}");
    api.settle().await?;
    let read = api.ok("{ product(sku: \"S-1\") { name stock { available } } }", json!({}), true).await?;
    assert_eq!(read["product"], json!({"name": "Mug", "stock": {"available": 4}}));
    Ok(())
}
