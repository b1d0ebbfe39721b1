//! The axum wiring: `/graphql` (POST, GET, GraphiQL, WebSocket), `/healthz`, `/readyz`,
//! `/metrics`, CORS, body limit, request ids, rate limits and panic safety.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::{BatchRequest, BatchResponse};
use async_graphql_axum::GraphQLProtocol;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{AppError, Code};
use crate::ratelimit::Decision;
use crate::workers::Cut;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The application's routes over `state`.
pub fn router(state: AppState) -> Router {
    let cors = cors(&state.config.cors_origins);
    let body_limit = state.config.body_limit_bytes;
    let mut router = Router::new()
        .route("/", get(crate::pages::landing))
        .route("/assets/{name}", get(crate::pages::asset))
        .route("/docs/api.md", get(crate::pages::api_guide))
        .route("/schema.graphql", get(crate::pages::schema))
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<Body>| {
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                // The path only: query strings may carry personal data.
                tracing::info_span!("http", method = %req.method(), path = req.uri().path(), request_id = id)
            })
            // One line per request at INFO: status and latency (never bodies or queries).
            .on_response(
                tower_http::trace::DefaultOnResponse::new()
                    .level(tracing::Level::INFO)
                    .latency_unit(tower_http::LatencyUnit::Millis),
            ),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        // Browsers must not guess content types (a JSON answer is never run as a script).
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ));
    if let Some(cors) = cors {
        router = router.layer(cors);
    }
    router
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([REQUEST_ID, header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

/// A GraphQL-shaped error response (for failures before or outside execution).
fn error_response(status: StatusCode, code: Code, message: &str) -> Response {
    limit_response(status, code, message, json!({}))
}

/// An error answer whose `extensions` also carry `more` (a limit's name and value).
fn limit_response(
    status: StatusCode,
    code: Code,
    message: &str,
    more: serde_json::Value,
) -> Response {
    let mut extensions = json!({ "code": code.as_str() });
    if let (Some(all), serde_json::Value::Object(more)) = (extensions.as_object_mut(), more) {
        all.extend(more);
    }
    (
        status,
        axum::Json(json!({ "errors": [{ "message": message, "extensions": extensions }] })),
    )
        .into_response()
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        "internal error",
    )
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        Code::NotFound,
        "no such route; the API is at /graphql",
    )
}

/// The client's address (for anonymous rate limits), when the server was started with
/// connect info.
pub struct ClientIp(Option<SocketAddr>);

/// The client's address in a request's data (for limits counted per address).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddress(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

async fn caller_from(state: &AppState, headers: &HeaderMap) -> Caller {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    Caller::from_authorization(&state.services.accounts, value).await
}

/// Count the request against the caller's limit; `Some(response)` when over it.
pub(crate) fn rate_key(caller: &Caller, ip: &Option<SocketAddr>) -> String {
    match (caller.user_id(), ip) {
        (Some(id), _) => format!("user:{id}"),
        (None, Some(addr)) => format!("ip:{}", addr.ip()),
        (None, None) => "ip:unknown".to_owned(),
    }
}

async fn rate_limited(state: &AppState, caller: &Caller, ip: &ClientIp) -> Option<Response> {
    let key = rate_key(caller, &ip.0);
    match state.limiter.check(&key).await {
        Decision::Allowed => None,
        Decision::Limited { retry_after_secs } => {
            metrics::counter!("fleetledger_rate_limited_total").increment(1);
            let error = AppError::RateLimited { retry_after_secs }.to_graphql();
            let body = json!({ "errors": [{
                "message": error.message,
                "extensions": { "code": Code::RateLimited.as_str(), "retryAfter": retry_after_secs },
            }] });
            Some(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, retry_after_secs.to_string())],
                    axum::Json(body),
                )
                    .into_response(),
            )
        }
    }
}

/// The root fields of each operation type, from the schema (bounded label values).
fn root_fields() -> &'static std::collections::HashSet<String> {
    use async_graphql::parser::types::{TypeKind, TypeSystemDefinition};
    static FIELDS: std::sync::OnceLock<std::collections::HashSet<String>> =
        std::sync::OnceLock::new();
    FIELDS.get_or_init(|| {
        let mut out = std::collections::HashSet::new();
        if let Ok(doc) = async_graphql::parser::parse_schema(crate::schema::sdl()) {
            for def in doc.definitions {
                if let TypeSystemDefinition::Type(t) = def
                    && let TypeKind::Object(o) = &t.node.kind
                {
                    let ty = t.node.name.node.to_lowercase();
                    if ["query", "mutation", "subscription"].contains(&ty.as_str()) {
                        for f in &o.fields {
                            out.insert(format!("{ty}:{}", f.node.name.node));
                        }
                    }
                }
            }
        }
        out
    })
}

/// A label for metrics: the operation type and root fields (`query:searchCars`), which the
/// schema bounds; client-chosen operation names are not used, so labels cannot explode.
fn operation_label(batch: &BatchRequest) -> String {
    use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
    let BatchRequest::Single(request) = batch else {
        return "batch".to_owned();
    };
    let Ok(doc) = async_graphql::parser::parse_query(&request.query) else {
        return "invalid".to_owned();
    };
    let op = match (&doc.operations, &request.operation_name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name.as_str()),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        (DocumentOperations::Multiple(_), None) => None,
    };
    let Some(op) = op else {
        return "invalid".to_owned();
    };
    let ty = match op.node.ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    };
    let mut fields: Vec<String> = op
        .node
        .selection_set
        .node
        .items
        .iter()
        .filter_map(|item| match &item.node {
            Selection::Field(f) => Some(format!("{ty}:{}", f.node.name.node)),
            _ => None,
        })
        .collect();
    fields.sort();
    fields.dedup();
    if fields.is_empty()
        || fields.len() > 4
        || !fields.iter().all(|f| {
            root_fields().contains(f) || f.ends_with(":__typename") || f.ends_with(":__schema")
        })
    {
        return format!("{ty}:other");
    }
    fields.join("+")
}

/// Give every error without a code one: errors from parsing, validation, limits and argument
/// coercion (the only ones that do not come through `AppError`) are the client's input.
fn with_codes(mut response: BatchResponse, limits: &crate::QueryLimits) -> BatchResponse {
    let fix = |r: &mut async_graphql::Response| {
        for e in &mut r.errors {
            let has_code = e
                .extensions
                .as_ref()
                .is_some_and(|x| x.get("code").is_some());
            if has_code {
                continue;
            }
            let extensions = e.extensions.get_or_insert_with(Default::default);
            // async-graphql's own complexity and depth limits, checked after the shape guard.
            let limit = if e.message.starts_with("Query is too complex") {
                Some(("complexity", limits.max_complexity))
            } else if e.message.starts_with("Query is nested too deep") {
                Some(("depth", limits.max_depth))
            } else {
                None
            };
            match limit {
                Some((name, max)) => {
                    extensions.set("code", Code::QueryTooComplex.as_str());
                    extensions.set("limit", name);
                    extensions.set("max", max as u64);
                }
                None => extensions.set("code", Code::BadUserInput.as_str()),
            }
        }
    };
    match &mut response {
        BatchResponse::Single(r) => fix(r),
        BatchResponse::Batch(rs) => rs.iter_mut().for_each(fix),
    }
    response
}

fn outcome(response: &BatchResponse) -> &'static str {
    let failed = match response {
        BatchResponse::Single(r) => !r.errors.is_empty(),
        BatchResponse::Batch(rs) => rs.iter().any(|r| !r.errors.is_empty()),
    };
    if failed { "error" } else { "ok" }
}

async fn execute(state: &AppState, caller: Caller, ip: &ClientIp, batch: BatchRequest) -> Response {
    let personal = !matches!(caller, Caller::Anonymous);
    let operation = operation_label(&batch);
    let started = Instant::now();
    // Every request has a wall-clock budget: past it the work is dropped (at its next await)
    // and the client is told to retry, so a slow request cannot hold a connection forever.
    let budget = state.config.request_budget;
    let schema = state.schema.clone();
    let address = ClientAddress(ip.0.map(|a| a.ip()));
    let work = async move { schema.execute_batch(batch.data(caller).data(address)).await };
    let response = match state.workers.run(budget, work).await {
        Ok(response) => with_codes(response, &state.config.limits),
        Err(Cut::Budget) => {
            metrics::counter!("fleetledger_graphql_over_budget_total").increment(1);
            tracing::warn!(operation = %operation, budget_ms = budget.as_millis() as u64,
                "request over its time budget; dropped");
            return limit_response(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::RequestTimeout,
                &format!(
                    "the request took longer than its budget of {} ms and was stopped; retry \
                     (a mutation may have taken effect: retry it with the same idempotency key)",
                    budget.as_millis()
                ),
                json!({ "limit": "budgetMs", "max": budget.as_millis() as u64 }),
            );
        }
        Err(Cut::Panicked) => return panicked(Box::new(())),
    };
    let elapsed = started.elapsed().as_secs_f64();
    metrics::counter!("fleetledger_graphql_requests_total",
        "operation" => operation.clone(), "outcome" => outcome(&response))
    .increment(1);
    metrics::histogram!("fleetledger_graphql_request_duration_seconds", "operation" => operation)
        .record(elapsed);
    let mut http = axum::Json(&response).into_response();
    if personal {
        // An answer to a signed-in caller is theirs alone: no cache keeps it.
        http.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    } else if let Some(value) = response.cache_control().value()
        && let Ok(value) = HeaderValue::from_str(&value)
    {
        http.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    http
}

async fn graphql_post(
    State(state): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let caller = caller_from(&state, &headers).await;
    if let Some(limited) = rate_limited(&state, &caller, &ip).await {
        return limited;
    }
    let body = match body {
        Ok(body) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return limit_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::RequestTooLarge,
                &format!(
                    "the request body is larger than {} bytes",
                    state.config.body_limit_bytes
                ),
                json!({ "limit": "bodyBytes", "max": state.config.body_limit_bytes }),
            );
        }
        Err(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                Code::BadUserInput,
                "the request body could not be read",
            );
        }
    };
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                Code::BadUserInput,
                "the body is not a GraphQL request in JSON: an object with a `query` string \
                 (and optional `variables` and `operationName`), or a list of such objects",
            );
        }
    };
    // A batch is as many requests as it holds operations: bounded, and each one counted.
    if let BatchRequest::Batch(operations) = &batch {
        if operations.len() > state.config.max_batch {
            return limit_response(
                StatusCode::BAD_REQUEST,
                Code::BatchTooLarge,
                &format!(
                    "a batch may hold at most {} operations; this one holds {}",
                    state.config.max_batch,
                    operations.len()
                ),
                json!({ "limit": "batch", "max": state.config.max_batch }),
            );
        }
        for _ in 1..operations.len() {
            if let Some(limited) = rate_limited(&state, &caller, &ip).await {
                return limited;
            }
        }
    }
    execute(&state, caller, &ip, batch).await
}

async fn graphql_get(
    State(state): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    protocol: Result<GraphQLProtocol, StatusCode>,
) -> Response {
    if let Ok(ws) = ws {
        let Ok(protocol) = protocol else {
            return error_response(
                StatusCode::BAD_REQUEST,
                Code::BadUserInput,
                "unsupported WebSocket subprotocol: use graphql-transport-ws or graphql-ws",
            );
        };
        return websocket(state, ws, protocol, &ip).await;
    }
    let query = uri.query().unwrap_or("");
    if query.is_empty() {
        let wants_html = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
        if wants_html && state.config.graphiql {
            return crate::pages::explorer();
        }
        return error_response(
            StatusCode::BAD_REQUEST,
            Code::BadUserInput,
            "GET /graphql needs a `query` parameter",
        );
    }
    let caller = caller_from(&state, &headers).await;
    if let Some(limited) = rate_limited(&state, &caller, &ip).await {
        return limited;
    }
    let request = match async_graphql::http::parse_query_string(query) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                Code::BadUserInput,
                &format!("malformed query string: {e}"),
            );
        }
    };
    if is_mutation(&request) {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::BadUserInput,
            "mutations must be sent with POST",
        );
    }
    execute(&state, caller, &ip, BatchRequest::Single(request)).await
}

/// Whether the operation the request would run is a mutation (or a subscription, which GET
/// cannot serve either). Unparseable queries are left to the executor to report.
fn is_mutation(request: &async_graphql::Request) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    let Ok(doc) = async_graphql::parser::parse_query(&request.query) else {
        return false;
    };
    let not_query = |t: OperationType| t != OperationType::Query;
    match &doc.operations {
        DocumentOperations::Single(op) => not_query(op.node.ty),
        DocumentOperations::Multiple(ops) => match &request.operation_name {
            Some(name) => ops
                .get(name.as_str())
                .is_some_and(|op| not_query(op.node.ty)),
            None => ops.values().any(|op| not_query(op.node.ty)),
        },
    }
}

async fn websocket(
    state: AppState,
    ws: WebSocketUpgrade,
    protocol: GraphQLProtocol,
    ip: &ClientIp,
) -> Response {
    if let Some(limited) = rate_limited(&state, &Caller::Anonymous, ip).await {
        return limited;
    }
    let max = state.config.websocket.connections_per_address;
    let Some(admitted) = state.connections.admit(ip.0.map(|a| a.ip()), max) else {
        metrics::counter!("fleetledger_graphql_refused_total", "limit" => "connections")
            .increment(1);
        return limit_response(
            StatusCode::TOO_MANY_REQUESTS,
            Code::TooManyConnections,
            &format!(
                "this address already holds {max} WebSocket connections, the most it may; \
                 close one first"
            ),
            json!({ "limit": "connections", "max": max }),
        );
    };
    let socket = crate::websocket::Socket {
        schema: state.schema.clone(),
        protocol,
        accounts: state.services.accounts.clone(),
        limiter: state.limiter.clone(),
        ip: ip.0,
        recheck: state.config.session_recheck,
        limits: state.config.websocket,
        admitted,
    };
    let workers = state.workers.clone();
    // One message may be as large as an HTTP body; a larger one closes the connection.
    let bytes = state.config.body_limit_bytes;
    ws.protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(bytes)
        .max_frame_size(bytes)
        .on_upgrade(move |upgraded| async move {
            // The connection's GraphQL work runs on the GraphQL runtime too.
            workers.run_to_end(socket.serve(upgraded)).await;
        })
}

/// The process is up.
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// The process can serve: the database answers within a second, and every read-model
/// projection is running (not failed, stopped or catching up).
/// Ready while this instance can serve: the database answers, so commands run and the read
/// models can be read. Each read model's state is reported beside (`running`, `catching_up`,
/// `stalled`, `failed`, …; `absent` before its first run), and a read model that is not running
/// makes the answer `degraded`, not unavailable: read models are shared by every instance, so
/// one that failed would otherwise take every instance out of its load balancer while the log
/// and the command side work. Only the fields it serves are affected.
async fn readyz(State(state): State<AppState>) -> Response {
    let pool = state.services.store.pool();
    let names: Vec<String> = projections::names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let check = projections::status::states(pool, &names);
    match tokio::time::timeout(Duration::from_secs(1), check).await {
        Ok(Ok(rows)) => {
            let states: serde_json::Map<String, serde_json::Value> = rows
                .iter()
                .map(|(name, s)| (name.clone(), json!(s.as_deref().unwrap_or("absent"))))
                .collect();
            let all_running = rows.iter().all(|(_, s)| s.as_deref() == Some("running"));
            (
                StatusCode::OK,
                axum::Json(json!({
                    "status": if all_running { "ready" } else { "degraded" },
                    "database": "ok",
                    "projections": states,
                })),
            )
                .into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database error");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({ "status": "unavailable", "database": "error" })),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "unavailable", "database": "timeout" })),
        )
            .into_response(),
    }
}

/// Prometheus text exposition of every metric this process records.
async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            "metrics are not enabled",
        ),
    }
}
