//! Operations: health, readiness (database and projections), Prometheus metrics, request ids,
//! CORS, GraphiQL, and rate limits in Redis with the in-process fallback when Redis is down.

mod common;

use common::{Options, TestApp};
use serde_json::{Value, json};

/// A read model that fails leaves the instance ready: `/readyz` says which one, as degraded.
#[tokio::test]
async fn a_failed_read_model_degrades_readiness_without_failing_it() {
    let app = TestApp::start().await;
    // A payment event only the history projection reads, with a payload it cannot read.
    let poison = eventstore::NewEvent::new("PaymentAuthorized", 1, json!({ "gateway": 42 }));
    app.services
        .store
        .append(
            &[eventstore::StreamAppend::new(
                eventstore::StreamId::new("payment", uuid::Uuid::now_v7().to_string()),
                eventstore::ExpectedVersion::NoStream,
                vec![poison],
            )],
            &eventstore::EventMetadata::for_actor("test"),
        )
        .await
        .unwrap();
    let body = common::eventually(20, || async {
        let res = app.http.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        let settled = body["projections"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(name, state)| {
                state
                    == if name == "history" {
                        "failed"
                    } else {
                        "running"
                    }
            });
        settled.then_some(body)
    })
    .await;
    assert_eq!(
        body,
        json!({ "status": "degraded", "database": "ok", "projections": {
            "analytics": "running", "availability": "running", "history": "failed",
            "search": "running", "telemetry": "running" } })
    );
    // Fields answered from history say so (and nothing stale); the others answer.
    let (_, answer) = app
        .post(
            Some(&app.admin_token),
            "query($b: UUID!) { booking(id: $b) { id } branches { code } }",
            json!({ "b": uuid::Uuid::now_v7() }),
        )
        .await;
    assert_eq!(answer["data"], json!({ "branches": [] }));
    assert_eq!(answer["errors"][0]["path"], json!(["booking"]));
    assert_eq!(
        answer["errors"][0]["extensions"],
        json!({ "code": "READ_MODEL_FAILED", "readModels": ["history"] })
    );
    let search = app
        .ok(
            None,
            "query($p: DateTime!, $r: DateTime!) { searchCars(filter: { pickupAt: $p, returnAt: $r }) { totalCount } }",
            json!({ "p": common::at(2, 0), "r": common::at(3, 0) }),
        )
        .await;
    assert_eq!(search["searchCars"]["totalCount"], 0);
    app.shutdown().await;
}

#[tokio::test]
async fn health_readiness_metrics_cors_and_graphiql() {
    let app = TestApp::start().await;
    let res = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));

    // Ready while the database answers; "ready", not "degraded", once every projection runs.
    let body = common::eventually(20, || async {
        let res = app.http.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        (body["status"] == "ready").then_some(body)
    })
    .await;
    assert_eq!(
        body,
        json!({ "status": "ready", "database": "ok", "projections": {
            "analytics": "running", "availability": "running", "history": "running",
            "search": "running", "telemetry": "running" } })
    );

    app.ok(None, "query Branches { branches { code } }", json!({}))
        .await;
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "fleetledger_graphql_requests_total{operation=\"query:branches\",outcome=\"ok\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("fleetledger_graphql_request_duration_seconds"));

    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/graphql"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let foreign = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/graphql"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(
        !foreign
            .headers()
            .contains_key("access-control-allow-origin")
    );

    let page = app
        .http
        .get(app.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let page = page.text().await.unwrap();
    assert!(page.contains("/assets/graphiql.min.js"), "{page}");
    // Everything the explorer loads comes from this server, and each file is there.
    let mut loaded = 0;
    for part in page.split(['"', '\'']) {
        if part.starts_with("/assets/") {
            let asset = app.http.get(app.url(part)).send().await.unwrap();
            assert_eq!(asset.status(), 200, "{part}");
            assert!(!asset.bytes().await.unwrap().is_empty(), "{part}");
            loaded += 1;
        }
        assert!(
            !part.starts_with("http://")
                && !part.starts_with("https://")
                && !part.starts_with("//"),
            "external URL in the explorer page: {part}"
        );
    }
    assert_eq!(loaded, 7, "{page}");
    let landing = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(landing.status(), 200);
    let landing = landing.text().await.unwrap();
    for link in [
        "/graphql",
        "/docs/api.md",
        "/schema.graphql",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            landing.contains(&format!("href=\"{link}\"")),
            "{link} missing from {landing}"
        );
    }
    let guide = app.http.get(app.url("/docs/api.md")).send().await.unwrap();
    assert_eq!(guide.status(), 200);
    let sdl = app
        .http
        .get(app.url("/schema.graphql"))
        .send()
        .await
        .unwrap();
    assert_eq!(sdl.text().await.unwrap(), api::sdl());

    let get = app
        .http
        .get(app.url("/graphql?query=%7Bbranches%7Bcode%7D%7D"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let body: Value = get.json().await.unwrap();
    assert_eq!(body["data"]["branches"], json!([]));

    app.shutdown().await;
}

async fn limited_after(app: &TestApp, allowed: usize) {
    for _ in 0..allowed {
        app.ok(None, "{ branches { code } }", json!({})).await;
    }
    let res = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ branches { code } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=3600).contains(&retry),
        "{retry} s, within the test's one-hour window"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    assert_eq!(body["errors"][0]["extensions"]["retryAfter"], retry);
}

#[tokio::test]
async fn requests_over_the_limit_are_rate_limited_in_redis() {
    // The harness itself logs the admin in: one request already counted for this IP.
    let app = TestApp::with(Options {
        rate_limit: 4,
        ..Options::default()
    })
    .await;
    limited_after(&app, 3).await;
    // A signed-in user has a budget of their own.
    let res = app
        .http
        .post(app.url("/graphql"))
        .bearer_auth(&app.admin_token)
        .json(&json!({ "query": "{ me { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn the_limit_holds_in_process_while_redis_is_down() {
    let app = TestApp::with(Options {
        rate_limit: 4,
        redis_url: Some("redis://127.0.0.1:1".into()),
        ..Options::default()
    })
    .await;
    limited_after(&app, 3).await;
    app.shutdown().await;
}
