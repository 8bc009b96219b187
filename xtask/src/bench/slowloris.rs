//! Scenario `slowloris`: whether a normal client still gets served while N idle
//! connections (PROXY header, then nothing) and N slow-header ones (PROXY header, then a
//! request head dripped a byte at a time, never finished) are held against trustgate
//! (its default limits and timeouts) and nginx (the same connection budget, its default
//! timeouts). Each proxy is started fresh per round; rounds alternate the proxies.

use std::fmt::Write as _;
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::client;
use super::peers::{self, Limits, NGINX_LISTENERS, NGINX_UPSTREAM_KEEPALIVE, Target};
use super::procs::{self, NGINX, Scratch, TASKSET};
use super::{Measured, loadavg, median};

const MEASURED: [Target; 2] = [Target::Trustgate, Target::Nginx];
const PROXY_CPU: &str = "1";
const REST_CPU: &str = "0";
/// trustgate's default `max_clients` (`DEFAULT_MAX_CLIENTS` in proxy's config), which
/// nginx's client budget matches.
const CLIENT_BUDGET: usize = 512;
/// nginx's `worker_connections`: the client budget plus what else takes a connection there.
const NGINX_WORKER_CONNECTIONS: usize = CLIENT_BUDGET + NGINX_UPSTREAM_KEEPALIVE + NGINX_LISTENERS;
/// Idle connections, and again slow-header connections: each group alone exceeds both budgets.
const HOSTILE: usize = 600;
/// The slow connections' request head, sent a byte per [`DRIP`] (the first with the
/// PROXY header), then `a` for ever: the head never ends.
const SLOW_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
const DRIP: Duration = Duration::from_secs(5);
/// The normal client's new-connection requests per second.
const RATE_PER_S: u32 = 10;
/// Bound on each step (connect, write, read) of every connection opened here.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on opening all the hostile connections.
const OPEN_LIMIT: Duration = Duration::from_secs(30);

/// One proxy's round.
struct Round {
    /// Latency of each normal request in ms, or why it failed.
    requests: Vec<Result<f64>>,
    idle: Held,
    slow: Held,
}

/// Hostile connections opened, and still open at the end of the window.
#[derive(Default)]
struct Held {
    opened: usize,
    open_at_end: usize,
}

pub fn run(opts: &super::Options, trustgate: &str) -> Result<Measured> {
    procs::require(&[NGINX, TASKSET])?;
    let load_before = loadavg();
    let scratch = Scratch::new("slowloris")?;
    let cert = peers::certificate(&scratch)?;
    let config = peers::trustgate_config(&scratch, &cert, Limits::Defaults)?;
    let trustgate_limits = trustgate_summary(trustgate, &config)?;
    let _upstream = peers::start_upstream(&scratch, REST_CPU)?;
    let window = Duration::from_secs(opts.window);
    let mut rounds: Vec<(Target, Vec<Round>)> = MEASURED.iter().map(|&t| (t, Vec::new())).collect();
    let mut raw = String::new();
    for round in 0..opts.rounds {
        for (target, results) in rounds.iter_mut() {
            let proc = match target {
                Target::Nginx => {
                    peers::start_nginx_with(&scratch, PROXY_CPU, &cert, NGINX_WORKER_CONNECTIONS)?
                }
                Target::Trustgate => {
                    peers::start_trustgate_with(&scratch, PROXY_CPU, trustgate, &config)?
                }
                other => bail!("{} is not measured here (see MEASURED)", other.name()),
            };
            let r = measure(*target, window).with_context(|| {
                format!(
                    "measuring {}; its log ends:\n{}",
                    target.name(),
                    proc.log_tail(&scratch.path)
                )
            })?;
            let line = describe(round, *target, &r);
            eprintln!("{line}");
            let _ = writeln!(raw, "{line}");
            results.push(r);
            drop(proc);
        }
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} rounds, each proxy started fresh per round, trustgate then nginx. Per round: {HOSTILE} \
         idle connections (PROXY v1 header, then nothing) and {HOSTILE} slow-header ones (PROXY \
         header, then `GET / HTTP/1.1…` one byte every {} s, never finished) opened alternately \
         straight to the proxy; then for {} s a normal client makes {RATE_PER_S} new-connection \
         `GET /` per second, each writing its own PROXY v1 header (no front), {} s bound per \
         connect/write/read; then the hostile connections still open (not closed, nothing \
         received) are counted. Proxy pinned to CPU {PROXY_CPU}, upstream nginx to CPU \
         {REST_CPU}; this client is not pinned.\n",
        opts.rounds,
        DRIP.as_secs(),
        opts.window,
        IO_TIMEOUT.as_secs(),
    );
    let _ = writeln!(
        text,
        "- trustgate: no connection-limit or timeout key set (its defaults; `max_concurrent_streams = 128`, as in every scenario, does not apply to HTTP/1.1); `trustgate check` says: {}",
        trustgate_limits
    );
    let _ = writeln!(
        text,
        "- nginx: one worker, `worker_connections {NGINX_WORKER_CONNECTIONS}` ({CLIENT_BUDGET} \
         clients + {NGINX_UPSTREAM_KEEPALIVE} upstream keep-alive + {NGINX_LISTENERS} \
         listeners); no timeout set, so its defaults: `client_header_timeout 60s` (also bounds \
         the PROXY header), `keepalive_timeout 75s`\n"
    );
    let _ = writeln!(
        text,
        "| proxy | normal requests OK (median) | OK min–max | p50 ms | p99 ms | idle held at end \
         (median of {HOSTILE}) | slow held at end (median of {HOSTILE}) |"
    );
    let _ = writeln!(text, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (target, results) in &rounds {
        let ok: Vec<f64> = results.iter().map(success_percent).collect();
        let min = ok.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ok.iter().copied().fold(0.0, f64::max);
        let mut ms: Vec<f64> = results
            .iter()
            .flat_map(|r| r.requests.iter().filter_map(|q| q.as_ref().ok().copied()))
            .collect();
        ms.sort_by(f64::total_cmp);
        let held = |f: fn(&Round) -> usize| {
            median(&results.iter().map(|r| f(r) as f64).collect::<Vec<_>>())
        };
        let _ = writeln!(
            text,
            "| {} | {:.1}% | {:.1}–{:.1}% | {} | {} | {:.0} | {:.0} |",
            target.name(),
            median(&ok),
            min,
            max,
            percentile(&ms, 0.50),
            percentile(&ms, 0.99),
            held(|r| r.idle.open_at_end),
            held(|r| r.slow.open_at_end),
        );
    }
    let _ = write!(
        text,
        "\np50/p99: over the successful requests of all rounds (— when none succeeded). \
         Every round:\n\n```\n{raw}```\n"
    );
    Ok(Measured { load_before, text })
}

/// One round against `target`, already started: a served request first, then the hostile
/// connections, then the window.
fn measure(target: Target, window: Duration) -> Result<Round> {
    let port = target.plain_port();
    drop(client::get(port, 0, IO_TIMEOUT).context("a request before the hostile connections")?);
    let deadline = Instant::now() + OPEN_LIMIT;
    let (mut idle, mut slow) = (Vec::new(), Vec::new());
    for i in 0..2 * HOSTILE {
        if Instant::now() > deadline {
            break;
        }
        let (group, first) = if i % 2 == 0 {
            (&mut idle, &[][..])
        } else {
            (&mut slow, &SLOW_HEAD[..1])
        };
        if let Ok(conn) = client::connect(port, i, first, IO_TIMEOUT) {
            group.push(conn);
        }
    }
    for conn in &slow {
        conn.set_nonblocking(true)?;
    }
    let normal = thread::spawn(move || normal_client(port, window));
    let start = Instant::now();
    let mut next = 1;
    while let Some(left) = window.checked_sub(start.elapsed()) {
        thread::sleep(left.min(DRIP));
        if start.elapsed() >= window {
            break;
        }
        let byte = SLOW_HEAD.get(next).copied().unwrap_or(b'a');
        next += 1;
        for conn in &mut slow {
            // A closed connection fails here; the count at the end says which are open.
            let _ = std::io::Write::write_all(conn, &[byte]);
        }
    }
    let requests = normal
        .join()
        .map_err(|_| anyhow::anyhow!("the normal client panicked"))?;
    Ok(Round {
        requests,
        idle: count(&idle),
        slow: count(&slow),
    })
}

fn count(conns: &[TcpStream]) -> Held {
    Held {
        opened: conns.len(),
        open_at_end: conns.iter().filter(|c| client::still_open(c)).count(),
    }
}

/// [`RATE_PER_S`] new-connection requests per second for `window`, each on its own
/// thread so a slow one does not delay the next; their latencies in ms.
fn normal_client(port: u16, window: Duration) -> Vec<Result<f64>> {
    let start = Instant::now();
    let period = Duration::from_secs(1) / RATE_PER_S;
    let mut handles = Vec::new();
    for i in 0.. {
        let at = period * i;
        if at >= window {
            break;
        }
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
        handles.push(thread::spawn(move || {
            let began = Instant::now();
            client::get(port, 2 * HOSTILE + i as usize, IO_TIMEOUT)?;
            Ok(began.elapsed().as_secs_f64() * 1e3)
        }));
    }
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("request thread panicked")))
        })
        .collect()
}

fn success_percent(r: &Round) -> f64 {
    let ok = r.requests.iter().filter(|q| q.is_ok()).count();
    100.0 * ok as f64 / r.requests.len().max(1) as f64
}

/// The `q` quantile of sorted `ms`, to two decimals, or `—` when there is none.
fn percentile(ms: &[f64], q: f64) -> String {
    if ms.is_empty() {
        return "—".into();
    }
    format!("{:.2}", ms[((ms.len() - 1) as f64 * q) as usize])
}

fn describe(round: usize, target: Target, r: &Round) -> String {
    let ok = r.requests.iter().filter(|q| q.is_ok()).count();
    let first_failure = r
        .requests
        .iter()
        .find_map(|q| q.as_ref().err())
        .map_or_else(|| "none".to_string(), |e| format!("{e:#}"));
    // Request i starts at i / RATE_PER_S s into the window.
    let at = |i: Option<usize>| {
        i.map_or_else(
            || "never".to_string(),
            |i| format!("{:.1} s", i as f64 / f64::from(RATE_PER_S)),
        )
    };
    let first_ok = at(r.requests.iter().position(|q| q.is_ok()));
    let last_failure = at(r.requests.iter().rposition(|q| q.is_err()));
    format!(
        "round {round} | {} | normal OK {ok}/{} (first OK at {first_ok}, last failure at \
         {last_failure}) | idle open at end {}/{} opened | slow open at end {}/{} opened | first \
         failure: {first_failure}",
        target.name(),
        r.requests.len(),
        r.idle.open_at_end,
        r.idle.opened,
        r.slow.open_at_end,
        r.slow.opened,
    )
}

/// What `trustgate check` reports for the limits and the PROXY header wait, and any line
/// naming a timeout: the defaults as the measured binary has them.
fn trustgate_summary(binary: &str, config: &str) -> Result<String> {
    let out = Command::new(binary)
        .args(["check", "-c", config])
        .output()
        .with_context(|| format!("running `{binary} check`"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("limits:") || l.starts_with("proxy protocol:") || l.contains("timeout")
        })
        .map(|l| format!("`{l}`"))
        .collect();
    Ok(lines.join("; "))
}
