//! The GraphQL schema: the contract's types, queries, mutations and subscriptions, apart from
//! any transport (the axum wiring is in `http`).

mod activity;
mod loaders;
mod mutation;
mod query;
mod rows;
mod scalars;
mod subscription;
pub mod types;

use async_graphql::{Context, Schema};

pub use mutation::Mutation;
pub use query::Query;
pub use scalars::Decimal;
pub use subscription::Subscription;

use crate::error::{ApiResult, AppError};
use crate::services::Services;

/// The executable schema.
pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// Limits on what one request may ask for.
#[derive(Clone, Copy, Debug)]
pub struct QueryLimits {
    /// Deepest nesting of selections once fragments are expanded (introspection excluded).
    pub max_depth: usize,
    /// Most fields a document may select once its fragments are expanded.
    pub max_fields: usize,
    /// Most root fields one operation may ask for, aliases included.
    pub max_root_fields: usize,
    /// Highest complexity (one per field, list fields weighted by their page size).
    pub max_complexity: usize,
    /// Largest page any connection or list argument may ask for.
    pub max_page_size: i32,
    /// Longest query document, in bytes (checked before parsing).
    pub max_document_bytes: usize,
    /// Most directives a document may hold.
    pub max_directives: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_depth: 12,
            max_fields: 2_000,
            max_root_fields: 20,
            max_complexity: 5_000,
            max_page_size: 100,
            max_document_bytes: 32 * 1024,
            max_directives: 50,
        }
    }
}

/// The schema with its services and limits.
pub fn build(services: Services, limits: QueryLimits) -> AppSchema {
    build_with(services, limits, None)
}

/// [`build`], with the per-account limit on login attempts.
pub fn build_with(
    services: Services,
    limits: QueryLimits,
    login: Option<crate::ratelimit::LoginGuard>,
) -> AppSchema {
    let mut builder = Schema::build(Query, Mutation, Subscription);
    if let Some(login) = login {
        builder = builder.data(login);
    }
    loaders::register(builder, services.store.pool())
        .data(services)
        .data(limits)
        // Shape first (right after parsing, before validation expands fragments), then the
        // weighted complexity during validation.
        .extension(crate::guard::ShapeGuard(crate::guard::ShapeLimits {
            max_fields: limits.max_fields,
            max_depth: limits.max_depth,
            max_root_fields: limits.max_root_fields,
            max_document_bytes: limits.max_document_bytes,
            max_directives: limits.max_directives,
        }))
        .extension(crate::ratelimit::OperationQuota)
        .extension(crate::websocket::OpenOperationsCap)
        .extension(crate::policy::PolicyGuard)
        .extension(crate::read_side::ReadSideNotes)
        .extension(crate::read_side::ReadModelGuard)
        .data(crate::read_side::FailedReadModels::default())
        .limit_complexity(limits.max_complexity)
        .finish()
}

/// The schema's SDL, as `fleetledger schema` prints it and docs/schema.graphql holds it.
pub fn sdl() -> String {
    Schema::build(Query, Mutation, Subscription).finish().sdl()
}

/// Every field of every object type of the schema, as `(Type, field)`: what tests check that
/// the schema-wide tables (access policy, read models served) cover.
#[cfg(test)]
pub(crate) fn object_fields() -> std::collections::BTreeSet<(String, String)> {
    use async_graphql::parser::types::{TypeKind, TypeSystemDefinition};
    let doc = async_graphql::parser::parse_schema(sdl()).expect("the schema's own SDL parses");
    let mut out = std::collections::BTreeSet::new();
    for def in doc.definitions {
        if let TypeSystemDefinition::Type(t) = def
            && let TypeKind::Object(object) = &t.node.kind
        {
            for field in &object.fields {
                out.insert((
                    t.node.name.node.to_string(),
                    field.node.name.node.to_string(),
                ));
            }
        }
    }
    out
}

pub(crate) fn services<'a>(ctx: &'a Context<'_>) -> ApiResult<&'a Services> {
    ctx.data::<Services>()
        .map_err(|e| AppError::internal(format!("no services in the schema: {}", e.message)))
}

/// A page size from a `first` argument (`default` when null): 1..=the cap, else
/// BAD_USER_INPUT naming `first`.
pub(crate) fn page_size(ctx: &Context<'_>, first: Option<i32>, default: i32) -> ApiResult<i64> {
    let first = first.unwrap_or(default);
    let cap = ctx
        .data::<QueryLimits>()
        .map(|l| l.max_page_size)
        .unwrap_or(QueryLimits::default().max_page_size);
    if first < 1 || first > cap {
        return Err(AppError::bad_input(
            "first",
            format!("must be between 1 and {cap}"),
        ));
    }
    Ok(i64::from(first))
}

/// The complexity of a list field: its page size times the cost of one item, so a request
/// for many items of a deep selection is refused before it runs. An oversized `first` counts
/// as 1000: the resolver refuses it anyway, naming the argument.
pub(crate) fn weighted(first: Option<i32>, default: i32, child_complexity: usize) -> usize {
    usize::try_from(first.unwrap_or(default).clamp(1, 1_000))
        .unwrap_or(1)
        .saturating_mul(child_complexity)
}

/// An offset cursor (`"o:<n>"`): where the next page starts.
pub(crate) fn offset_from(after: Option<&str>) -> ApiResult<i64> {
    match after {
        None => Ok(0),
        Some(cursor) => cursor
            .strip_prefix("o:")
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .map(|n| n + 1)
            .ok_or_else(|| AppError::bad_input("after", "not a cursor this API returned")),
    }
}

pub(crate) fn offset_cursor(offset: i64) -> String {
    format!("o:{offset}")
}

/// A branch code as stored: codes are case-insensitive on input ("ber", " Ber ") and kept in
/// upper case.
pub(crate) fn branch_code(value: &str) -> String {
    value.trim().to_uppercase()
}

/// A bounded free-text argument.
pub(crate) fn text_arg(field: &str, value: &str, max_chars: usize) -> ApiResult<String> {
    let value = value.trim();
    if value.chars().count() > max_chars {
        return Err(AppError::bad_input(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(AppError::bad_input(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}
