//! The request's shape, bounded before anything expensive runs.
//!
//! GraphQL servers walk a document with its fragments expanded (async-graphql's recursion
//! check right after parsing, then validation): a few hundred bytes of fragments that each
//! spread the one below twice expand to millions of fields, and the server pays for them before
//! any depth or complexity limit looks. This guard runs first: it parses the document (linear
//! in the bytes received, which the body limit bounds) and measures it with every fragment
//! counted once (memoised), so its own cost is linear too:
//! - fields after expansion, in all operations together;
//! - nesting depth after expansion, where introspection (`__schema`, `__type`) does not count:
//!   the standard introspection query every GraphQL tool sends nests about 13 deep;
//! - fragments that spread themselves, which validation would reject only after expanding.
//!
//! A document over a bound is refused with `QUERY_TOO_COMPLEX` (`extensions.limit` says which
//! bound, `extensions.max` its value); a NUL character or a fragment that spreads itself or does
//! not exist is `BAD_USER_INPUT`. Nothing else of the request runs. The same guard serves HTTP and WebSocket requests,
//! since both go through the schema.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest,
};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ErrorExtensionValues, Positioned, Request, ServerError, ServerResult};

/// Bounds on a document's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapeLimits {
    /// Fields after expanding every fragment, all operations together.
    pub max_fields: usize,
    /// Deepest nesting of fields after expansion, introspection excluded.
    pub max_depth: usize,
    /// Root fields of one operation, aliases included (each may be a whole request's work).
    pub max_root_fields: usize,
    /// Bytes of the document's text, checked before it is parsed (parsing costs about a
    /// third of a millisecond per KiB here).
    pub max_document_bytes: usize,
    /// Directives anywhere in the document (each is validated, and repeated ones each get
    /// an error).
    pub max_directives: usize,
}

/// Root fields that check a password: one per document, so aliases cannot multiply guesses.
const CREDENTIAL_FIELDS: [&str; 2] = ["login", "register"];

/// The measured shape of a document.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    pub fields: usize,
    pub depth: usize,
    /// Fields directly in the selection set (fragments on it expanded): for an operation,
    /// its root fields.
    pub width: usize,
}

/// Why a document was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    TooManyFields { fields: usize, max: usize },
    TooDeep { depth: usize, max: usize },
    TooWide { fields: usize, max: usize },
    DocumentTooLarge { bytes: usize, max: usize },
    TooManyDirectives { directives: usize, max: usize },
    CredentialsTwice,
    NulCharacter,
    FragmentCycle(String),
    UnknownFragment(String),
}

impl Refusal {
    /// The bound's value, for limits.
    fn max(&self) -> Option<usize> {
        match self {
            Self::TooManyFields { max, .. }
            | Self::TooDeep { max, .. }
            | Self::TooWide { max, .. }
            | Self::DocumentTooLarge { max, .. }
            | Self::TooManyDirectives { max, .. } => Some(*max),
            Self::CredentialsTwice => Some(1),
            _ => None,
        }
    }

    fn code(&self) -> crate::error::Code {
        if let Self::DocumentTooLarge { .. } = self {
            crate::error::Code::RequestTooLarge
        } else if self.max().is_some() {
            crate::error::Code::QueryTooComplex
        } else {
            crate::error::Code::BadUserInput
        }
    }

    fn limit(&self) -> &'static str {
        match self {
            Self::TooManyFields { .. } => "fields",
            Self::TooDeep { .. } => "depth",
            Self::TooWide { .. } => "rootFields",
            Self::DocumentTooLarge { .. } => "documentBytes",
            Self::TooManyDirectives { .. } => "directives",
            Self::CredentialsTwice => "credentials",
            Self::NulCharacter => "characters",
            Self::FragmentCycle(_) | Self::UnknownFragment(_) => "fragments",
        }
    }

    fn message(&self) -> String {
        match self {
            Self::TooManyFields { fields, max } => format!(
                "the query selects {fields} fields once its fragments are expanded; at most {max} \
                 are allowed"
            ),
            Self::TooDeep { depth, max } => {
                format!("the query nests {depth} levels deep; at most {max} are allowed")
            }
            Self::TooWide { fields, max } => format!(
                "an operation asks for {fields} root fields (aliases included); at most {max} \
                 are allowed"
            ),
            Self::DocumentTooLarge { bytes, max } => {
                format!("the query document is {bytes} bytes long; at most {max} are allowed")
            }
            Self::TooManyDirectives { directives, max } => {
                format!("the query holds {directives} directives; at most {max} are allowed")
            }
            Self::CredentialsTwice => {
                "a request may log in or register once: send one login or register field".into()
            }
            Self::NulCharacter => "text may not contain the NUL character (U+0000)".into(),
            Self::FragmentCycle(name) => format!("fragment {name} spreads itself"),
            Self::UnknownFragment(name) => format!("unknown fragment {name}"),
        }
    }
}

/// Measure `doc` with each fragment measured once.
pub fn measure(doc: &ExecutableDocument) -> Result<Shape, Refusal> {
    let mut memo = Memo {
        doc,
        done: HashMap::new(),
        visiting: Vec::new(),
    };
    let mut total = Shape::default();
    for (_, op) in doc.operations.iter() {
        let shape = memo.selection_set(&op.node.selection_set)?;
        total.fields = total.fields.saturating_add(shape.fields);
        total.depth = total.depth.max(shape.depth);
        total.width = total.width.max(shape.width);
    }
    Ok(total)
}

/// Check `doc` against `limits`.
pub fn check(doc: &ExecutableDocument, limits: &ShapeLimits) -> Result<Shape, Refusal> {
    let directives = count_directives(doc);
    if directives > limits.max_directives {
        return Err(Refusal::TooManyDirectives {
            directives,
            max: limits.max_directives,
        });
    }
    let shape = measure(doc)?;
    if shape.fields > limits.max_fields {
        return Err(Refusal::TooManyFields {
            fields: shape.fields,
            max: limits.max_fields,
        });
    }
    if shape.depth > limits.max_depth {
        return Err(Refusal::TooDeep {
            depth: shape.depth,
            max: limits.max_depth,
        });
    }
    if shape.width > limits.max_root_fields {
        return Err(Refusal::TooWide {
            fields: shape.width,
            max: limits.max_root_fields,
        });
    }
    // Bounded by the checks above: the root selections are walked with fragments expanded.
    let credentials: usize = doc
        .operations
        .iter()
        .map(|(_, op)| root_fields_named(doc, &op.node.selection_set, &CREDENTIAL_FIELDS, 0))
        .sum();
    if credentials > 1 {
        return Err(Refusal::CredentialsTwice);
    }
    Ok(shape)
}

/// Directives written in the document (fragments counted once, where they are defined).
fn count_directives(doc: &ExecutableDocument) -> usize {
    fn set(s: &SelectionSet) -> usize {
        s.items
            .iter()
            .map(|item| match &item.node {
                Selection::Field(f) => f.node.directives.len() + set(&f.node.selection_set.node),
                Selection::InlineFragment(i) => {
                    i.node.directives.len() + set(&i.node.selection_set.node)
                }
                Selection::FragmentSpread(s) => s.node.directives.len(),
            })
            .sum()
    }
    let operations: usize = doc
        .operations
        .iter()
        .map(|(_, op)| {
            op.node.directives.len()
                + op.node
                    .variable_definitions
                    .iter()
                    .map(|v| v.node.directives.len())
                    .sum::<usize>()
                + set(&op.node.selection_set.node)
        })
        .sum();
    let fragments: usize = doc
        .fragments
        .values()
        .map(|f| f.node.directives.len() + set(&f.node.selection_set.node))
        .sum();
    operations + fragments
}

/// How many fields directly in `set` (fragments expanded) have one of `names`.
fn root_fields_named(
    doc: &ExecutableDocument,
    set: &Positioned<SelectionSet>,
    names: &[&str],
    nesting: usize,
) -> usize {
    if nesting > 64 {
        return 0;
    }
    set.node
        .items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(f) => usize::from(names.contains(&f.node.name.node.as_str())),
            Selection::InlineFragment(i) => {
                root_fields_named(doc, &i.node.selection_set, names, nesting + 1)
            }
            Selection::FragmentSpread(spread) => doc
                .fragments
                .get(&spread.node.fragment_name.node)
                .map_or(0, |f| {
                    root_fields_named(doc, &f.node.selection_set, names, nesting + 1)
                }),
        })
        .sum()
}

/// Whether the request's text or variables hold a NUL character, which no stored text can:
/// refused as input rather than failing in the database.
fn has_nul(request: &Request) -> bool {
    fn value(v: &async_graphql::Value) -> bool {
        match v {
            async_graphql::Value::String(s) => s.contains('\0'),
            async_graphql::Value::List(items) => items.iter().any(value),
            async_graphql::Value::Object(map) => map
                .iter()
                .any(|(k, v)| k.as_str().contains('\0') || value(v)),
            _ => false,
        }
    }
    // In the document a NUL can only be written as an escape inside a string.
    let text = request.query.to_ascii_lowercase();
    text.contains('\0')
        || text.contains("\\u0000")
        || text.contains("\\u{0}")
        || request.variables.iter().any(|(_, v)| value(v))
}

struct Memo<'a> {
    doc: &'a ExecutableDocument,
    done: HashMap<&'a str, Shape>,
    visiting: Vec<&'a str>,
}

impl<'a> Memo<'a> {
    fn selection_set(&mut self, set: &'a Positioned<SelectionSet>) -> Result<Shape, Refusal> {
        let mut shape = Shape::default();
        for item in &set.node.items {
            let inner = match &item.node {
                Selection::Field(field) => {
                    let name = field.node.name.node.as_str();
                    let below = self.selection_set(&field.node.selection_set)?;
                    // Introspection's own nesting does not count towards the depth.
                    let depth = if name == "__schema" || name == "__type" {
                        0
                    } else {
                        below.depth.saturating_add(1)
                    };
                    Shape {
                        fields: below.fields.saturating_add(1),
                        depth,
                        width: 1,
                    }
                }
                Selection::InlineFragment(inline) => {
                    self.selection_set(&inline.node.selection_set)?
                }
                Selection::FragmentSpread(spread) => {
                    self.fragment(spread.node.fragment_name.node.as_str())?
                }
            };
            shape.fields = shape.fields.saturating_add(inner.fields);
            shape.depth = shape.depth.max(inner.depth);
            shape.width = shape.width.saturating_add(inner.width);
        }
        Ok(shape)
    }

    fn fragment(&mut self, name: &'a str) -> Result<Shape, Refusal> {
        if let Some(shape) = self.done.get(name) {
            return Ok(*shape);
        }
        if self.visiting.contains(&name) {
            return Err(Refusal::FragmentCycle(name.to_owned()));
        }
        let Some((key, fragment)) = self.doc.fragments.get_key_value(name) else {
            return Err(Refusal::UnknownFragment(name.to_owned()));
        };
        self.visiting.push(key.as_str());
        let shape = self.selection_set(&fragment.node.selection_set)?;
        self.visiting.pop();
        self.done.insert(key.as_str(), shape);
        Ok(shape)
    }
}

/// The guard as an async-graphql extension (see the module docs).
pub struct ShapeGuard(pub ShapeLimits);

impl ExtensionFactory for ShapeGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ShapeGuardExtension(self.0))
    }
}

struct ShapeGuardExtension(ShapeLimits);

#[async_trait::async_trait]
impl Extension for ShapeGuardExtension {
    /// Runs before async-graphql's own parse step, whose recursion check already walks
    /// fragment spreads expanded: the document is parsed here, checked, and handed on parsed.
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        if request.query.len() > self.0.max_document_bytes {
            return Err(refused(&Refusal::DocumentTooLarge {
                bytes: request.query.len(),
                max: self.0.max_document_bytes,
            }));
        }
        // A document that does not parse is left to async-graphql, for its usual message.
        if let Ok(doc) = async_graphql::parser::parse_query(&request.query) {
            let checked = if has_nul(&request) {
                Err(Refusal::NulCharacter)
            } else {
                check(&doc, &self.0).map(|_| ())
            };
            if let Err(refusal) = checked {
                return Err(refused(&refusal));
            }
            request.set_parsed_query(doc);
        }
        next.run(ctx, request).await
    }
}

/// The error that answers `refusal`, counted in the refusals' metric.
fn refused(refusal: &Refusal) -> ServerError {
    metrics::counter!("fleetledger_graphql_refused_total", "limit" => refusal.limit()).increment(1);
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", refusal.code().as_str());
    extensions.set("limit", refusal.limit());
    if let Some(max) = refusal.max() {
        extensions.set("max", max as u64);
    }
    let mut error = ServerError::new(refusal.message(), None);
    error.extensions = Some(extensions);
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(query: &str) -> Result<Shape, Refusal> {
        measure(&async_graphql::parser::parse_query(query).unwrap())
    }

    /// 25 fragments, each spreading the next twice: 2^25 fields once expanded, measured in
    /// 25 steps.
    fn doubling(levels: usize) -> String {
        let mut query = String::from("query { ...F0 }\n");
        for i in 0..levels {
            query.push_str(&format!(
                "fragment F{i} on Query {{ ...F{n} ...F{n} }}\n",
                n = i + 1
            ));
        }
        query.push_str(&format!("fragment F{levels} on Query {{ __typename }}\n"));
        query
    }

    #[test]
    fn doubling_fragments_are_measured_without_expanding_them() {
        let started = std::time::Instant::now();
        let measured = shape(&doubling(25)).unwrap();
        assert_eq!(measured.fields, 1 << 25);
        assert_eq!(measured.depth, 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let limits = ShapeLimits {
            max_fields: 2_000,
            max_depth: 12,
            max_root_fields: 20,
            max_document_bytes: 32 * 1024,
            max_directives: 50,
        };
        let refused = check(
            &async_graphql::parser::parse_query(doubling(25)).unwrap(),
            &limits,
        );
        assert_eq!(
            refused,
            Err(Refusal::TooManyFields {
                fields: 1 << 25,
                max: 2_000
            })
        );
    }

    #[test]
    fn depth_counts_fields_and_skips_introspection() {
        assert_eq!(
            shape("{ a { b { c } } d }").unwrap(),
            Shape {
                fields: 4,
                depth: 3,
                width: 2
            }
        );
        let introspection = shape(
            "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { name } } } } } } } } }",
        )
        .unwrap();
        assert_eq!(introspection.depth, 0);
        assert_eq!(introspection.fields, 9);
    }

    #[test]
    fn cycles_and_unknown_fragments_are_refused() {
        assert_eq!(
            shape("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"),
            Err(Refusal::FragmentCycle("A".into()))
        );
        assert_eq!(
            shape("{ ...Nope }"),
            Err(Refusal::UnknownFragment("Nope".into()))
        );
    }
}
