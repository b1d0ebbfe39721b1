//! PostgreSQL stopped under a running server: requests answer UNAVAILABLE (never a 500 or a
//! hang), `/readyz` fails, and after a restart everything comes back with nothing lost. The
//! server runs on a private cluster this test owns (eventstore::embedded).

mod common;

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Options, TestApp, at};
use eventstore::embedded::EmbeddedPostgres;
use serde_json::{Value, json};

struct Cluster(PathBuf);

impl Drop for Cluster {
    fn drop(&mut self) {
        let dir = self.0.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(EmbeddedPostgres::stop(&dir.join("pg")));
            }
            let _ = std::fs::remove_dir_all(&dir);
        })
        .join();
    }
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let res = app.http.get(app.url("/readyz")).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn until_ready(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = readyz(app).await;
        if status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn temp_root() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let path = std::env::temp_dir().join(format!(
        "fleetledger-api-outage-{}-{nanos}",
        std::process::id()
    ));
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&path)
        .unwrap();
    path
}

async fn start(dir: &Path) -> EmbeddedPostgres {
    EmbeddedPostgres::start(dir).await.unwrap_or_else(|e| {
        panic!("the PostgreSQL server binaries are required for this test: {e}")
    })
}

#[tokio::test]
async fn a_database_outage_is_unavailable_then_recovers_with_nothing_lost() {
    let root = temp_root();
    let cluster = Cluster(root.clone());
    let pg_dir = root.join("pg");
    let pg = start(&pg_dir).await;
    let app = TestApp::on(pg.url(), None, Options::default()).await;
    app.add_branch("LIS", 38.7223, -9.1393).await;
    let car = app.add_car("LIS", "Fiat", "50.00").await;
    let (customer, _) = app.register("c@example.com").await;
    until_ready(&app).await;
    let before = app.event_count().await;

    EmbeddedPostgres::stop(&pg_dir).await.unwrap();

    let request = "mutation($i: BookingRequestInput!) { requestBooking(input: $i) { id status } }";
    let vars = json!({ "i": { "carId": car, "pickupAt": at(3, 0), "returnAt": at(5, 0) } });
    for (query, vars) in [
        (request, vars.clone()),
        (
            "query($f: CarSearchInput!) { searchCars(filter: $f) { totalCount } }",
            json!({ "f": { "pickupAt": at(3, 0), "returnAt": at(5, 0) } }),
        ),
        ("{ myBookings { totalCount } }", json!({})),
    ] {
        let (status, body) = app.post(Some(&customer), query, vars).await;
        assert_eq!(status, 200, "{body:#}");
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "UNAVAILABLE",
            "{body:#}"
        );
        assert!(body["data"].is_null(), "{body:#}");
    }
    let (status, _) = readyz(&app).await;
    assert_eq!(status, 503);
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the process itself is fine");

    let _pg = start(&pg_dir).await;
    until_ready(&app).await;
    assert_eq!(
        app.event_count().await,
        before,
        "nothing was written during the outage, nothing lost"
    );
    let booked = app.ok(Some(&customer), request, vars).await;
    assert_eq!(booked["requestBooking"]["status"], "HELD");
    let mine = app
        .ok(Some(&customer), "{ myBookings { totalCount } }", json!({}))
        .await;
    assert_eq!(mine["myBookings"]["totalCount"], 1);

    app.shutdown().await;
    drop(cluster);
}
