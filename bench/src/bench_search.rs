//! `fleetledger bench search`: `searchCars` over HTTP at two fleet sizes, beside a trivial
//! authenticated query on the same server and the same search SQL driven directly.
//!
//! For each `--cars` size: a fresh database on the given server (`flbench_search_*`, dropped
//! at the end, on failure or Ctrl-C) is seeded by the demo seeder (`--branches` branches, five
//! bookings per car over three months back and one ahead), a `fleetledger serve` child runs on
//! it (rate limit off) until every read model has caught up, then three phases of `--seconds`
//! each run with `--connections` clients:
//! - **search**: `searchCars` with a mix of filters, one kind per request in turn: a branch, a
//!   point (25 km, nearest first), classes with a price cap, and a word of make or model; each
//!   over a random window of one to five days within the next four weeks, first 20, with
//!   `totalCount`;
//! - **trivial**: `{ me { id } }` as the same signed-in user: what the server does per request
//!   besides the search;
//! - **sql**: the same searches through `projections::search::{find, count}` on a pool of
//!   `--connections`, with no HTTP or GraphQL: the ceiling the API is measured against.
//!
//! Reported per size: requests/s, p50 and p99 of each phase, searchCars' throughput as a ratio
//! of the trivial query's and of its own SQL's; and p50/p99 at the largest size as a ratio of
//! those at the smallest.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

use crate::bench::{drop_databases, open_pool, percentile, quote_ident};
use fleetledger_app::seed::{DEMO_PASSWORD, DEMO_STAFF, SeedOptions, seeded_branches};

#[derive(clap::Args, Debug, Clone)]
pub struct SearchBenchOptions {
    /// Fleet sizes to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [2_000u32, 20_000])]
    cars: Vec<u32>,
    /// Branches the fleet is spread over.
    #[arg(long, default_value_t = 40)]
    branches: u32,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Clients at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    connections: u64,
    /// Print one JSON object with every figure instead of the markdown report.
    #[arg(long)]
    json: bool,
}

/// One phase's figures.
#[derive(Clone, Copy, Debug)]
struct Phase {
    requests: usize,
    errors: usize,
    rate: f64,
    p50: f64,
    p99: f64,
}

impl Phase {
    fn of(mut latencies: Vec<Duration>, errors: usize, seconds: f64) -> Self {
        latencies.sort();
        let ms = |p| percentile(&latencies, p).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        Self {
            requests: latencies.len(),
            errors,
            rate: latencies.len() as f64 / seconds,
            p50: ms(50.0),
            p99: ms(99.0),
        }
    }

    fn json(&self) -> Value {
        json!({ "requests": self.requests, "errors": self.errors, "per_second": self.rate,
                "p50_ms": self.p50, "p99_ms": self.p99 })
    }
}

/// One search of the mix, as GraphQL variables and as the read side's query.
struct Search {
    variables: Value,
    query: projections::search::CarQuery,
}

const SEARCH: &str = "query($f: CarSearchInput!) { searchCars(filter: $f, first: 20) {
    totalCount edges { cursor distanceKm node { id make model dailyRate { amount currency } } }
    pageInfo { hasNextPage endCursor } } }";

const WORDS: [&str; 6] = ["Golf", "Tesla", "Fiat", "Passat", "BMW", "Corolla"];

/// The `i`-th search of the mix (kind `i % 4`), over a random window.
fn search(rng: &mut StdRng, i: u64, branches: &[(String, String, String, f64, f64)]) -> Search {
    use projections::search::{CarOrder, CarQuery, Near};
    let start = Utc::now() + chrono::Duration::hours(rng.random_range(24..24 * 28));
    let end = start + chrono::Duration::hours(rng.random_range(24..24 * 5));
    let mut query = CarQuery {
        pickup_at: start,
        return_at: end,
        branch: None,
        near: None,
        classes: None,
        min_seats: None,
        max_daily_rate: None,
        transmission: None,
        fuel: None,
        text: None,
        order: CarOrder::PriceAsc,
        after: None,
        limit: 20,
    };
    let mut filter = json!({ "pickupAt": start.to_rfc3339(), "returnAt": end.to_rfc3339() });
    let (code, _, _, lat, lon) = &branches[rng.random_range(0..branches.len())];
    match i % 4 {
        0 => {
            filter["branchCode"] = json!(code);
            query.branch = Some(code.clone());
        }
        1 => {
            filter["near"] = json!({ "latitude": lat, "longitude": lon });
            filter["radiusKm"] = json!(25.0);
            filter["sort"] = json!("DISTANCE");
            query.near = Some(Near {
                latitude: *lat,
                longitude: *lon,
                radius_km: 25.0,
            });
            query.order = CarOrder::Distance;
        }
        2 => {
            filter["classes"] = json!(["ECONOMY", "COMPACT"]);
            filter["maxDailyRate"] = json!("60.00");
            query.classes = Some(vec!["ECONOMY".into(), "COMPACT".into()]);
            query.max_daily_rate = Some(("EUR".into(), 6_000));
        }
        _ => {
            let word = WORDS[rng.random_range(0..WORDS.len())];
            filter["text"] = json!(word);
            query.text = Some(word.to_owned());
        }
    }
    Search {
        variables: json!({ "f": filter }),
        query,
    }
}

pub async fn run(
    server: PgConnectOptions,
    server_url: Option<String>,
    options: SearchBenchOptions,
) -> Result<()> {
    let mut admin = PgConnection::connect_with(&server)
        .await
        .context("connecting to the server")?;
    let mut created = Vec::new();
    let result = tokio::select! {
        r = measure_all(&server, server_url.as_deref(), &mut admin, &mut created, &options) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    drop_databases(&mut admin, &created).await?;
    let (report, figures) = result?;
    if options.json {
        println!("{figures}");
    } else {
        println!("{report}");
    }
    Ok(())
}

async fn measure_all(
    server: &PgConnectOptions,
    server_url: Option<&str>,
    admin: &mut PgConnection,
    created: &mut Vec<String>,
    options: &SearchBenchOptions,
) -> Result<(String, Value)> {
    let mut sizes = Vec::new();
    for &cars in &options.cars {
        let name = format!("flbench_search_{cars}_{}", Uuid::new_v4().simple());
        sqlx::raw_sql(&format!("CREATE DATABASE {}", quote_ident(&name)))
            .execute(&mut *admin)
            .await?;
        created.push(name.clone());
        let figures = measure(server, server_url, &name, cars, options).await?;
        drop_databases(admin, std::slice::from_ref(&name)).await?;
        created.retain(|n| n != &name);
        sizes.push((cars, figures));
    }
    let mut out = String::new();
    writeln!(
        out,
        "- Command: `fleetledger bench search --cars {} --branches {} --seconds {} --connections {}`",
        options
            .cars
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        options.branches,
        options.seconds,
        options.connections
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| cars | searchCars req/s | p50 ms | p99 ms | trivial req/s | p50 | p99 | SQL req/s | search ÷ trivial | API ÷ SQL |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|")?;
    let mut by_size = serde_json::Map::new();
    for (cars, ([search, trivial, sql], kinds)) in &sizes {
        writeln!(
            out,
            "| {cars} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.0} | {:.2} | {:.2} |",
            search.rate,
            search.p50,
            search.p99,
            trivial.rate,
            trivial.p50,
            trivial.p99,
            sql.rate,
            search.rate / trivial.rate.max(f64::MIN_POSITIVE),
            search.rate / sql.rate.max(f64::MIN_POSITIVE),
        )?;
        by_size.insert(
            cars.to_string(),
            json!({
                "sql_by_kind": kinds,
                "search": search.json(),
                "trivial": trivial.json(),
                "sql": sql.json(),
                "search_over_trivial": search.rate / trivial.rate.max(f64::MIN_POSITIVE),
                "api_over_sql": search.rate / sql.rate.max(f64::MIN_POSITIVE),
            }),
        );
    }
    writeln!(
        out,
        "\nEach kind's SQL alone, one at a time (ms): | cars | kind | page p50 | page p99 | count p50 | count p99 |"
    )?;
    for (cars, (_, kinds)) in &sizes {
        for name in KINDS {
            let k = &kinds[name];
            writeln!(
                out,
                "| {cars} | {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
                k["page_p50_ms"].as_f64().unwrap_or(0.0),
                k["page_p99_ms"].as_f64().unwrap_or(0.0),
                k["count_p50_ms"].as_f64().unwrap_or(0.0),
                k["count_p99_ms"].as_f64().unwrap_or(0.0),
            )?;
        }
    }
    let mut figures = json!({ "search": { "sizes": by_size } });
    if let (Some((small, ([s, ..], _))), Some((large, ([l, ..], _)))) =
        (sizes.first(), sizes.last())
        && small != large
    {
        let (p50, p99) = (
            l.p50 / s.p50.max(f64::MIN_POSITIVE),
            l.p99 / s.p99.max(f64::MIN_POSITIVE),
        );
        writeln!(
            out,
            "\nAt {large} cars against {small}: p50 × {p50:.2}, p99 × {p99:.2}."
        )?;
        figures["search"]["scaling"] =
            json!({ "from": small, "to": large, "p50": p50, "p99": p99 });
    }
    Ok((out, figures))
}

/// Seed `database` with `cars`, serve it, and run the three phases.
async fn measure(
    server: &PgConnectOptions,
    server_url: Option<&str>,
    database: &str,
    cars: u32,
    options: &SearchBenchOptions,
) -> Result<([Phase; 3], Value)> {
    let pool = open_pool(
        server,
        database,
        u32::try_from(options.connections).unwrap_or(16).max(2),
        false,
        "fleetledger-bench-search",
    )
    .await?;
    eventstore::MIGRATOR.run(&pool).await?;
    eprintln!("seeding {cars} cars…");
    fleetledger_app::seed::seed(
        &pool,
        &SeedOptions {
            cars,
            customers: 50,
            bookings: cars.saturating_mul(5),
            readings_per_rental: 0,
            days: 90,
            seed: Some(u64::from(cars)),
            chunk: 5_000,
            branches: options.branches,
        },
    )
    .await?;
    sqlx::query("VACUUM ANALYZE events").execute(&pool).await?;

    // The server, on a port of its own choosing.
    let url = crate::bench_projections::database_url(server, server_url, database);
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("FLEETLEDGER_HTTP_ADDR", "127.0.0.1:0")
        .env("FLEETLEDGER_RATE_LIMIT", "0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("KAFKA_BROKERS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting fleetledger serve")?;
    let mut lines = BufReader::new(child.stderr.take().context("serve's stderr")?).lines();
    let addr = loop {
        let Some(line) = lines.next_line().await? else {
            bail!("serve stopped before it listened");
        };
        if line.contains("listening")
            && let Some(rest) = line.split("addr=").nth(1)
        {
            break rest.split_whitespace().next().unwrap_or("").to_owned();
        }
    };
    // Keep reading its log, so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let base = format!("http://{addr}");
    eprintln!("serving on {base}; waiting for the read models…");
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let list = projections::status::list(&pool).await?;
        if list.len() >= projections::names().len() && list.iter().all(|p| p.lag_events == 0) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the read models did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::try_from(options.connections).unwrap_or(16))
        .build()?;
    let (email, _) = DEMO_STAFF[0];
    let signed_in: Value = http
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
                        "variables": { "e": email, "p": DEMO_PASSWORD } }))
        .send()
        .await?
        .json()
        .await?;
    let token = signed_in["data"]["login"]["token"]
        .as_str()
        .with_context(|| format!("signing in: {signed_in}"))?
        .to_owned();
    let branches = Arc::new(seeded_branches(options.branches));
    let seconds = options.seconds;

    eprintln!("searchCars over HTTP…");
    let search_phase = drive(options.connections, seconds, {
        let (http, base, token, branches) =
            (http.clone(), base.clone(), token.clone(), branches.clone());
        move |rng, i| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            let s = search(rng, i, &branches);
            async move { graphql(&http, &base, &token, SEARCH, s.variables).await }
        }
    })
    .await;
    eprintln!("the trivial query…");
    let trivial_phase = drive(options.connections, seconds, {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        move |_, _| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            async move { graphql(&http, &base, &token, "{ me { id } }", json!({})).await }
        }
    })
    .await;
    eprintln!("the same searches as SQL…");
    let sql_phase = drive(options.connections, seconds, {
        let (pool, branches) = (pool.clone(), branches.clone());
        move |rng, i| {
            let pool = pool.clone();
            let s = search(rng, i, &branches);
            async move {
                projections::search::find(&pool, &s.query).await?;
                projections::search::count(&pool, &s.query, 100).await?;
                Ok(())
            }
        }
    })
    .await;
    eprintln!("each kind of search alone…");
    let kinds = by_kind(&pool, &branches).await?;
    let _ = child.kill().await;
    pool.close().await;
    Ok(([search_phase, trivial_phase, sql_phase], kinds))
}

/// The kinds of the mix, in `search`'s order.
const KINDS: [&str; 4] = ["branch", "near", "class_price", "text"];

/// Each kind of search's SQL on one connection, one at a time: the median cost of its page and
/// of its count, so a report says which kind the time goes to.
async fn by_kind(pool: &PgPool, branches: &[(String, String, String, f64, f64)]) -> Result<Value> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = serde_json::Map::new();
    for (kind, name) in KINDS.iter().enumerate() {
        let (mut pages, mut counts) = (Vec::new(), Vec::new());
        for round in 0..60u64 {
            let s = search(&mut rng, round * 4 + kind as u64, branches);
            let started = Instant::now();
            projections::search::find(pool, &s.query).await?;
            pages.push(started.elapsed());
            let started = Instant::now();
            projections::search::count(pool, &s.query, 100).await?;
            counts.push(started.elapsed());
        }
        let (page, count) = (Phase::of(pages, 0, 1.0), Phase::of(counts, 0, 1.0));
        out.insert(
            (*name).to_owned(),
            json!({ "page_p50_ms": page.p50, "page_p99_ms": page.p99,
                    "count_p50_ms": count.p50, "count_p99_ms": count.p99 }),
        );
    }
    Ok(Value::Object(out))
}

async fn graphql(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    query: &str,
    variables: Value,
) -> Result<()> {
    let body: Value = http
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await?
        .json()
        .await?;
    if body.get("errors").is_some() {
        bail!("{body}");
    }
    Ok(())
}

/// `clients` tasks each calling `request` in turn for `seconds`: every success's latency.
async fn drive<F, Fut>(clients: u64, seconds: u64, request: F) -> Phase
where
    F: Fn(&mut StdRng, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let until = Instant::now() + Duration::from_secs(seconds);
    let began = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(client);
                let (mut latencies, mut errors, mut i) = (Vec::new(), 0usize, client);
                let mut first_error = None;
                while Instant::now() < until {
                    let started = Instant::now();
                    match request(&mut rng, i).await {
                        Ok(()) => latencies.push(started.elapsed()),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e.to_string());
                        }
                    }
                    i += 1;
                }
                if let Some(e) = first_error {
                    eprintln!("client {client}: {errors} errors, the first: {e}");
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        if let Ok((l, e)) = task.await {
            latencies.extend(l);
            errors += e;
        }
    }
    Phase::of(latencies, errors, began.elapsed().as_secs_f64())
}
