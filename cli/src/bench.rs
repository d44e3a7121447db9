//! `taskmesh bench`: an SLA load check. Drives HTTP/2 calls of one function
//! through the router at a fixed rate (open loop: call `i` is due at
//! `start + i / rps` whether or not earlier calls answered, and its latency
//! counts from when it was due, so a slow server cannot hide its queueing),
//! then reports p50/p95/p99/max, throughput and errors by code, and fails
//! (exit code 9) when an `--sla` bound is breached.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use http::Method;
use serde::Serialize;
use serde_json::Value;

use crate::api::{H2Client, Output, SlaBreached};
use crate::config::Config;
use crate::functions::read_data;

/// Calls waiting for an answer at most; beyond it the bench stops sending
/// (the server is far behind) and says so.
const MAX_OUTSTANDING: usize = 20_000;

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    taskmesh bench digits --data @examples/digits/sample.json --rps 200 --duration 30s\n  \
    taskmesh bench digits --data @examples/digits/sample.json --rps 500 --duration 1m \\\n    \
    --connections 8 --sla p95=50ms,p99=200ms,errors=0.1% --out bench.json")]
pub struct BenchArgs {
    /// Function name.
    pub name: String,
    /// JSON input of every call, or @FILE (@- for stdin).
    #[arg(long)]
    pub data: String,
    /// Calls per second to send (open loop).
    #[arg(long)]
    pub rps: f64,
    /// How long to send: 500ms, 30s, 2m.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Duration,
    /// HTTP/2 connections to spread the calls over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Bounds that must hold, e.g. p95=500ms,p99=1s,errors=1% (p50, p90, p95,
    /// p99, max: durations; errors: the share of calls not answered 2xx).
    #[arg(long)]
    pub sla: Option<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Call this version (default: the function's default route).
    #[arg(long)]
    pub version: Option<u32>,
    #[arg(long)]
    pub router_url: Option<String>,
}

/// `500ms`, `30s`, `2m`, `250us`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 30s, 2m)"))?;
    let seconds = match unit {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{text:?}: the unit is one of us, ms, s, m")),
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("{text:?} must be more than zero"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// One bound of `--sla`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bound {
    /// `p50`, `p90`, `p95`, `p99`, `max` or `errors`.
    pub metric: String,
    /// Seconds for a latency, a fraction (0.01 = 1 %) for errors.
    pub limit: f64,
}

/// Reads `p95=500ms,errors=1%`.
pub fn parse_sla(text: &str) -> Result<Vec<Bound>> {
    let mut bounds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (metric, value) = part
            .split_once('=')
            .with_context(|| format!("--sla: {part:?} is not METRIC=VALUE"))?;
        let limit = match metric {
            "p50" | "p90" | "p95" | "p99" | "max" => parse_duration(value)
                .map_err(anyhow::Error::msg)?
                .as_secs_f64(),
            "errors" => {
                let (number, scale) = match value.strip_suffix('%') {
                    Some(n) => (n, 100.0),
                    None => (value, 1.0),
                };
                let n: f64 = number
                    .parse()
                    .with_context(|| format!("--sla errors={value}: not a number"))?;
                if !(0.0..=scale).contains(&n) {
                    bail!("--sla errors={value}: between 0% and 100%");
                }
                n / scale
            }
            other => bail!("--sla: unknown bound {other:?} (p50, p90, p95, p99, max, errors)"),
        };
        bounds.push(Bound {
            metric: metric.to_string(),
            limit,
        });
    }
    if bounds.is_empty() {
        bail!("--sla: no bound given");
    }
    Ok(bounds)
}

/// What one call came to: its latency from when it was due, and its status
/// (`None`: not answered) with the error code of a refusal.
struct Outcome {
    latency: f64,
    status: Option<u16>,
    code: Option<String>,
}

/// The report (`--out`, `--output json`).
#[derive(Debug, Serialize)]
pub struct Report {
    pub function: String,
    pub target_rps: f64,
    pub duration_s: f64,
    pub connections: usize,
    /// Calls sent and answered (any status), and those not answered.
    pub sent: usize,
    pub answered: usize,
    pub unreachable: usize,
    /// Answers per second over the run (first send to last answer).
    pub throughput_rps: f64,
    /// Latency in seconds, from when each call was due.
    pub latency_s: Latency,
    /// Answers by status (`"200"`, `"429"`, …).
    pub statuses: BTreeMap<String, usize>,
    /// Calls that were not 2xx, by the contract's error code (`unreachable`
    /// when no answer came, `http_<status>` for a body without a code).
    pub errors: BTreeMap<String, usize>,
    pub error_rate: f64,
    pub sla: Vec<Judged>,
    /// Whether every SLA bound held (true without `--sla`).
    pub sla_met: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Serialize)]
pub struct Judged {
    #[serde(flatten)]
    pub bound: Bound,
    pub actual: f64,
    pub met: bool,
}

/// The `q` quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize(args: &BenchArgs, bounds: &[Bound], outcomes: Vec<Outcome>, took: f64) -> Report {
    let mut latencies: Vec<f64> = outcomes.iter().map(|o| o.latency).collect();
    latencies.sort_by(f64::total_cmp);
    let mut statuses = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut unreachable = 0;
    for o in &outcomes {
        match o.status {
            Some(s) => *statuses.entry(s.to_string()).or_insert(0) += 1,
            None => unreachable += 1,
        }
        if !o.status.is_some_and(|s| (200..300).contains(&s)) {
            let code = o.code.clone().unwrap_or_else(|| match o.status {
                Some(s) => format!("http_{s}"),
                None => "unreachable".to_string(),
            });
            *errors.entry(code).or_insert(0) += 1;
        }
    }
    let sent = outcomes.len();
    let failed: usize = errors.values().sum();
    let error_rate = if sent == 0 {
        0.0
    } else {
        failed as f64 / sent as f64
    };
    let latency = Latency {
        p50: quantile(&latencies, 0.50),
        p90: quantile(&latencies, 0.90),
        p95: quantile(&latencies, 0.95),
        p99: quantile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or(0.0),
        mean: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
    };
    let sla: Vec<Judged> = bounds
        .iter()
        .map(|b| {
            let actual = match b.metric.as_str() {
                "p50" => latency.p50,
                "p90" => latency.p90,
                "p95" => latency.p95,
                "p99" => latency.p99,
                "max" => latency.max,
                _ => error_rate,
            };
            Judged {
                bound: b.clone(),
                actual,
                met: actual <= b.limit,
            }
        })
        .collect();
    Report {
        function: args.name.clone(),
        target_rps: args.rps,
        duration_s: args.duration.as_secs_f64(),
        connections: args.connections,
        sent,
        answered: sent - unreachable,
        unreachable,
        throughput_rps: (sent - unreachable) as f64 / took.max(1e-9),
        latency_s: latency,
        statuses,
        errors,
        error_rate,
        sla_met: sla.iter().all(|j| j.met),
        sla,
    }
}

fn ms(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2} s")
    } else {
        format!("{:.2} ms", seconds * 1e3)
    }
}

fn print_text(r: &Report) {
    println!(
        "taskmesh bench {}: {} calls in {:.1} s at {:.0}/s over {} connection(s); {:.1} answers/s",
        r.function, r.sent, r.duration_s, r.target_rps, r.connections, r.throughput_rps
    );
    let l = &r.latency_s;
    println!(
        "latency   p50 {}  p90 {}  p95 {}  p99 {}  max {}  (from when each call was due)",
        ms(l.p50),
        ms(l.p90),
        ms(l.p95),
        ms(l.p99),
        ms(l.max)
    );
    let statuses: Vec<String> = r
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    println!("statuses  {}", statuses.join("  "));
    if !r.errors.is_empty() {
        let errors: Vec<String> = r.errors.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        println!(
            "errors    {:.2} %  {}",
            r.error_rate * 100.0,
            errors.join("  ")
        );
    }
    for j in &r.sla {
        let show = |v: f64| {
            if j.bound.metric == "errors" {
                format!("{:.2} %", v * 100.0)
            } else {
                ms(v)
            }
        };
        println!(
            "sla       {} <= {}: {} ({})",
            j.bound.metric,
            show(j.bound.limit),
            if j.met { "ok" } else { "BREACHED" },
            show(j.actual)
        );
    }
}

/// A progress bar on stderr, when it is a terminal.
fn progress(started: Instant, total: Duration, sent: usize, done: usize, failed: usize) {
    let fraction = (started.elapsed().as_secs_f64() / total.as_secs_f64()).min(1.0);
    let width = 30;
    let filled = (fraction * width as f64) as usize;
    eprint!(
        "\r[{}{}] {:>5.1}/{:.1} s  sent {sent}  answered {done}  errors {failed}   ",
        "=".repeat(filled),
        " ".repeat(width - filled),
        started.elapsed().as_secs_f64().min(total.as_secs_f64()),
        total.as_secs_f64()
    );
}

pub async fn run(config: &Config, args: BenchArgs) -> Result<()> {
    if !(args.rps.is_finite() && args.rps > 0.0 && args.rps <= 1_000_000.0) {
        bail!("--rps must be more than 0 and at most 1000000");
    }
    if args.connections == 0 || args.connections > 1024 {
        bail!("--connections must be 1 to 1024");
    }
    let bounds = args
        .sla
        .as_deref()
        .map(parse_sla)
        .transpose()?
        .unwrap_or_default();
    let body = read_data(&args.data)?;
    serde_json::from_slice::<Value>(&body).context("--data is not JSON")?;
    let base = config.router_url.trim_end_matches('/');
    let mut url = format!("{base}/v1/functions/{}/invoke", args.name);
    if let Some(v) = args.version {
        url.push_str(&format!("?version={v}"));
    }
    let clients: Vec<Arc<H2Client>> = (0..args.connections)
        .map(|_| Arc::new(H2Client::new(config.key())))
        .collect();
    // One call first, outside the measurement: it must reach the function
    // (a wrong name or key is an error now, not a report of 100 % errors).
    let first = clients[0]
        .send(Method::POST, &url, Some("application/json"), body.clone())
        .await?;
    if matches!(first.status.as_u16(), 401 | 403 | 404) {
        first
            .json()
            .with_context(|| format!("calling {} before the run", args.name))?;
    }

    let total = (args.rps * args.duration.as_secs_f64()).round().max(1.0) as usize;
    let outcomes = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    let mut last_progress = Instant::now();
    let mut stopped_early = false;
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / args.rps);
        tokio::time::sleep_until(due.into()).await;
        while running.try_join_next().is_some() {}
        if running.len() >= MAX_OUTSTANDING {
            stopped_early = true;
            break;
        }
        let (client, url, body) = (
            clients[i % clients.len()].clone(),
            url.clone(),
            body.clone(),
        );
        let (outcomes_, failed_) = (outcomes.clone(), failed.clone());
        running.spawn(async move {
            let reply = client
                .send(Method::POST, &url, Some("application/json"), body)
                .await;
            let latency = due.elapsed().as_secs_f64();
            let outcome = match reply {
                Ok(r) => {
                    let status = r.status.as_u16();
                    let code = (!(200..300).contains(&status))
                        .then(|| serde_json::from_slice::<Value>(&r.body).ok())
                        .flatten()
                        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
                    Outcome {
                        latency,
                        status: Some(status),
                        code,
                    }
                }
                Err(_) => Outcome {
                    latency,
                    status: None,
                    code: None,
                },
            };
            if !outcome.status.is_some_and(|s| (200..300).contains(&s)) {
                failed_.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            outcomes_.lock().expect("outcomes").push(outcome);
        });
        if tty && last_progress.elapsed() >= Duration::from_millis(200) {
            last_progress = Instant::now();
            let done = outcomes.lock().expect("outcomes").len();
            let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
            progress(started, args.duration, i + 1, done, failed);
        }
    }
    while running.join_next().await.is_some() {}
    let took = started.elapsed().as_secs_f64();
    if tty {
        eprintln!();
    }
    if stopped_early {
        eprintln!(
            "taskmesh bench: stopped sending: {MAX_OUTSTANDING} calls were waiting for an answer"
        );
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("outcomes"));
    let report = summarize(&args, &bounds, outcomes, took);
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match config.output {
        Output::Json => println!("{json}"),
        Output::Text => print_text(&report),
    }
    if !report.sla_met || stopped_early {
        let mut breached: Vec<String> = report
            .sla
            .iter()
            .filter(|j| !j.met)
            .map(|j| format!("{} {} > {}", j.bound.metric, j.actual, j.bound.limit))
            .collect();
        if stopped_early {
            breached.push("the server fell too far behind".to_string());
        }
        return Err(SlaBreached(breached).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_bounds_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        let sla = parse_sla("p95=500ms, errors=1%,max=2s").unwrap();
        assert_eq!(sla[0].limit, 0.5);
        assert!((sla[1].limit - 0.01).abs() < 1e-12);
        assert_eq!(sla[2].metric, "max");
        assert!(parse_sla("p42=1s").is_err());
        assert!(parse_sla("errors=140%").is_err());
        assert!(parse_sla("p95").is_err());
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.95), 95.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
