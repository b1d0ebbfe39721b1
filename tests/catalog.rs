//! The event catalog (docs/events.md) names every event type the domain can emit.
//!
//! Event types come from the domain's event enums (`domain::event_types()`, derived from their
//! variants), so a new event variant cannot be added without showing up here.

use std::path::Path;

fn emitted_event_types() -> Vec<String> {
    domain::event_types()
        .into_iter()
        .map(|(_, t)| t.to_owned())
        .collect()
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
