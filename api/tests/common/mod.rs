//! The end-to-end harness: a fresh database, the application exactly as `fleetledger serve`
//! builds and runs it (`fleetledger_app::Application`), on port 0, and a real HTTP client.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses part of the harness"
)]

use std::net::SocketAddr;
use std::time::Duration;

use api::Services;
use eventstore::testing::TestDatabase;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const ADMIN_EMAIL: &str = "admin@fleet.test";
pub const ADMIN_PASSWORD: &str = "admin-password-123";

pub fn redis_url() -> String {
    std::env::var("FLEETLEDGER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Fail (never skip) when Redis is missing.
pub async fn require_redis() {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is required for this test: {e}"));
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub services: Services,
    pub admin_token: String,
    pub pool: sqlx::PgPool,
    _db: Option<TestDatabase>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

#[derive(Clone)]
pub struct Options {
    pub rate_limit: u64,
    pub redis_url: Option<String>,
    pub body_limit: usize,
    pub request_budget: Duration,
    pub websocket: api::websocket::WebSocketLimits,
    /// How long a command's answer waits for the read models before answering from the log.
    pub read_your_writes: Duration,
    /// Whether the worker runs in the application (off: a test sees the state its commands
    /// left, with no follow-up step taken behind its back).
    pub worker: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rate_limit: 10_000,
            redis_url: Some(redis_url()),
            body_limit: 64 * 1024,
            request_budget: Duration::from_secs(30),
            websocket: api::websocket::WebSocketLimits::default(),
            read_your_writes: Duration::from_secs(10),
            worker: false,
        }
    }
}

impl TestApp {
    pub async fn start() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Self {
        let db = TestDatabase::create().await;
        let url = db.url();
        Self::on(url, Some(db), options).await
    }

    /// The application `fleetledger serve` runs (`fleetledger_app::Application`, built from
    /// configuration variables as an operator sets them) over the database at `url`.
    pub async fn on(url: String, db: Option<TestDatabase>, options: Options) -> Self {
        if options.redis_url.is_some() {
            require_redis().await;
        }
        let data_dir =
            std::env::temp_dir().join(format!("fleetledger-api-test-{}", Uuid::new_v4()));
        let ms = |d: Duration| d.as_millis().to_string();
        let mut vars: std::collections::HashMap<&str, String> = [
            ("DATABASE_URL", url),
            ("FLEETLEDGER_DATA_DIR", data_dir.display().to_string()),
            ("FLEETLEDGER_HTTP_ADDR", "127.0.0.1:0".to_owned()),
            (
                "FLEETLEDGER_JWT_SECRET",
                "test-secret-of-at-least-thirty-two-bytes".to_owned(),
            ),
            ("FLEETLEDGER_JWT_TTL", "3600".to_owned()),
            ("FLEETLEDGER_BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL.to_owned()),
            (
                "FLEETLEDGER_BOOTSTRAP_ADMIN_PASSWORD",
                ADMIN_PASSWORD.to_owned(),
            ),
            ("FLEETLEDGER_PAYMENT_GATEWAYS", "sandbox".to_owned()),
            ("FLEETLEDGER_CORS_ORIGINS", "https://app.example".to_owned()),
            ("FLEETLEDGER_RATE_LIMIT", options.rate_limit.to_string()),
            // Counting windows are fixed (aligned to the epoch): an hour makes a test that
            // counts requests up to the limit very unlikely to cross into the next window.
            ("FLEETLEDGER_RATE_LIMIT_WINDOW", "3600".to_owned()),
            (
                "FLEETLEDGER_REDIS_PREFIX",
                format!("fltest:{}:", Uuid::new_v4().simple()),
            ),
            ("FLEETLEDGER_BODY_LIMIT", options.body_limit.to_string()),
            ("FLEETLEDGER_REQUEST_BUDGET_MS", ms(options.request_budget)),
            (
                "FLEETLEDGER_READ_YOUR_WRITES_MS",
                ms(options.read_your_writes),
            ),
            (
                "FLEETLEDGER_WS_MAX_OPERATIONS",
                options.websocket.max_operations.to_string(),
            ),
            (
                "FLEETLEDGER_WS_CONNECTIONS_PER_ADDRESS",
                options.websocket.connections_per_address.to_string(),
            ),
            (
                "FLEETLEDGER_WS_INIT_TIMEOUT_MS",
                ms(options.websocket.init_timeout),
            ),
            // Tests see a revoked session cut a WebSocket within a fraction of a second.
            ("FLEETLEDGER_SESSION_RECHECK_MS", "200".to_owned()),
            ("FLEETLEDGER_PROJECTOR_POLL_MS", "100".to_owned()),
            ("FLEETLEDGER_PROJECTOR_MAX_BACKOFF_MS", "500".to_owned()),
            ("FLEETLEDGER_SERVE_WORKER", options.worker.to_string()),
        ]
        .into_iter()
        .collect();
        if let Some(redis) = &options.redis_url {
            vars.insert("REDIS_URL", redis.clone());
        }
        let config = fleetledger_app::Config::from_vars(&|name| vars.get(name).cloned()).unwrap();
        let application = fleetledger_app::Application::build(config).await.unwrap();
        let addr = application.addr();
        let services = application.services().clone();
        let pool = services.store.pool().clone();
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let token = stop.clone();
        tasks.spawn(async move {
            application
                .run_until(async move { token.cancelled().await })
                .await
                .unwrap();
            let _ = std::fs::remove_dir_all(&data_dir);
        });
        let mut app = Self {
            addr,
            http: reqwest::Client::new(),
            services,
            admin_token: String::new(),
            pool,
            _db: db,
            stop,
            tasks,
        };
        app.admin_token = if options.request_budget < Duration::from_secs(1) {
            // A budget too tight for a login over HTTP: through the service.
            app.services
                .accounts
                .login(ADMIN_EMAIL, ADMIN_PASSWORD)
                .await
                .unwrap()
                .token
        } else {
            // Over HTTP, as a client would (the rate-limit tests count this request).
            let login = app
                .ok(
                    None,
                    "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
                    json!({ "e": ADMIN_EMAIL, "p": ADMIN_PASSWORD }),
                )
                .await;
            login["login"]["token"].as_str().unwrap().to_owned()
        };
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POST a GraphQL request; the whole response body and its status.
    pub async fn post(&self, token: Option<&str>, query: &str, variables: Value) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    /// The data of a request that must succeed.
    pub async fn ok(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let (status, body) = self.post(token, query, variables).await;
        assert!(
            status == 200 && body.get("errors").is_none(),
            "expected success, got {status}: {body:#}"
        );
        body["data"].clone()
    }

    /// The `extensions.code` of the first error of a request that must fail.
    pub async fn code(&self, token: Option<&str>, query: &str, variables: Value) -> String {
        let (_, body) = self.post(token, query, variables).await;
        let code = body["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error with a code, got {body:#}"));
        code.to_owned()
    }

    pub async fn register(&self, email: &str) -> (String, Uuid) {
        let data = self
            .ok(
                None,
                "mutation($i: RegisterInput!) { register(input: $i) { token user { id } } }",
                json!({ "i": { "email": email, "password": "customer-password-1", "name": "Test Customer" } }),
            )
            .await;
        (
            data["register"]["token"].as_str().unwrap().to_owned(),
            data["register"]["user"]["id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        )
    }

    /// A user with `role` (registered, granted by the admin, logged in again for a token
    /// carrying the role).
    pub async fn user_with_role(&self, email: &str, role: &str) -> String {
        let (_, id) = self.register(email).await;
        self.ok(
            Some(&self.admin_token),
            "mutation($u: UUID!, $r: Role!) { grantRole(userId: $u, role: $r) { role } }",
            json!({ "u": id, "r": role }),
        )
        .await;
        let data = self
            .ok(
                None,
                "mutation($e: String!) { login(email: $e, password: \"customer-password-1\") { token } }",
                json!({ "e": email }),
            )
            .await;
        data["login"]["token"].as_str().unwrap().to_owned()
    }

    pub async fn add_branch(&self, code: &str, lat: f64, lon: f64) {
        self.ok(
            Some(&self.admin_token),
            "mutation($i: BranchInput!) { addBranch(input: $i) { code } }",
            json!({ "i": { "code": code, "name": format!("Branch {code}"), "city": "Lisbon",
                           "position": { "latitude": lat, "longitude": lon } } }),
        )
        .await;
    }

    pub async fn add_car(&self, branch: &str, make: &str, rate: &str) -> Uuid {
        let data = self
            .ok(
                Some(&self.admin_token),
                "mutation($i: CarInput!) { addCar(input: $i) { id status } }",
                json!({ "i": { "make": make, "model": "Model", "year": 2024, "class": "COMPACT",
                               "seats": 5, "transmission": "AUTOMATIC", "fuel": "PETROL",
                               "features": ["gps"], "dailyRate": rate, "branchCode": branch } }),
            )
            .await;
        assert_eq!(data["addCar"]["status"], "AVAILABLE");
        data["addCar"]["id"].as_str().unwrap().parse().unwrap()
    }

    /// A booking of `car` from `pickup` to `ret` by the holder of `token`, paid by card: its id.
    pub async fn book_and_pay(&self, token: &str, car: Uuid, pickup: &str, ret: &str) -> String {
        let held = self
            .ok(
                Some(token),
                "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id } }",
                json!({ "i": { "carId": car, "pickupAt": pickup, "returnAt": ret } }),
            )
            .await;
        let booking = held["requestBooking"]["id"].as_str().unwrap().to_owned();
        self.ok(
            Some(token),
            "mutation($b: UUID!) { payBooking(bookingId: $b, method: { kind: CARD, token: \"tok_success\" }) { status } }",
            json!({ "b": booking }),
        )
        .await;
        booking
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// An instant `days` days and `hours` hours from now, as RFC 3339, on the hour.
pub fn at(days: i64, hours: i64) -> String {
    use chrono::{DurationRound, TimeDelta, Utc};
    let base = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap();
    (base + TimeDelta::days(days) + TimeDelta::hours(hours)).to_rfc3339()
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The upgrade request for a graphql-transport-ws connection to `app`.
pub fn ws_request(app: &TestApp) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    request
}

/// A graphql-transport-ws connection, initialised with `token`, acknowledged.
pub async fn ws_connect(app: &TestApp, token: &str) -> Ws {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(app))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } })
            .to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(ws_next(&mut ws).await["type"], "connection_ack");
    ws
}

pub async fn ws_subscribe(ws: &mut Ws, id: &str, query: &str, variables: Value) {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(
        json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } })
            .to_string(),
    ))
    .await
    .unwrap();
}

/// The next JSON message, within 10 s.
pub async fn ws_next(ws: &mut Ws) -> Value {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket stays open")
            .expect("a valid frame");
        match msg {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Close(frame) => panic!("socket closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Wait for the server to close the socket (messages before that are skipped); fails after
/// 10 s.
pub async fn ws_closed(ws: &mut Ws) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the server closes the socket within 10 s");
        match next {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(_)) => {}
        }
    }
}

/// Poll `check` until it returns `Some`, failing after `secs` seconds (eventually consistent
/// read models that no mutation waited for, such as analytics).
pub async fn eventually<T, F, Fut>(secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `script` from tests/js with node (graphql-js, playwright-core, which scripts/test
/// installs with npm), off the async runtime so that the in-process server keeps serving.
/// Missing tools fail the test, saying how to get them.
pub async fn node(script: &str, args: Vec<String>) -> std::process::Output {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/js");
    assert!(
        dir.join("node_modules/graphql").is_dir()
            && dir.join("node_modules/playwright-core").is_dir(),
        "the JS test tools are not installed in {}: run scripts/test (the README's test command), \
         or `npm ci` there",
        dir.display()
    );
    let script = script.to_owned();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .current_dir(&dir)
            .arg(&script)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run node {script}: {e}"))
    })
    .await
    .unwrap()
}
