//! GraphQL over WebSocket, bounded: what one client may hold open.
//!
//! A WebSocket is cheap to open and each subscription on it costs the server a standing task
//! (and, for the log's subscriptions, queries while it lives), so a flood is bounded on three
//! sides besides the per-operation rate limit (`ratelimit::OperationQuota`):
//! - **connections per client address** ([`ConnectionGate`]): an upgrade over the limit is
//!   answered HTTP 429 `TOO_MANY_CONNECTIONS`, counted in this process;
//! - **operations open on one connection** ([`OpenOperationsCap`]): a `subscribe` over the
//!   limit is answered at once with `TOO_MANY_OPERATIONS` and costs nothing more; completing or
//!   stopping one frees its place;
//! - **message size**: one message may be as large as an HTTP body (`FLEETLEDGER_BODY_LIMIT`),
//!   a larger one closes the connection;
//! - **the handshake**: a connection that has not sent `connection_init` within
//!   [`WebSocketLimits::init_timeout`] (10 s) is closed.
//!
//! The caller's token is checked at `connection_init` and then every
//! `ApiConfig::session_recheck`: when its session ends (logout, role change, reuse of its
//! refresh token) or the token expires, the connection is closed and its subscriptions with it;
//! the client reconnects with a fresh token.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextSubscribe};
use async_graphql::{Data, ErrorExtensionValues, Response, ServerError};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Caller;
use crate::error::{AppError, Code};
use crate::http::{ClientAddress, rate_key};
use crate::ratelimit::{ConnectionQuota, RateLimiter};

/// Bounds on what one client holds open over WebSockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebSocketLimits {
    /// `FLEETLEDGER_WS_MAX_OPERATIONS`: operations (subscriptions, or queries still running)
    /// open at once on one connection.
    pub max_operations: usize,
    /// `FLEETLEDGER_WS_CONNECTIONS_PER_ADDRESS`: WebSocket connections one client address may
    /// hold open at once in one process.
    pub connections_per_address: usize,
    /// How long a new connection may take to send `connection_init`.
    pub init_timeout: Duration,
}

impl Default for WebSocketLimits {
    fn default() -> Self {
        Self {
            max_operations: 20,
            connections_per_address: 32,
            init_timeout: Duration::from_secs(10),
        }
    }
}

/// Open WebSocket connections per client address, in this process.
#[derive(Clone, Default)]
pub struct ConnectionGate {
    open: Arc<Mutex<HashMap<Option<IpAddr>, usize>>>,
}

/// One admitted connection: its place is given back when this is dropped.
pub struct Admitted {
    gate: ConnectionGate,
    address: Option<IpAddr>,
}

impl ConnectionGate {
    /// A place for one more connection from `address`, unless it holds `max` already.
    pub fn admit(&self, address: Option<IpAddr>, max: usize) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(address).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Admitted {
            gate: self.clone(),
            address,
        })
    }

    /// Connections open from `address`.
    pub fn open(&self, address: Option<IpAddr>) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&address).copied().unwrap_or(0)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .gate
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// The places for operations on one connection (its connection data).
#[derive(Clone)]
struct OpenOperations {
    places: Arc<Semaphore>,
    max: usize,
}

/// Refuses an operation over [`WebSocketLimits::max_operations`] on its connection. Only
/// WebSocket operations carry [`OpenOperations`]; HTTP requests pass untouched.
pub struct OpenOperationsCap;

impl ExtensionFactory for OpenOperationsCap {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(OpenOperationsCapExtension)
    }
}

struct OpenOperationsCapExtension;

impl Extension for OpenOperationsCapExtension {
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let Some(open) = ctx.data_opt::<OpenOperations>() else {
            return next.run(ctx, stream);
        };
        match open.places.clone().try_acquire_owned() {
            Ok(place) => next
                .run(ctx, stream)
                .map(move |response| {
                    // The place is held for as long as the operation's stream lives.
                    let _: &OwnedSemaphorePermit = &place;
                    response
                })
                .boxed(),
            Err(_) => {
                metrics::counter!("fleetledger_graphql_refused_total", "limit" => "openOperations")
                    .increment(1);
                let mut extensions = ErrorExtensionValues::default();
                extensions.set("code", Code::TooManyOperations.as_str());
                extensions.set("limit", "openOperations");
                extensions.set("max", open.max as u64);
                let mut error = ServerError::new(
                    format!(
                        "this connection already runs {} operations, the most one connection \
                         may; complete one first",
                        open.max
                    ),
                    None,
                );
                error.extensions = Some(extensions);
                futures::stream::once(async move { Response::from_errors(vec![error]) }).boxed()
            }
        }
    }
}

/// What serving one connection needs.
pub(crate) struct Socket {
    pub schema: crate::AppSchema,
    pub protocol: GraphQLProtocol,
    pub accounts: commands::accounts::Accounts,
    pub limiter: RateLimiter,
    pub ip: Option<SocketAddr>,
    pub recheck: Duration,
    pub limits: WebSocketLimits,
    /// The connection's place at its address, given back when it closes.
    pub admitted: Admitted,
}

impl Socket {
    /// Serve the connection until the client leaves, its session ends, or it never completes
    /// the handshake.
    pub(crate) async fn serve(self, socket: axum::extract::ws::WebSocket) {
        let Self {
            schema,
            protocol,
            accounts,
            limiter,
            ip,
            recheck,
            limits,
            admitted,
        } = self;
        let max_operations = limits.max_operations;
        metrics::gauge!("fleetledger_websocket_connections").increment(1.0);
        let authorization: Arc<Mutex<Option<String>>> = Arc::default();
        let initialised = Arc::new(AtomicBool::new(false));
        let (seen, init_seen) = (authorization.clone(), initialised.clone());
        let checker = accounts.clone();
        let served = GraphQLWebSocket::new(socket, schema, protocol)
            .on_connection_init(move |payload: serde_json::Value| async move {
                let value = ["Authorization", "authorization"]
                    .iter()
                    .find_map(|k| payload.get(*k).and_then(|v| v.as_str()).map(str::to_owned))
                    .or_else(|| {
                        payload
                            .get("token")
                            .and_then(|v| v.as_str())
                            .map(|t| format!("Bearer {t}"))
                    });
                let caller = Caller::from_authorization(&accounts, value.as_deref()).await;
                match caller {
                    Caller::BadToken(reason) => {
                        return Err(AppError::InvalidToken(reason).to_graphql());
                    }
                    Caller::Unchecked => return Err(AppError::Unavailable.to_graphql()),
                    Caller::User { .. } => {
                        *seen.lock().unwrap_or_else(PoisonError::into_inner) = value;
                    }
                    Caller::Anonymous => {}
                }
                init_seen.store(true, Ordering::Release);
                let mut data = Data::default();
                // Every operation on this connection counts against the caller's limit.
                data.insert(ConnectionQuota {
                    limiter: limiter.clone(),
                    key: rate_key(&caller, &ip),
                });
                data.insert(OpenOperations {
                    places: Arc::new(Semaphore::new(max_operations)),
                    max: max_operations,
                });
                data.insert(caller);
                data.insert(ClientAddress(ip.map(|a| a.ip())));
                Ok(data)
            })
            .serve();
        let handshake = async move {
            tokio::time::sleep(limits.init_timeout).await;
            if initialised.load(Ordering::Acquire) {
                std::future::pending::<()>().await;
            }
            tracing::info!("closing a WebSocket that never sent connection_init");
        };
        let watch = async move {
            loop {
                tokio::time::sleep(recheck).await;
                let value = authorization
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if value.is_none() {
                    continue; // anonymous, or not initialised yet
                }
                if let Caller::BadToken(reason) =
                    Caller::from_authorization(&checker, value.as_deref()).await
                {
                    tracing::info!(reason, "closing a WebSocket whose session ended");
                    metrics::counter!("fleetledger_websocket_sessions_ended_total").increment(1);
                    return;
                }
            }
        };
        tokio::select! {
            () = served => {}
            () = watch => {}
            () = handshake => {}
        }
        drop(admitted);
        metrics::gauge!("fleetledger_websocket_connections").decrement(1.0);
    }
}
