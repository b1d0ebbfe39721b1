//! docs/asyncapi.yaml describes every event type the domain emits, on its aggregate's channel,
//! and the fields real stored payloads (a seeded history) and CloudEvents envelopes carry.
//!
//! Event types come from the domain's event enums (`domain::event_types()`), as in
//! tests/catalog.rs. The YAML is checked as text, by its block structure (two-space indents).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use eventstore::testing::TestDatabase;

/// `(aggregate type, event type)` for every event the domain can emit.
fn emitted_event_types() -> Vec<(String, String)> {
    domain::event_types()
        .into_iter()
        .map(|(a, t)| (a.to_owned(), t.to_owned()))
        .collect()
}

fn asyncapi() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/asyncapi.yaml"))
        .unwrap()
}

/// The lines of the block that starts with the line `header` (exactly, after indentation),
/// up to the next line indented as much or less.
fn block<'a>(text: &'a str, header: &str) -> Option<Vec<&'a str>> {
    let mut lines = text.lines();
    let start = lines.position(|l| l.trim_end() == header)?;
    let indent = text.lines().nth(start)?.len() - header.trim_start().len();
    Some(
        text.lines()
            .skip(start + 1)
            .take_while(|l| {
                l.trim().is_empty()
                    || l.len() - l.trim_start().len() > indent
                    || l.starts_with(&" ".repeat(indent + 1))
            })
            .collect(),
    )
}

/// Property names and required names of the schema `components.schemas.<name>`.
fn schema_fields(text: &str, name: &str) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    let lines = block(text, &format!("    {name}:"))?;
    let mut properties = BTreeSet::new();
    let mut required = BTreeSet::new();
    let mut section = "";
    for line in lines {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if section == "required" && indent == 6 && trimmed.starts_with("- ") {
            required.insert(trimmed[2..].to_owned());
        } else if indent == 6 {
            section = trimmed.trim_end_matches(':');
        } else if section == "properties" && indent == 8 && trimmed.ends_with(':') {
            properties.insert(trimmed.trim_end_matches(':').to_owned());
        }
    }
    Some((properties, required))
}

#[test]
fn every_event_type_is_described_on_its_channel() {
    let types = emitted_event_types();
    assert!(types.len() >= 30, "found only {types:?}");
    let doc = asyncapi();
    assert!(doc.contains("\nasyncapi: 3.0.0\n"));
    // The block reader itself, on a known schema.
    let required: BTreeSet<String> = ["id", "details", "daily_rate", "branch"]
        .map(String::from)
        .into();
    let mut properties = required.clone();
    properties.insert("in_service_from".to_owned());
    assert_eq!(
        schema_fields(&doc, "CarRegisteredData"),
        Some((properties, required))
    );
    let mut problems = Vec::new();
    for (aggregate, event) in &types {
        let channel = block(&doc, &format!("  {aggregate}:"))
            .unwrap_or_default()
            .join("\n");
        if !channel.contains(&format!("$ref: '#/components/messages/{event}'")) {
            problems.push(format!("{event} is not on channel {aggregate}"));
        }
        let message = block(&doc, &format!("    {event}:"))
            .unwrap_or_default()
            .join("\n");
        if !message.contains(&format!("const: fleetledger.{aggregate}.{event}")) {
            problems.push(format!("message {event} lacks its CloudEvents type"));
        }
        if schema_fields(&doc, &format!("{event}Data")).is_none_or(|(p, _)| p.is_empty()) {
            problems.push(format!("no payload schema {event}Data"));
        }
    }
    assert!(problems.is_empty(), "docs/asyncapi.yaml: {problems:#?}");
}

/// A seeded history's stored payloads have exactly the fields their schema lists (all
/// required), and the CloudEvents the relay makes of them exactly the envelope's attributes.
#[tokio::test]
async fn seeded_payloads_and_envelopes_match_the_schemas() {
    let db = TestDatabase::create().await;
    let seed = Command::new(env!("CARGO_BIN_EXE_fleetledger"))
        .args([
            "seed",
            "--cars",
            "8",
            "--customers",
            "4",
            "--bookings",
            "60",
            "--seed",
            "7",
        ])
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );
    let log = relay::testing::read_log(&db.store()).await;
    assert!(log.len() > 100, "seed wrote only {} events", log.len());

    let doc = asyncapi();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = BTreeSet::new();
    for event in &log {
        *seen.entry(event.event_type.clone()).or_default() += 1;
        let Some((properties, required)) =
            schema_fields(&doc, &format!("{}Data", event.event_type))
        else {
            problems.insert(format!("no schema for {}", event.event_type));
            continue;
        };
        let keys: BTreeSet<String> = event
            .payload
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        // Every key is described, every required one is there (optional ones may be absent).
        if !keys.is_subset(&properties) || !required.is_subset(&keys) {
            problems.insert(format!(
                "{}: payload has {keys:?}, schema lists {properties:?} (required {required:?})",
                event.event_type
            ));
        }
    }
    let (envelope, envelope_required) = schema_fields(&doc, "CloudEvent").unwrap();
    for event in &log {
        let ce = relay::cloudevents::to_cloudevent(event, "urn:fleetledger");
        let keys: BTreeSet<String> = ce.as_object().unwrap().keys().cloned().collect();
        if !keys.is_subset(&envelope) || !envelope_required.is_subset(&keys) {
            problems.insert(format!(
                "envelope has {keys:?}, schema lists {envelope:?} (required {envelope_required:?})"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    eprintln!(
        "checked {} events of {} types: {seen:?}",
        log.len(),
        seen.len()
    );
    assert!(seen.len() >= 10, "the seed covers few types: {seen:?}");
}
