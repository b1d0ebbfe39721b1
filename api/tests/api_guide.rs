//! Every GraphQL example in docs/api.md runs against a real server, in the order written, as
//! the role its code block names (` ```graphql as=admin `), with the variables of the
//! ` ```json variables ` block after it. A block with `expect=CODE` must fail with that code;
//! every other block must succeed. `"<field.id>"` (or `"<field.refreshToken>"`) in variables is the `id` the example with
//! root field `field` returned; `as=customer` uses the token of the last `register` or `login`
//! example. Subscriptions run over WebSocket and must deliver their first message.

mod common;

use std::collections::HashMap;

use serde_json::{Value, json};

struct Example {
    line: usize,
    query: String,
    role: String,
    expect: Option<String>,
    subscription: bool,
    variables: Value,
}

fn examples(text: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or("");
        let attrs: Vec<&str> = words.collect();
        let mut body = String::new();
        for (_, l) in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        match lang {
            "graphql" => {
                let attr = |key: &str| {
                    attrs
                        .iter()
                        .find_map(|a| a.strip_prefix(&format!("{key}=")))
                        .map(str::to_owned)
                };
                out.push(Example {
                    line: n + 1,
                    query: body,
                    role: attr("as").unwrap_or_else(|| {
                        panic!("docs/api.md:{}: a graphql block needs as=ROLE", n + 1)
                    }),
                    expect: attr("expect"),
                    subscription: attrs.contains(&"subscription"),
                    variables: json!({}),
                });
            }
            "json" if attrs.contains(&"variables") => {
                let example = out
                    .last_mut()
                    .unwrap_or_else(|| panic!("docs/api.md:{}: variables before any query", n + 1));
                example.variables = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("docs/api.md:{}: variables: {e}", n + 1));
            }
            _ => {}
        }
    }
    out
}

/// Replace `"<root.id>"` strings with captured ids.
fn fill(value: &Value, ids: &HashMap<String, Value>) -> Value {
    match value {
        Value::String(s) if s.starts_with('<') && s.ends_with('>') => ids
            .get(&s[1..s.len() - 1])
            .cloned()
            .unwrap_or_else(|| panic!("no earlier example returned {s}")),
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, ids)).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), fill(v, ids))).collect())
        }
        other => other.clone(),
    }
}

#[tokio::test]
async fn every_example_in_the_api_guide_runs() {
    let guide = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md"),
    )
    .unwrap();
    let examples = examples(&guide);
    assert!(examples.len() >= 10, "found {} examples", examples.len());
    let app = common::TestApp::start().await;
    let mut ids: HashMap<String, Value> = HashMap::new();
    let mut customer: Option<String> = None;
    for example in &examples {
        let token = match example.role.as_str() {
            "anonymous" => None,
            "admin" => Some(app.admin_token.clone()),
            "customer" => Some(customer.clone().unwrap_or_else(|| {
                panic!("docs/api.md:{}: as=customer before any login", example.line)
            })),
            other => panic!("docs/api.md:{}: unknown role {other}", example.line),
        };
        let variables = fill(&example.variables, &ids);
        if example.subscription {
            let mut ws = common::ws_connect(&app, token.as_deref().unwrap_or("")).await;
            common::ws_subscribe(&mut ws, "1", &example.query, variables).await;
            let first = common::ws_next(&mut ws).await;
            assert_eq!(
                first["type"], "next",
                "docs/api.md:{}: {first:#}",
                example.line
            );
            assert!(
                first["payload"].get("errors").is_none(),
                "docs/api.md:{}: {first:#}",
                example.line
            );
            continue;
        }
        let (status, body) = app.post(token.as_deref(), &example.query, variables).await;
        match &example.expect {
            Some(code) => {
                assert_eq!(
                    body["errors"][0]["extensions"]["code"], *code,
                    "docs/api.md:{}: {body:#}",
                    example.line
                );
            }
            None => {
                assert!(
                    status == 200 && body.get("errors").is_none(),
                    "docs/api.md:{}: {status} {body:#}",
                    example.line
                );
                for (root, value) in body["data"].as_object().unwrap() {
                    for key in ["id", "refreshToken"] {
                        if let Some(found) = value.get(key) {
                            ids.insert(format!("{root}.{key}"), found.clone());
                        }
                    }
                    if let Some(token) = value.get("token").and_then(Value::as_str) {
                        customer = Some(token.to_owned());
                    }
                }
            }
        }
    }
    app.shutdown().await;
}
