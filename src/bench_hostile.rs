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
//! Reported per attack: answers per second, the answer's p50/p99/max, and `/healthz`'s p50,
//! p99 and max beside the baseline's, as a ratio. Run the server with `FLEETLEDGER_RATE_LIMIT=0`
//! so the rate limit does not answer first.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct HostileBenchOptions {
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

#[derive(serde::Serialize)]
struct AttackReport {
    attack: &'static str,
    answers_per_second: f64,
    answer: Summary,
    healthz: Summary,
    /// `/healthz` p99 during the attack over its p99 at rest.
    healthz_p99_ratio: f64,
}

pub(crate) async fn run(options: HostileBenchOptions) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = options.url.trim_end_matches('/').to_owned();
    let (health, graphql) = (format!("{base}/healthz"), format!("{base}/graphql"));
    let phase = Duration::from_secs(options.seconds);
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
