//! `fleetledger bench hostile`: what the API's attacks cost it, and whether `/healthz` keeps
//! answering meanwhile, against a running `fleetledger serve`.
//!
//! 1. **Baseline**: `/healthz` alone, one request every 10 ms for `--seconds`: its latencies.
//! 2. For each attack (a 900-byte fragment bomb that expands to 2^25 fields, a batch of 624
//!    operations, 400 aliases of one field), `--concurrency` clients send it over and over for
//!    `--seconds` while `/healthz` is polled as in the baseline. Each answer must carry the
//!    attack's limit code; its latency (client-observed, so the server's whole cost of
//!    refusing it) is recorded, with `/healthz`'s latencies during the attack.
//!
//! 3. **WebSocket flood**: each client opens a WebSocket as an account that may read the log
//!    (`--email`/`--password`, by default the bootstrap admin's), fills it with as many
//!    subscriptions to the log as one connection may hold, then sends `subscribe` after
//!    `subscribe` for `--seconds`; each must be refused with `TOO_MANY_OPERATIONS`. Its latency
//!    is from sending the message to reading the refusal.
//!
//! Reported per attack: answers per second, the answer's p50/p99/max, and `/healthz`'s p50,
//! p99 and max beside the baseline's, as a ratio. Run the server with `FLEETLEDGER_RATE_LIMIT=0`
//! so the rate limit does not answer first.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

#[derive(clap::Args, Debug, Clone)]
pub struct HostileBenchOptions {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Attacking clients at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    concurrency: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// An account that may read the log (ADMIN, AUDITOR or INTEGRATOR), for the WebSocket
    /// flood.
    #[arg(long, env = "FLEETLEDGER_BOOTSTRAP_ADMIN_EMAIL")]
    email: String,
    /// Its password.
    #[arg(
        long,
        env = "FLEETLEDGER_BOOTSTRAP_ADMIN_PASSWORD",
        hide_env_values = true
    )]
    password: String,
}

/// An attack and the code that must answer it.
struct Attack {
    name: &'static str,
    body: Value,
    code: &'static str,
}

fn attacks() -> Vec<Attack> {
    let mut bomb = String::from("{...F0}");
    for i in 0..25 {
        bomb.push_str(&format!(
            " fragment F{i} on Query{{...F{n} ...F{n}}}",
            n = i + 1
        ));
    }
    bomb.push_str(" fragment F25 on Query{__typename}");
    let one = json!({ "query": "{ branches { code } }" });
    let aliases: String = (0..400)
        .map(|i| format!("a{i}: branches {{ code }} "))
        .collect();
    vec![
        Attack {
            name: "fragment bomb (2^25 fields)",
            body: json!({ "query": bomb }),
            code: "QUERY_TOO_COMPLEX",
        },
        Attack {
            name: "batch of 624 operations",
            body: Value::Array(vec![one; 624]),
            code: "BATCH_TOO_LARGE",
        },
        Attack {
            name: "400 aliases",
            body: json!({ "query": format!("{{ {aliases} }}") }),
            code: "QUERY_TOO_COMPLEX",
        },
    ]
}

/// Latencies in milliseconds, summarised.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Summary {
    count: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn summary(mut ms: Vec<f64>) -> Summary {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if ms.is_empty() {
            0.0
        } else {
            ms[((ms.len() - 1) as f64 * q).round() as usize]
        }
    };
    Summary {
        count: ms.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}

/// Poll `/healthz` every 10 ms until `until`: each answer's latency.
async fn poll_health(http: reqwest::Client, url: String, until: Instant) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        let res = http.get(&url).send().await.context("GET /healthz")?;
        if !res.status().is_success() {
            bail!("/healthz answered {}", res.status());
        }
        out.push(started.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(out)
}

/// One client sending `body` until `until`: each answer's latency, checked for `code`.
async fn attack(
    http: reqwest::Client,
    url: String,
    body: Value,
    code: &'static str,
    until: Instant,
) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        let answer: Value = http
            .post(&url)
            .json(&body)
            .send()
            .await
            .context("POST /graphql")?
            .json()
            .await
            .context("the answer is not JSON")?;
        out.push(started.elapsed().as_secs_f64() * 1e3);
        let got = &answer["errors"][0]["extensions"]["code"];
        if got != code {
            bail!("expected {code}, got {answer}");
        }
    }
    Ok(out)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Send one graphql-transport-ws message.
async fn send(ws: &mut Socket, message: Value) -> Result<()> {
    use futures::SinkExt as _;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        message.to_string(),
    ))
    .await
    .context("WebSocket send")
}

/// The next message about operation `id` (others are skipped), within 10 s.
async fn next_of(ws: &mut Socket, id: &str) -> Result<Value> {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no WebSocket message within 10 s")?
            .context("the server closed the WebSocket")??;
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(text.as_str())?;
                if value["id"] == id || value["type"] == "connection_ack" && id.is_empty() {
                    return Ok(value);
                }
            }
            Message::Close(frame) => bail!("the server closed the WebSocket: {frame:?}"),
            _ => {}
        }
    }
}

/// The first error code of an operation's message.
fn error_code(message: &Value) -> Option<&str> {
    let errors = match message["type"].as_str() {
        Some("next") => &message["payload"]["errors"],
        _ => &message["payload"],
    };
    errors[0]["extensions"]["code"].as_str()
}

/// One flooding client: a WebSocket filled to its operations' limit, then `subscribe` after
/// `subscribe` until `until`, each of which must be refused.
async fn flood(ws_url: String, token: String, after: String, until: Instant) -> Result<Vec<f64>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = ws_url.as_str().into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws"
            .parse()
            .context("subprotocol header")?,
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .context("WebSocket upgrade")?;
    send(
        &mut ws,
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }),
    )
    .await?;
    next_of(&mut ws, "").await?;
    let subscribe = |id: u64| {
        json!({ "id": id.to_string(), "type": "subscribe", "payload": {
            "query": "subscription($a: String) { events(afterPosition: $a) { position } }",
            "variables": { "a": after },
        } })
    };
    // Fill the connection: a subscription, then a quick query as a probe, until the probe
    // finds no place left (places are taken in the order the messages arrive).
    let mut id = 0_u64;
    loop {
        id += 1;
        send(&mut ws, subscribe(id)).await?;
        let probe = format!("probe-{id}");
        send(
            &mut ws,
            json!({ "id": probe, "type": "subscribe", "payload": { "query": "{ __typename }" } }),
        )
        .await?;
        let answer = next_of(&mut ws, &probe).await?;
        match error_code(&answer) {
            None => {}
            Some("TOO_MANY_OPERATIONS") => break,
            Some(_) => bail!("the probe was refused: {answer}"),
        }
        if id > 10_000 {
            bail!("10,000 subscriptions on one connection were all taken");
        }
    }
    let mut out = Vec::new();
    while Instant::now() < until {
        id += 1;
        let started = Instant::now();
        send(&mut ws, subscribe(id)).await?;
        let answer = next_of(&mut ws, &id.to_string()).await?;
        out.push(started.elapsed().as_secs_f64() * 1e3);
        if error_code(&answer) != Some("TOO_MANY_OPERATIONS") {
            bail!("expected TOO_MANY_OPERATIONS, got {answer}");
        }
    }
    Ok(out)
}

/// A token for `email`, and the log's head as the projections see it.
async fn sign_in(
    http: &reqwest::Client,
    graphql: &str,
    options: &HostileBenchOptions,
) -> Result<(String, String)> {
    let answer: Value = http
        .post(graphql)
        .json(&json!({
            "query": "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
            "variables": { "e": options.email, "p": options.password },
        }))
        .send()
        .await?
        .json()
        .await?;
    let token = answer["data"]["login"]["token"]
        .as_str()
        .with_context(|| format!("cannot log in as {}: {answer}", options.email))?
        .to_owned();
    let answer: Value = http
        .post(graphql)
        .bearer_auth(&token)
        .json(&json!({ "query": "{ projections { position } }" }))
        .send()
        .await?
        .json()
        .await?;
    let head = answer["data"]["projections"]
        .as_array()
        .and_then(|all| all.first())
        .and_then(|p| p["position"].as_str())
        .with_context(|| format!("cannot read the projections' position: {answer}"))?
        .to_owned();
    Ok((token, head))
}

#[derive(serde::Serialize)]
struct AttackReport {
    attack: &'static str,
    answers_per_second: f64,
    answer: Summary,
    healthz: Summary,
    /// `/healthz` p99 during the attack over its p99 at rest.
    healthz_p99_ratio: f64,
}

pub async fn run(options: HostileBenchOptions) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = options.url.trim_end_matches('/').to_owned();
    let (health, graphql) = (format!("{base}/healthz"), format!("{base}/graphql"));
    let phase = Duration::from_secs(options.seconds);
    let (token, head) = sign_in(&http, &graphql, &options).await?;
    let ws_url = format!("{}/graphql", base.replacen("http", "ws", 1));
    let baseline =
        summary(poll_health(http.clone(), health.clone(), Instant::now() + phase).await?);
    let mut reports = Vec::new();
    for a in attacks() {
        let until = Instant::now() + phase;
        let poller = tokio::spawn(poll_health(http.clone(), health.clone(), until));
        let clients: Vec<_> = (0..options.concurrency)
            .map(|_| {
                tokio::spawn(attack(
                    http.clone(),
                    graphql.clone(),
                    a.body.clone(),
                    a.code,
                    until,
                ))
            })
            .collect();
        let started = Instant::now();
        let mut answers = Vec::new();
        for client in clients {
            answers.extend(client.await??);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let healthz = summary(poller.await??);
        reports.push(AttackReport {
            attack: a.name,
            answers_per_second: answers.len() as f64 / elapsed,
            answer: summary(answers),
            healthz,
            healthz_p99_ratio: healthz.p99_ms / baseline.p99_ms.max(0.001),
        });
    }
    {
        let until = Instant::now() + phase;
        let poller = tokio::spawn(poll_health(http.clone(), health.clone(), until));
        let clients: Vec<_> = (0..options.concurrency)
            .map(|_| tokio::spawn(flood(ws_url.clone(), token.clone(), head.clone(), until)))
            .collect();
        let started = Instant::now();
        let mut answers = Vec::new();
        for client in clients {
            answers.extend(client.await??);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let healthz = summary(poller.await??);
        reports.push(AttackReport {
            attack: "WebSocket flood (subscriptions past the limit)",
            answers_per_second: answers.len() as f64 / elapsed,
            answer: summary(answers),
            healthz,
            healthz_p99_ratio: healthz.p99_ms / baseline.p99_ms.max(0.001),
        });
    }
    if options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "baseline_healthz": baseline,
                "attacks": reports,
                "concurrency": options.concurrency,
                "seconds": options.seconds,
            }))?
        );
        return Ok(());
    }
    println!(
        "/healthz at rest: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} requests)",
        baseline.p50_ms, baseline.p99_ms, baseline.max_ms, baseline.count
    );
    println!(
        "| attack | answers/s | answer p50 / p99 / max (ms) | /healthz p50 / p99 / max (ms) | /healthz p99 vs at rest |"
    );
    println!("|---|---|---|---|---|");
    for r in &reports {
        println!(
            "| {} | {:.0} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2}x |",
            r.attack,
            r.answers_per_second,
            r.answer.p50_ms,
            r.answer.p99_ms,
            r.answer.max_ms,
            r.healthz.p50_ms,
            r.healthz.p99_ms,
            r.healthz.max_ms,
            r.healthz_p99_ratio
        );
    }
    Ok(())
}
