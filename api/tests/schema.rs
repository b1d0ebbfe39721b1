//! The schema as published: docs/schema.graphql is exactly `fleetledger schema`'s output, and
//! every type, field, argument and enum value of the public contract (docs/contract.graphql)
//! exists in it with a compatible type.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use async_graphql::parser::parse_schema;
use async_graphql::parser::types::{
    BaseType, InputValueDefinition, ServiceDocument, Type, TypeKind, TypeSystemDefinition,
};

fn docs(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(file)
}

#[test]
fn docs_schema_graphql_is_the_current_schema() {
    let committed = std::fs::read_to_string(docs("schema.graphql")).expect("docs/schema.graphql");
    let current = api::sdl();
    assert!(
        committed == current,
        "docs/schema.graphql is out of date: run `cargo run -- schema > docs/schema.graphql`"
    );
}

/// A type definition reduced to what compatibility needs.
enum Def {
    Scalar,
    Object(HashMap<String, (Type, HashMap<String, Type>)>),
    Input(HashMap<String, Type>),
    Enum(Vec<String>),
    Other,
}

fn definitions(doc: &ServiceDocument) -> HashMap<String, Def> {
    let mut out = HashMap::new();
    for def in &doc.definitions {
        let TypeSystemDefinition::Type(t) = def else {
            continue;
        };
        let t = &t.node;
        let args = |values: &[async_graphql::Positioned<InputValueDefinition>]| {
            values
                .iter()
                .map(|v| (v.node.name.node.to_string(), v.node.ty.node.clone()))
                .collect::<HashMap<_, _>>()
        };
        let def = match &t.kind {
            TypeKind::Scalar => Def::Scalar,
            TypeKind::Object(o) => Def::Object(
                o.fields
                    .iter()
                    .map(|f| {
                        (
                            f.node.name.node.to_string(),
                            (f.node.ty.node.clone(), args(&f.node.arguments)),
                        )
                    })
                    .collect(),
            ),
            TypeKind::InputObject(i) => Def::Input(args(&i.fields)),
            TypeKind::Enum(e) => Def::Enum(
                e.values
                    .iter()
                    .map(|v| v.node.value.node.to_string())
                    .collect(),
            ),
            _ => Def::Other,
        };
        out.insert(t.name.node.to_string(), def);
    }
    out
}

fn same_base(ours: &Type, theirs: &Type, ok: fn(bool, bool) -> bool) -> bool {
    if !ok(ours.nullable, theirs.nullable) {
        return false;
    }
    match (&ours.base, &theirs.base) {
        (BaseType::Named(a), BaseType::Named(b)) => a == b,
        (BaseType::List(a), BaseType::List(b)) => same_base(a, b, ok),
        _ => false,
    }
}

/// An output may be stricter (non-null where the contract allows null), never looser.
fn output_compatible(ours: &Type, theirs: &Type) -> bool {
    same_base(ours, theirs, |ours_nullable, theirs_nullable| {
        !ours_nullable || theirs_nullable
    })
}

/// An input may be looser (nullable where the contract requires a value), never stricter.
fn input_compatible(ours: &Type, theirs: &Type) -> bool {
    same_base(ours, theirs, |ours_nullable, theirs_nullable| {
        ours_nullable || !theirs_nullable
    })
}

#[test]
fn every_contract_operation_and_type_exists_with_a_compatible_type() {
    let contract_sdl = std::fs::read_to_string(docs("contract.graphql")).expect("contract");
    let contract = definitions(&parse_schema(&contract_sdl).expect("the contract parses"));
    let ours = definitions(&parse_schema(api::sdl()).expect("our SDL parses"));
    let mut problems = Vec::new();
    for (name, def) in &contract {
        let Some(mine) = ours.get(name) else {
            problems.push(format!("type {name} is missing"));
            continue;
        };
        match (def, mine) {
            (Def::Scalar, Def::Scalar) | (Def::Other, _) => {}
            (Def::Object(fields), Def::Object(my_fields)) => {
                for (field, (ty, args)) in fields {
                    let Some((my_ty, my_args)) = my_fields.get(field) else {
                        problems.push(format!("{name}.{field} is missing"));
                        continue;
                    };
                    if !output_compatible(my_ty, ty) {
                        problems.push(format!(
                            "{name}.{field}: {my_ty} is not compatible with {ty}"
                        ));
                    }
                    for (arg, arg_ty) in args {
                        match my_args.get(arg) {
                            None => problems.push(format!("{name}.{field}({arg}) is missing")),
                            Some(my) if !input_compatible(my, arg_ty) => problems.push(format!(
                                "{name}.{field}({arg}): {my} is not compatible with {arg_ty}"
                            )),
                            Some(_) => {}
                        }
                    }
                    for (arg, my) in my_args {
                        if !args.contains_key(arg) && !my.nullable {
                            problems.push(format!(
                                "{name}.{field}({arg}) is an extra required argument"
                            ));
                        }
                    }
                }
            }
            (Def::Input(fields), Def::Input(my_fields)) => {
                for (field, ty) in fields {
                    match my_fields.get(field) {
                        None => problems.push(format!("input {name}.{field} is missing")),
                        Some(my) if !input_compatible(my, ty) => problems.push(format!(
                            "input {name}.{field}: {my} is not compatible with {ty}"
                        )),
                        Some(_) => {}
                    }
                }
            }
            (Def::Enum(values), Def::Enum(my_values)) => {
                for v in values {
                    if !my_values.contains(v) {
                        problems.push(format!("enum {name} lacks {v}"));
                    }
                }
            }
            _ => problems.push(format!("{name} is a different kind of type")),
        }
    }
    assert!(
        problems.is_empty(),
        "contract mismatches:\n{}",
        problems.join("\n")
    );
}

#[test]
fn an_incompatible_type_is_caught() {
    let t = |s: &str| {
        let doc = parse_schema(format!("type Q {{ f: {s} }}")).unwrap();
        let defs = definitions(&doc);
        match defs.get("Q") {
            Some(Def::Object(f)) => f["f"].0.clone(),
            _ => unreachable!(),
        }
    };
    assert!(output_compatible(&t("Int!"), &t("Int")));
    assert!(!output_compatible(&t("Int"), &t("Int!")));
    assert!(!output_compatible(&t("[Int]!"), &t("[Int!]!")));
    assert!(!output_compatible(&t("String!"), &t("Int!")));
    assert!(input_compatible(&t("Int"), &t("Int!")));
    assert!(!input_compatible(&t("Int!"), &t("Int")));
}

/// What GraphQL tools see: graphql-js's standard introspection query succeeds at the default
/// limits, the schema it builds is docs/schema.graphql, and nothing breaks a committed
/// baseline (docs/schema.graphql, docs/contract.graphql) unless it was deprecated first with
/// a removal date that has passed.
#[tokio::test]
async fn graphql_tools_introspect_the_committed_schema_and_nothing_breaks_it() {
    let app = common::TestApp::start().await;
    let out = common::node(
        "schema.mjs",
        vec![
            app.url("/graphql"),
            docs("schema.graphql").display().to_string(),
            docs("contract.graphql").display().to_string(),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["introspection"], "ok", "{report:#}");
    assert_eq!(report["sameAsCommitted"], true, "{report:#}");
    let refused: Vec<&serde_json::Value> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["allowed"] == false)
        .collect();
    assert!(refused.is_empty(), "breaking changes: {refused:#?}");
    app.shutdown().await;
}

/// The classification can fail: a field the served schema lacks is a breaking change, allowed
/// only once deprecated with a removal date that has passed.
#[tokio::test]
async fn a_removed_field_is_breaking_unless_deprecated_with_a_past_removal_date() {
    let app = common::TestApp::start().await;
    let committed = std::fs::read_to_string(docs("schema.graphql")).unwrap();
    let dir = std::env::temp_dir().join(format!("fl-schema-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut outcomes = Vec::new();
    for extra in [
        "oldField: Int",
        "oldField: Int @deprecated(reason: \"Use newField. Removal after 2099-01-01.\")",
        "oldField: Int @deprecated(reason: \"Use newField. Removal after 2020-01-01.\")",
    ] {
        let baseline = dir.join("baseline.graphql");
        std::fs::write(
            &baseline,
            format!("{committed}\nextend type Query {{ {extra} }}\n"),
        )
        .unwrap();
        let out = common::node(
            "schema.mjs",
            vec![
                app.url("/graphql"),
                docs("schema.graphql").display().to_string(),
                baseline.display().to_string(),
            ],
        )
        .await;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let change = report["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["baseline"] == "docs/contract.graphql")
            .cloned()
            .unwrap_or_else(|| panic!("no change found: {report:#}"));
        assert_eq!(change["level"], "BREAKING");
        assert_eq!(change["description"], "Query.oldField was removed.");
        outcomes.push(change["allowed"].as_bool().unwrap());
    }
    assert_eq!(outcomes, [false, false, true]);
    let _ = std::fs::remove_dir_all(&dir);
    app.shutdown().await;
}
