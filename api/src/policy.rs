//! Who sees what: one table, for every type and field of the schema, enforced on every field.
//!
//! Each field has an [`Access`] rule here. The [`PolicyGuard`] extension checks it before the
//! field resolves, for HTTP and WebSocket requests alike: a role rule refuses every other role
//! (`FORBIDDEN`), a signed-in rule refuses anonymous callers (`UNAUTHENTICATED`). An owner rule
//! ("the booking's customer, or these roles") needs the object itself, so the guard checks
//! the caller is signed in and the resolver checks the relation with the same roles (through
//! the constants of [`crate::auth`]). A field without a rule is refused (fail closed), and a
//! test walks the schema so that none is left without one. docs/security.md shows this table
//! as `fleetledger policy` prints it, and a test keeps the two equal.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextResolve, ResolveInfo,
};
use async_graphql::{ServerResult, Value};
use commands::accounts::Role;

use crate::auth::{self, Caller};
use crate::error::AppError;

/// Who may read (or call) a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not.
    Anyone,
    /// Any signed-in user.
    SignedIn,
    /// Only these roles.
    Roles(&'static [Role]),
    /// The owner (the relation named) or these roles. The guard requires a signed-in caller;
    /// the resolver checks the relation.
    OwnerOr {
        owner: &'static str,
        roles: &'static [Role],
    },
    /// Whoever may see the object the field belongs to (plain data of an object whose own field
    /// rule decides who gets it).
    WithParent,
}

/// One rule: a field of a type (`*`: every field of the type without a rule of its own).
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub type_name: &'static str,
    pub field: &'static str,
    pub access: Access,
    /// Why, when the rule is not obvious.
    pub note: &'static str,
}

const fn rule(type_name: &'static str, field: &'static str, access: Access) -> Rule {
    Rule {
        type_name,
        field,
        access,
        note: "",
    }
}

const fn noted(
    type_name: &'static str,
    field: &'static str,
    access: Access,
    note: &'static str,
) -> Rule {
    Rule {
        type_name,
        field,
        access,
        note,
    }
}

use Access::{Anyone, OwnerOr, Roles, SignedIn, WithParent};

const CUSTOMER_OR_ADMIN: &[Role] = &[Role::Customer, Role::Admin];
const BOOKING_OWNER: &str = "the booking's customer";

/// The table. Root fields first, then every object type.
pub const RULES: &[Rule] = &[
    // Queries.
    noted("Query", "me", Anyone, "null when not signed in"),
    rule("Query", "branches", Anyone),
    rule("Query", "searchCars", Anyone),
    rule("Query", "car", Anyone),
    rule("Query", "availability", Anyone),
    rule("Query", "quote", Anyone),
    rule("Query", "extrasOffered", Anyone),
    rule(
        "Query",
        "booking",
        OwnerOr {
            owner: BOOKING_OWNER,
            roles: auth::BOOKING_READERS,
        },
    ),
    rule(
        "Query",
        "cancellationQuote",
        OwnerOr {
            owner: BOOKING_OWNER,
            roles: auth::BOOKING_READERS,
        },
    ),
    noted("Query", "myBookings", SignedIn, "the caller's own bookings"),
    rule("Query", "bookings", Roles(auth::ADMIN)),
    rule(
        "Query",
        "payment",
        OwnerOr {
            owner: BOOKING_OWNER,
            roles: auth::BOOKING_READERS,
        },
    ),
    rule("Query", "events", Roles(auth::AUDIT)),
    rule("Query", "stream", Roles(auth::AUDIT)),
    rule("Query", "aggregateState", Roles(auth::AUDIT)),
    rule("Query", "verifyStream", Roles(auth::AUDIT)),
    rule("Query", "dailyMetrics", Roles(auth::ANALYTICS)),
    rule("Query", "carUtilization", Roles(auth::ANALYTICS)),
    rule("Query", "fleetSummary", Roles(auth::ANALYTICS)),
    rule("Query", "telemetry", Roles(auth::TELEMETRY_READERS)),
    rule("Query", "projections", Roles(auth::ADMIN)),
    rule("Query", "stuckSteps", Roles(auth::ADMIN)),
    // Mutations.
    rule("Mutation", "register", Anyone),
    rule("Mutation", "login", Anyone),
    noted(
        "Mutation",
        "refreshSession",
        Anyone,
        "whoever holds the refresh token",
    ),
    noted(
        "Mutation",
        "updateProfile",
        SignedIn,
        "the caller's own profile",
    ),
    noted("Mutation", "logout", SignedIn, "the caller's own session"),
    noted(
        "Mutation",
        "logoutEverywhere",
        SignedIn,
        "the caller's own sessions",
    ),
    rule(
        "Mutation",
        "endSessions",
        OwnerOr {
            owner: "the user itself",
            roles: auth::ADMIN,
        },
    ),
    noted(
        "Mutation",
        "grantRole",
        Roles(auth::ADMIN),
        "never the caller's own role",
    ),
    rule("Mutation", "addBranch", Roles(auth::ADMIN)),
    rule("Mutation", "updateBranch", Roles(auth::ADMIN)),
    rule("Mutation", "addCar", Roles(auth::ADMIN)),
    rule("Mutation", "updateCar", Roles(auth::ADMIN)),
    rule("Mutation", "changeDailyRate", Roles(auth::ADMIN)),
    rule("Mutation", "relocateCar", Roles(auth::ADMIN)),
    rule("Mutation", "scheduleMaintenance", Roles(auth::ADMIN)),
    rule("Mutation", "completeMaintenance", Roles(auth::ADMIN)),
    rule("Mutation", "retireCar", Roles(auth::ADMIN)),
    noted(
        "Mutation",
        "requestBooking",
        Roles(CUSTOMER_OR_ADMIN),
        "books for the caller",
    ),
    rule(
        "Mutation",
        "payBooking",
        OwnerOr {
            owner: BOOKING_OWNER,
            roles: auth::ADMIN,
        },
    ),
    rule(
        "Mutation",
        "modifyBooking",
        OwnerOr {
            owner: BOOKING_OWNER,
            roles: auth::ADMIN,
        },
    ),
    rule(
        "Mutation",
        "cancelBooking",
        OwnerOr {
            owner: BOOKING_OWNER,
            roles: auth::ADMIN,
        },
    ),
    rule(
        "Mutation",
        "submitFeedback",
        OwnerOr {
            owner: BOOKING_OWNER,
            roles: auth::ADMIN,
        },
    ),
    rule("Mutation", "pickUpCar", Roles(auth::ADMIN)),
    rule("Mutation", "reassignBooking", Roles(auth::ADMIN)),
    rule("Mutation", "returnCar", Roles(auth::ADMIN)),
    rule("Mutation", "refundPayment", Roles(auth::ADMIN)),
    rule("Mutation", "retryStep", Roles(auth::ADMIN)),
    rule("Mutation", "recordTelemetry", Roles(auth::TELEMETRY_WRITE)),
    // Subscriptions.
    rule("Subscription", "events", Roles(auth::EVENT_READERS)),
    rule(
        "Subscription",
        "bookingUpdates",
        OwnerOr {
            owner: BOOKING_OWNER,
            roles: auth::ADMIN,
        },
    ),
    rule("Subscription", "carTelemetry", Roles(auth::TELEMETRY_WRITE)),
    // A car: public catalogue data, with three exceptions.
    rule("Car", "*", WithParent),
    noted(
        "Car",
        "lastTelemetry",
        OwnerOr {
            owner: "the customer renting the car now",
            roles: auth::LIVE_POSITION_READERS,
        },
        "where the car is, so where its renter is",
    ),
    noted("Car", "reservations", Roles(auth::ADMIN), "who rents when"),
    rule("Car", "history", Roles(auth::AUDIT)),
    // A booking is reached only by its customer or staff (Query.booking, Payment.booking, ...).
    rule("Booking", "*", WithParent),
    noted(
        "Booking",
        "timeline",
        OwnerOr {
            owner: BOOKING_OWNER,
            roles: auth::BOOKING_READERS,
        },
        "the customer gets a redacted timeline",
    ),
    noted(
        "BookingActivity",
        "*",
        WithParent,
        "a curated view: no payloads, no metadata",
    ),
    rule("Payment", "*", WithParent),
    rule("CancellationQuote", "*", WithParent),
    rule("Balance", "*", WithParent),
    rule("Feedback", "*", WithParent),
    noted(
        "User",
        "*",
        WithParent,
        "a user is reached as `me`, a booking's customer or an auth payload",
    ),
    rule("AuthPayload", "*", WithParent),
    rule("Branch", "*", WithParent),
    rule("GeoPoint", "*", WithParent),
    rule("Money", "*", WithParent),
    rule("PriceLine", "*", WithParent),
    rule("Quote", "*", WithParent),
    rule("Extra", "*", WithParent),
    rule("ExtraOffer", "*", WithParent),
    rule("MileageTerms", "*", WithParent),
    rule("TimeRange", "*", WithParent),
    rule("PageInfo", "*", WithParent),
    rule("BookingConnection", "*", WithParent),
    rule("BookingEdge", "*", WithParent),
    rule("CarConnection", "*", WithParent),
    rule("CarEdge", "*", WithParent),
    rule("EventConnection", "*", WithParent),
    rule("EventEdge", "*", WithParent),
    rule("EventRecord", "*", WithParent),
    rule("StreamVerification", "*", WithParent),
    rule("DailyMetrics", "*", WithParent),
    rule("CarUtilization", "*", WithParent),
    rule("FleetSummary", "*", WithParent),
    rule("ProjectionStatus", "*", WithParent),
    rule("StuckStep", "*", WithParent),
    rule("TelemetryAck", "*", WithParent),
    rule("TelemetryReading", "*", WithParent),
];

fn index() -> &'static HashMap<(&'static str, &'static str), Access> {
    static INDEX: OnceLock<HashMap<(&'static str, &'static str), Access>> = OnceLock::new();
    INDEX.get_or_init(|| {
        RULES
            .iter()
            .map(|r| ((r.type_name, r.field), r.access))
            .collect()
    })
}

/// The rule of `type_name.field`: its own, else its type's `*`; `None` when it has none.
pub fn access(type_name: &str, field: &str) -> Option<Access> {
    let rules = index();
    rules
        .get(&(type_name, field))
        .or_else(|| rules.get(&(type_name, "*")))
        .copied()
}

/// Check `access` for `caller`, before the field resolves.
pub fn check(access: Access, caller: &Caller) -> Result<(), AppError> {
    match access {
        Anyone | WithParent => Ok(()),
        SignedIn | OwnerOr { .. } => caller.user().map(|_| ()),
        Roles(roles) => caller.require(roles).map(|_| ()),
    }
}

fn role_names(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| format!("`{}`", r.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table as Markdown, as docs/security.md shows it.
pub fn markdown() -> String {
    let mut out = String::from("| Type | Field | Who | Note |\n|---|---|---|---|\n");
    for r in RULES {
        let who = match r.access {
            Anyone => "anyone".to_owned(),
            SignedIn => "any signed-in user".to_owned(),
            Roles(roles) => role_names(roles),
            OwnerOr { owner, roles } => format!("{owner}, or {}", role_names(roles)),
            WithParent => "whoever sees the object".to_owned(),
        };
        let field = if r.field == "*" {
            "every other field".to_owned()
        } else {
            format!("`{}`", r.field)
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            r.type_name, field, who, r.note
        ));
    }
    out
}

/// The refusal of a field, at its path.
pub(crate) fn refused(error: AppError, info: &ResolveInfo<'_>) -> async_graphql::ServerError {
    let mut error = error
        .to_graphql()
        .into_server_error(async_graphql::Pos::default());
    error.locations.clear();
    error.path = info
        .path_node
        .to_string_vec()
        .into_iter()
        .map(|segment| match segment.parse::<usize>() {
            Ok(index) => async_graphql::PathSegment::Index(index),
            Err(_) => async_graphql::PathSegment::Field(segment),
        })
        .collect();
    error
}

/// The extension that checks every field against the table.
pub struct PolicyGuard;

impl ExtensionFactory for PolicyGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(PolicyGuardExtension)
    }
}

struct PolicyGuardExtension;

#[async_trait::async_trait]
impl Extension for PolicyGuardExtension {
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        // Introspection, and the items of a list (the list's own field was checked).
        if info.is_for_introspection
            || info.name.starts_with("__")
            || matches!(
                info.path_node.segment,
                async_graphql::QueryPathSegment::Index(_)
            )
        {
            return next.run(ctx, info).await;
        }
        let Some(access) = access(info.parent_type, info.name) else {
            tracing::error!(
                r#type = info.parent_type,
                field = info.name,
                "a field without a policy rule was refused"
            );
            return Err(refused(AppError::Forbidden, &info));
        };
        if !matches!(access, Anyone | WithParent) {
            let caller = ctx.data_opt::<Caller>().unwrap_or(&Caller::Anonymous);
            check(access, caller).map_err(|e| refused(e, &info))?;
        }
        next.run(ctx, info).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn schema_fields() -> BTreeSet<(String, String)> {
        crate::schema::object_fields()
    }

    #[test]
    fn every_field_of_the_schema_has_a_rule_and_every_rule_a_field() {
        let fields = schema_fields();
        assert!(fields.len() > 200, "{} fields", fields.len());
        let missing: Vec<String> = fields
            .iter()
            .filter(|(t, f)| access(t, f).is_none())
            .map(|(t, f)| format!("{t}.{f}"))
            .collect();
        assert!(
            missing.is_empty(),
            "fields without a policy rule: {missing:?}"
        );
        let types: BTreeSet<&String> = fields.iter().map(|(t, _)| t).collect();
        let stale: Vec<String> = RULES
            .iter()
            .filter(|r| {
                if r.field == "*" {
                    !types.contains(&r.type_name.to_owned())
                } else {
                    !fields.contains(&(r.type_name.to_owned(), r.field.to_owned()))
                }
            })
            .map(|r| format!("{}.{}", r.type_name, r.field))
            .collect();
        assert!(
            stale.is_empty(),
            "rules for fields the schema lacks: {stale:?}"
        );
        // Root fields are decided one by one, never by a wildcard.
        for (t, f) in &fields {
            if ["Query", "Mutation", "Subscription"].contains(&t.as_str()) {
                assert!(
                    index().contains_key(&(t.as_str(), f.as_str())),
                    "{t}.{f} needs a rule of its own"
                );
            }
        }
    }

    #[test]
    fn rules_are_checked_against_the_caller() {
        let anonymous = Caller::Anonymous;
        let customer = Caller::User {
            id: uuid::Uuid::nil(),
            role: Role::Customer,
            session: None,
        };
        let admin = Caller::User {
            id: uuid::Uuid::nil(),
            role: Role::Admin,
            session: None,
        };
        let live = access("Car", "lastTelemetry").unwrap();
        assert_eq!(check(live, &anonymous), Err(AppError::Unauthenticated));
        assert_eq!(
            check(live, &customer),
            Ok(()),
            "the resolver checks the renter"
        );
        let admin_only = access("Mutation", "addCar").unwrap();
        assert_eq!(check(admin_only, &customer), Err(AppError::Forbidden));
        assert_eq!(check(admin_only, &admin), Ok(()));
        assert_eq!(check(access("Car", "make").unwrap(), &anonymous), Ok(()));
        assert_eq!(access("Car", "nonsense"), Some(WithParent));
        assert_eq!(access("Nonsense", "field"), None);
    }
}
