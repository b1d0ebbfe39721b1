//! The event catalog (docs/events.md) names every event type the domain can emit.
//!
//! Event types are read from the `event_type()` implementations in domain/src, whose matches
//! are exhaustive, so a new event variant cannot be added without showing up here.

use std::path::Path;

fn emitted_event_types() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("domain/src");
    let mut types = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let Some(start) = text.find("fn event_type(&self) -> String {") else {
            continue;
        };
        let body = &text[start..];
        let end = body.find(".to_owned()").unwrap_or(body.len());
        for line in body[..end].lines() {
            if let Some((_, literal)) = line.split_once("=> \"") {
                types.push(literal.trim_end_matches([',', '"']).to_owned());
            }
        }
    }
    types.sort();
    types
}

#[test]
fn every_event_type_is_in_the_catalog() {
    let types = emitted_event_types();
    assert!(types.len() >= 30, "found only {types:?}");
    let catalog =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/events.md"))
            .unwrap();
    let missing: Vec<_> = types
        .iter()
        .filter(|t| !catalog.contains(&format!("| `{t}` |")))
        .collect();
    assert!(missing.is_empty(), "docs/events.md lacks {missing:?}");
}
