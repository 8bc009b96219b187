//! Adversarial load against the real `trustgate` binary: trusted peers that drip a PROXY
//! header slower than the timeout, a connection storm beyond `max_clients` (refused while
//! every slot is busy, shedding idle connections otherwise), untrusted sources forging
//! headers under every kernel filter mode, hostile header bytes, and h2 clients holding
//! many stalled uploads against the upstream connection caps.
//! Each test checks every connection's outcome, the counters, that the proxy kept
//! serving, and that memory and descriptors came back. Bounded in count and time.

use crate::common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::adversary::{self, Drips, Outsider, max, median};
use common::gateway::{Gateway, message};
use common::hostile::{self, Case, Expect};
use common::lb;
use common::netns::Lab;
use common::probe::{self, Held, room_for};
use common::scrape::{self, Scrape};
use common::testconfig::{App, KernelFilter, ProxyProtocol, TestConfig};
use common::upstream;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinSet, block_in_place};
use tokio::time::Instant;

/// How long a normal request through the proxy may take, flood or not.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the counters may take to reflect what the clients already saw.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the proxy may take to exit on SIGTERM once idle.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A config for the binary: `base` (its listen addresses and top-level keys) with plain
/// HTTP on an ephemeral port, one app routed to `upstream`, PROXY headers from `trusted`
/// within `timeout_ms`, the kernel filter `filter`, and metrics on an ephemeral loopback
/// port.
fn config(
    base: TestConfig,
    upstream: SocketAddr,
    trusted: &[String],
    timeout_ms: u64,
    filter: KernelFilter,
) -> String {
    base.listen_port(0)
        .default_app("app")
        .app("app", App::new("app.test").upstream(upstream))
        .proxy_protocol(
            ProxyProtocol::trusting(trusted)
                .timeout(timeout_ms)
                .kernel_filter(filter),
        )
        .metrics("127.0.0.1:0")
        .render()
}

/// A loopback config trusting 127.0.0.1, without a kernel filter: the adversaries here
/// are trusted peers, which every filter mode lets through alike. `top` holds the
/// top-level keys under test.
fn loopback_config(upstream: SocketAddr, timeout_ms: u64, top: TestConfig) -> String {
    config(
        top.listen_v4("127.0.0.1"),
        upstream,
        &["127.0.0.1/32".into()],
        timeout_ms,
        KernelFilter::mode("off"),
    )
}

/// Starts the binary (blocking this worker only) and returns it with its one listener
/// and its metrics address.
fn start(config: &str, listeners: usize) -> (Gateway, SocketAddr) {
    block_in_place(|| {
        let mut gw = Gateway::start(config, listeners);
        let metrics = gw.metrics_listener();
        (gw, metrics)
    })
}

/// Stops the binary with SIGTERM and collects its whole log; panics if it does not exit
/// cleanly, or if it logged a warning, an error or a panic while under attack.
fn stop_and_check_log(mut gw: Gateway, what: &str) {
    block_in_place(|| {
        gw.signal(nix::sys::signal::Signal::SIGTERM);
        let exited = gw.wait_exit(EXIT_TIMEOUT);
        assert_eq!(
            exited,
            Some(true),
            "{what}: no clean exit; log:\n{}",
            gw.log()
        );
        let alarms = gw.alarms();
        assert!(
            alarms.is_empty(),
            "{what}: an outsider's traffic raised warnings (attackers must not control log \
             volume above debug):\n{alarms:#?}"
        );
    });
}

/// [`lb::requests_ok`] within [`ANSWER_TIMEOUT`] each.
async fn normal_requests(addr: SocketAddr, count: usize, case: &str) -> Vec<Duration> {
    lb::requests_ok(addr, count, ANSWER_TIMEOUT, case).await
}

/// What the proxy holds, its connections with `upstream` and `metrics` counted apart.
fn held(gw: &Gateway, upstream: SocketAddr, metrics: SocketAddr) -> Held {
    probe::held(gw.pid().as_raw(), &[upstream, metrics])
}

/// The last moment a flood's clients wait for the proxy to close them.
fn give_up() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// Trusted connections that drip a PROXY header, per wave.
const SLOW_CONNECTIONS: usize = 1_000;
/// The header timeout of the slow-header test.
const SLOW_TIMEOUT: Duration = Duration::from_secs(2);
/// One byte per interval: at most 9 bytes of a 41-byte header before the timeout.
const DRIP_INTERVAL: Duration = Duration::from_millis(250);
/// How long after its deadline a connection may still be open: accept-queue and
/// scheduling delay with a thousand connections on two busy cores.
const CLOSE_SLACK: Duration = Duration::from_secs(3);
/// Waves of slow connections. The first [`WARM_UP`] size the allocator's and the
/// runtime's pools (the proxy's RSS settles over a few floods, then stays flat);
/// growth is measured over the rest.
const SLOW_WAVES: usize = 4;
/// Floods (waves, or rounds of hostile headers) before growth is measured.
const WARM_UP: usize = 2;
/// Normal requests sent while each wave's connections are all open.
const NORMAL_DURING_WAVE: usize = 20;
/// Resident memory the measured floods may add: 2,000 slow connections or 2,600
/// hostile ones, so a leak of 1.3 KB per connection would exceed it (a waiting
/// connection's whole state is about 2.5 KB). glibc's heap does not settle exactly: over
/// two waves after the warm-up, with nothing leaking, RSS was seen to gain from 0 up to
/// 1.7 MiB (a CI run on 2026-11-26; 1.5 MiB, the earlier tolerance, failed it).
const RSS_TOLERANCE_KIB: u64 = 2560;
/// What the proxy's RSS may gain per connection waiting for its header (a spawned
/// connection task is allocated whole, so this is mostly the task's size).
const PENDING_CONNECTION_MAX_BYTES: u64 = 6 * 1024;
/// Descriptors (upstream and metrics connections apart) that may differ between two idle
/// moments.
const FD_TOLERANCE: usize = 2;

/// What one wave of slow connections measured.
struct Wave {
    /// From just before each `connect()` to the proxy's close.
    lifetimes: Vec<Duration>,
    /// The normal requests sent while every slow connection was open.
    latencies: Vec<Duration>,
    /// What the proxy held while every slow connection was open.
    open: Held,
}

/// One wave: [`SLOW_CONNECTIONS`] drips, and normal requests while they are all open.
async fn slow_wave(gw: &Gateway, upstream: SocketAddr, metrics: SocketAddr, wave: usize) -> Wave {
    let addr = gw.listeners[0];
    let before = scrape::scrape(metrics).await;
    let header = lb::client_header(addr);
    let mut drips = Drips::start(addr, &header, SLOW_CONNECTIONS, DRIP_INTERVAL, give_up());
    drips.connected().await;
    let latencies = normal_requests(addr, NORMAL_DURING_WAVE, "during the slow wave").await;
    assert_eq!(
        drips.closed(),
        0,
        "wave {wave}: slow connections closed before the normal requests were done \
         (latencies {latencies:?}); the test did not overlap them"
    );
    let open = held(gw, upstream, metrics);
    let counters = scrape::scrape(metrics).await;
    assert!(
        counters.active() >= SLOW_CONNECTIONS as u64,
        "wave {wave}: the proxy holds {} connections, fewer than the slow ones open",
        counters.active()
    );
    let mut lifetimes = Vec::with_capacity(SLOW_CONNECTIONS);
    for drip in drips.join().await {
        let lifetime = drip
            .lifetime
            .unwrap_or_else(|| panic!("wave {wave}: a slow connection was never closed"));
        assert_eq!(
            drip.received, 0,
            "wave {wave}: a slow connection was answered"
        );
        assert!(
            drip.sent < header.len(),
            "wave {wave}: a slow connection sent its whole header before being closed"
        );
        assert!(
            lifetime >= SLOW_TIMEOUT,
            "wave {wave}: a slow connection was closed after {lifetime:?}, before the timeout"
        );
        assert!(
            lifetime <= SLOW_TIMEOUT + CLOSE_SLACK,
            "wave {wave}: a slow connection was closed only after {lifetime:?}"
        );
        lifetimes.push(lifetime);
    }
    let total = |s: &Scrape| s.header_errors_by_kind().values().sum::<u64>();
    let after = scrape::until(metrics, "slow connections counted", SETTLE_TIMEOUT, |s| {
        s.active() == 0 && total(s) >= total(&before) + SLOW_CONNECTIONS as u64
    })
    .await;
    assert_eq!(
        (
            after.header_errors("timeout") - before.header_errors("timeout"),
            total(&after) - total(&before)
        ),
        (SLOW_CONNECTIONS as u64, SLOW_CONNECTIONS as u64),
        "wave {wave}: every slow connection counted once, as a timeout: {:?}",
        after.header_errors_by_kind()
    );
    Wave {
        lifetimes,
        latencies,
        open,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_drips_are_closed_at_the_timeout_while_others_are_served() {
    if !room_for(4 * SLOW_CONNECTIONS as u64) {
        return;
    }
    let (upstream, hits) = upstream::counting().await;
    let timeout_ms = SLOW_TIMEOUT.as_millis() as u64;
    let (gw, metrics) = start(
        &loopback_config(upstream, timeout_ms, TestConfig::new().max_clients(4096)),
        1,
    );
    let addr = gw.listeners[0];
    normal_requests(addr, NORMAL_DURING_WAVE, "warm-up").await;
    let idle = held(&gw, upstream, metrics);
    let mut after = Vec::new();
    for wave in 1..=SLOW_WAVES {
        let w = slow_wave(&gw, upstream, metrics, wave).await;
        let now = held(&gw, upstream, metrics);
        let per_connection =
            w.open.rss_kib.saturating_sub(idle.rss_kib) * 1024 / SLOW_CONNECTIONS as u64;
        eprintln!(
            "wave {wave}: {SLOW_CONNECTIONS} slow connections closed after {:?} (median) \
             to {:?} (max), timeout {SLOW_TIMEOUT:?}; {NORMAL_DURING_WAVE} normal requests \
             meanwhile in {:?} (median) to {:?} (max); proxy idle before any wave: {idle}; \
             with the slow connections open: {} (+{per_connection} bytes each); after: {now}",
            median(&w.lifetimes),
            max(&w.lifetimes),
            median(&w.latencies),
            max(&w.latencies),
            w.open,
        );
        if wave == 1 {
            assert!(
                per_connection <= PENDING_CONNECTION_MAX_BYTES,
                "each connection waiting for its header costs {per_connection} bytes of RSS"
            );
        }
        after.push(now);
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        NORMAL_DURING_WAVE * (SLOW_WAVES + 1),
        "only the normal requests reach the upstream"
    );
    for (wave, now) in after.iter().enumerate() {
        assert!(
            now.fds <= idle.fds + FD_TOLERANCE,
            "wave {}: {} fds after, {} before any wave",
            wave + 1,
            now.fds,
            idle.fds
        );
    }
    let (warm, last) = (after[WARM_UP - 1], after[SLOW_WAVES - 1]);
    assert!(
        last.rss_kib <= warm.rss_kib + RSS_TOLERANCE_KIB,
        "RSS grew from {} KiB after wave {WARM_UP} to {} KiB after wave {SLOW_WAVES}",
        warm.rss_kib,
        last.rss_kib
    );
    stop_and_check_log(gw, "slow headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_raises_its_open_file_soft_limit_to_the_hard_limit() {
    if common::find_tool("prlimit").is_none() {
        return common::skip("util-linux's `prlimit` is not installed");
    }
    let (upstream, _hits) = upstream::counting().await;
    let (_, hard) = probe::nofile_limits(std::process::id() as i32);
    let hard = hard.unwrap_or(u64::MAX);
    if hard <= 256 {
        return common::skip(&format!(
            "the hard open-file limit is {hard}, no room to raise"
        ));
    }
    let gw = block_in_place(|| {
        // max_clients = 1 needs 66 descriptors: the raise is logged at info, not warned.
        let text = loopback_config(upstream, 1000, TestConfig::new().max_clients(1));
        Gateway::start_with_nofile(&text, 1, 256, None)
    });
    let (soft_now, hard_now) = probe::nofile_limits(gw.pid().as_raw());
    assert_eq!(soft_now, hard_now, "soft raised to the hard limit");
    assert_eq!(hard_now, Some(hard), "the hard limit untouched");
    // Logged before "listening", so already among the events seen.
    let was = gw
        .events("open-file limit")
        .first()
        .and_then(|e| common::gateway::field(e, "was"));
    assert_eq!(was.as_deref(), Some("256"), "log:\n{}", gw.log());
    eprintln!("open-file limit: started at 256, raised to {soft_now:?} (hard {hard_now:?})");
}

/// The open-file limit (soft and hard) of the descriptor-exhaustion test.
const EXHAUSTION_NOFILE: u64 = 128;
/// Slow connections in the descriptor-exhaustion test: more than that limit holds.
const EXHAUSTION_CONNECTIONS: usize = 300;
/// The header timeout of the descriptor-exhaustion test.
const EXHAUSTION_TIMEOUT: Duration = Duration::from_secs(1);

/// A peer behind a trusted load balancer can hold connections open; when they outnumber
/// the descriptors, accept() fails with EMFILE until some close. The proxy must neither
/// give up the listener nor let that peer control how much it logs above debug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_is_warned_about_once_and_service_resumes() {
    if common::find_tool("prlimit").is_none() {
        return common::skip("util-linux's `prlimit` is not installed");
    }
    if !room_for(4 * EXHAUSTION_CONNECTIONS as u64) {
        return;
    }
    let (upstream, hits) = upstream::counting().await;
    let timeout_ms = EXHAUSTION_TIMEOUT.as_millis() as u64;
    let text = loopback_config(upstream, timeout_ms, TestConfig::new().max_clients(4096));
    let mut gw = block_in_place(|| {
        Gateway::start_with_nofile(&text, 1, EXHAUSTION_NOFILE, Some(EXHAUSTION_NOFILE))
    });
    let metrics = block_in_place(|| gw.metrics_listener());
    let addr = gw.listeners[0];
    let header = lb::client_header(addr);
    let mut drips = Drips::start(
        addr,
        &header,
        EXHAUSTION_CONNECTIONS,
        DRIP_INTERVAL,
        give_up(),
    );
    drips.connected().await;
    let mut last_close = Duration::ZERO;
    for drip in drips.join().await {
        let lifetime = drip.lifetime.expect("every slow connection is closed");
        assert_eq!(drip.received, 0, "a slow connection was answered");
        last_close = last_close.max(lifetime);
    }
    let latency = normal_requests(addr, 1, "after the descriptors came back").await;
    let counted = scrape::until(
        metrics,
        "every slow connection counted",
        SETTLE_TIMEOUT,
        |s| s.header_errors("timeout") == EXHAUSTION_CONNECTIONS as u64 && s.active() == 0,
    )
    .await;
    let accept_errors = counted.get("trustgate_accept_errors_total");
    assert!(
        accept_errors > 0,
        "the descriptors never ran out: no accept() failed"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    block_in_place(|| {
        gw.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(gw.wait_exit(EXIT_TIMEOUT), Some(true), "log:\n{}", gw.log());
    });
    let accept_warnings = gw
        .alarms()
        .iter()
        .filter(|e| message(e) == Some("accept failed"))
        .count();
    let other: Vec<_> = gw
        .alarms()
        .into_iter()
        .filter(|e| {
            // Besides the accept failures, only the start-up warning that the limit is
            // below what max_clients needs, which is this test's setup.
            !message(e)
                .is_some_and(|m| m == "accept failed" || m.starts_with("the open-file limit"))
        })
        .collect();
    eprintln!(
        "descriptor exhaustion: {EXHAUSTION_CONNECTIONS} slow connections against an \
         open-file limit of {EXHAUSTION_NOFILE}: the last closed after {last_close:?}; a \
         normal request then served in {:?}; {} timeouts counted; {accept_errors} accept() \
         failures, {accept_warnings} \"accept failed\" warnings",
        latency[0],
        counted.header_errors("timeout"),
    );
    assert!(other.is_empty(), "unexpected warnings: {other:#?}");
    assert!(
        accept_warnings <= 1,
        "{accept_warnings} warnings for one episode of descriptor exhaustion"
    );
}

/// `max_clients` in the storm test.
const MAX_CLIENTS: usize = 50;
/// Connections beyond `max_clients`, all at once.
const STORM: usize = 500;
/// How long a refused connection may stay open.
const REFUSAL_LIMIT: Duration = Duration::from_secs(3);

/// A connection beyond the limit: header and request sent at once. Returns the bytes it
/// was answered with and how long the proxy took to close it.
async fn storm_one(addr: SocketAddr) -> (usize, Option<Duration>) {
    let mut out = lb::client_header(addr);
    out.extend(lb::get("/storm"));
    let (answer, closed) = adversary::send_and_read(addr, &out, false, REFUSAL_LIMIT).await;
    (answer.len(), closed)
}

/// An upstream that answers `/wait` only once `gate` opens, everything else at once;
/// counts every request that reaches it.
async fn gated_upstream(gate: watch::Receiver<bool>) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let addr = upstream::serve(move |req| {
        let mut gate = gate.clone();
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if req.uri().path() == "/wait" {
                let _ = gate.wait_for(|open| *open).await;
            }
            upstream::text("ok")
        }
    })
    .await;
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_beyond_max_clients_is_refused_while_every_slot_is_busy_and_sheds_idle_ones() {
    if !room_for(4 * (MAX_CLIENTS + STORM) as u64) {
        return;
    }
    let (open_gate, gate) = watch::channel(false);
    let (upstream, hits) = gated_upstream(gate).await;
    let (gw, metrics) = start(
        &loopback_config(
            upstream,
            1000,
            TestConfig::new().max_clients(MAX_CLIENTS as u32),
        ),
        1,
    );
    let addr = gw.listeners[0];
    normal_requests(addr, 5, "warm-up").await;
    scrape::until(metrics, "warm-up connections closed", SETTLE_TIMEOUT, |s| {
        s.active() == 0
    })
    .await;
    let idle = held(&gw, upstream, metrics);
    // Every slot busy: each holder's request waits at the upstream.
    let mut holders = Vec::with_capacity(MAX_CLIENTS);
    for _ in 0..MAX_CLIENTS {
        holders.push(lb::busy(addr, "/wait").await);
    }
    let full = scrape::until(metrics, "holders in flight", SETTLE_TIMEOUT, |s| {
        s.active() == MAX_CLIENTS as u64 && hits.load(Ordering::SeqCst) == 5 + MAX_CLIENTS
    })
    .await;

    let storm_started = Instant::now();
    let mut storm = JoinSet::new();
    for _ in 0..STORM {
        storm.spawn(storm_one(addr));
    }
    let mut refusals = Vec::with_capacity(STORM);
    while let Some(outcome) = storm.join_next().await {
        let (answered, closed) = outcome.expect("a storm task panicked");
        assert_eq!(answered, 0, "a connection beyond max_clients was answered");
        refusals.push(closed.unwrap_or_else(|| {
            panic!("a connection beyond max_clients was not closed within {REFUSAL_LIMIT:?}")
        }));
    }
    let storm_took = storm_started.elapsed();
    let stormed = scrape::until(metrics, "the storm counted", SETTLE_TIMEOUT, |s| {
        s.refused("max_clients") == STORM as u64
    })
    .await;
    assert_eq!(
        stormed.active(),
        MAX_CLIENTS as u64,
        "the holders still hold"
    );
    assert_eq!(
        stormed.accepted(),
        full.accepted() + STORM as u64,
        "each storm connection was accepted and closed by the proxy, not left in the backlog"
    );
    assert_eq!(stormed.refused("max_clients"), STORM as u64);
    assert_eq!(stormed.refused("untrusted_peer"), 0);
    assert_eq!(
        stormed.get("trustgate_connections_shed_total"),
        0,
        "a connection with a request in flight is never shed"
    );

    // The holders were served throughout: each gets its answer once the upstream gives it.
    open_gate.send_replace(true);
    for (i, holder) in holders.iter_mut().enumerate() {
        let status = tokio::time::timeout(ANSWER_TIMEOUT, lb::read_answer(holder))
            .await
            .expect("an answer in time")
            .unwrap_or_else(|e| panic!("holder {i} after the storm: {e}"));
        assert!(status.starts_with("HTTP/1.1 200"), "holder {i}: {status}");
    }

    // Every holder idle now: one more connection sheds one of them and is served at once.
    let recovery = normal_requests(addr, 1, "past max_clients with idle holders").await;
    let shed = scrape::until(metrics, "one idle holder shed", SETTLE_TIMEOUT, |s| {
        s.get("trustgate_connections_shed_total") == 1 && s.active() == MAX_CLIENTS as u64 - 1
    })
    .await;
    assert_eq!(
        shed.refused("max_clients"),
        STORM as u64,
        "nobody else was refused"
    );
    let mut closed = 0;
    for holder in &mut holders {
        match tokio::time::timeout(ANSWER_TIMEOUT, lb::keep_alive_get(holder, "/again")).await {
            Ok(Ok(status)) => assert!(status.starts_with("HTTP/1.1 200"), "{status}"),
            Ok(Err(_)) => closed += 1,
            Err(_) => panic!("a holder got no answer in time"),
        }
    }
    assert_eq!(closed, 1, "exactly one idle holder was shed");

    // Every slot freed: no refusal or shedding kept a slot or a descriptor.
    holders.clear();
    scrape::until(metrics, "every slot freed", SETTLE_TIMEOUT, |s| {
        s.active() == 0
    })
    .await;
    let after_storm = held(&gw, upstream, metrics);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        5 + MAX_CLIENTS + 1 + (MAX_CLIENTS - 1),
        "only the admitted requests reach the upstream"
    );
    assert!(
        after_storm.fds <= idle.fds + FD_TOLERANCE,
        "fds: {} before the storm, {} after",
        idle.fds,
        after_storm.fds
    );
    eprintln!(
        "storm: {STORM} connections beyond max_clients = {MAX_CLIENTS} refused in {storm_took:?} \
         (each closed after {:?} median, {:?} max) while every slot was busy; with the holders \
         idle, a request was served in {:?} by shedding one; proxy before the storm: {idle}; \
         after: {after_storm}",
        median(&refusals),
        max(&refusals),
        recovery[0],
    );
    stop_and_check_log(gw, "storm");
}

/// Connections per case and round.
const HOSTILE_PER_CASE: usize = 100;
/// Rounds of every case; growth is measured after the first [`WARM_UP`].
const HOSTILE_ROUNDS: usize = 4;
/// Hostile connections in flight at once.
const HOSTILE_PARALLEL: usize = 64;

/// One round: every case, [`HOSTILE_PER_CASE`] connections each. Returns the kinds counted.
async fn hostile_round(
    addr: SocketAddr,
    metrics: SocketAddr,
    cases: &[Case],
    round: usize,
    hits: &AtomicUsize,
) -> BTreeMap<String, u64> {
    let before = scrape::scrape(metrics).await;
    let hits_before = hits.load(Ordering::SeqCst);
    let slots = Arc::new(Semaphore::new(HOSTILE_PARALLEL));
    let mut set = JoinSet::new();
    // Every kind the round must count: the named ones, and the random bytes' own, as the
    // proxy's parser judges them (random bytes that happen to hold a valid header are
    // passed on and not counted).
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (c, case) in cases.iter().enumerate() {
        for i in 0..HOSTILE_PER_CASE {
            let n = (round * HOSTILE_PER_CASE + i) as u64;
            let bytes = (case.bytes)(n);
            let kind = match case.expect {
                Expect::Counted(kind) => Some(kind),
                Expect::AnyKind => hostile::predicted_kind(&bytes),
                Expect::Served => None,
            };
            if let Some(kind) = kind {
                *expected.entry(kind.to_string()).or_default() += 1;
            }
            let valid_random = case.expect == Expect::AnyKind && kind.is_none();
            let half_close = case.expect != Expect::Served;
            let slots = Arc::clone(&slots);
            set.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("semaphore open");
                (
                    c,
                    valid_random,
                    adversary::send_and_read(addr, &bytes, half_close, ANSWER_TIMEOUT).await,
                )
            });
        }
    }
    while let Some(done) = set.join_next().await {
        let (c, valid_random, (answer, closed)) = done.expect("a hostile task panicked");
        let case = &cases[c];
        if valid_random {
            // A header after all: whatever followed it is the HTTP layer's to answer.
            continue;
        }
        assert!(
            closed.is_some(),
            "{}: not closed within {ANSWER_TIMEOUT:?}",
            case.name
        );
        let answer = String::from_utf8_lossy(&answer);
        if case.expect == Expect::Served {
            assert!(lb::is_ok(&answer), "{}: {answer:?}", case.name);
        } else {
            assert!(answer.is_empty(), "{}: answered {answer:?}", case.name);
        }
    }
    let served = cases.iter().filter(|c| c.expect == Expect::Served).count() * HOSTILE_PER_CASE;
    let refused: u64 = expected.values().sum();
    let total = |s: &Scrape| s.header_errors_by_kind().values().sum::<u64>();
    let after = scrape::until(metrics, "hostile headers counted", SETTLE_TIMEOUT, |s| {
        total(s) - total(&before) == refused && s.active() == 0
    })
    .await;
    let mut delta = after.header_errors_by_kind();
    for (kind, v) in delta.iter_mut() {
        *v -= before.header_errors(kind);
    }
    delta.retain(|_, v| *v > 0);
    assert_eq!(
        delta, expected,
        "each hostile header counted as its parser verdict"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst) - hits_before,
        served,
        "only the valid headers at the bounds reach the upstream"
    );
    delta
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_header_bytes_are_closed_and_counted_without_panic_or_growth() {
    if !room_for(4 * HOSTILE_PARALLEL as u64 + 256) {
        return;
    }
    let (upstream, hits) = upstream::counting().await;
    let (mut gw, metrics) = start(&loopback_config(upstream, 1000, TestConfig::new()), 1);
    let addr = gw.listeners[0];
    let cases = hostile::cases();
    normal_requests(addr, 5, "warm-up").await;
    let idle = held(&gw, upstream, metrics);
    let mut after = Vec::new();
    for round in 0..HOSTILE_ROUNDS {
        let started = Instant::now();
        let kinds = hostile_round(addr, metrics, &cases, round, &hits).await;
        let now = held(&gw, upstream, metrics);
        eprintln!(
            "hostile round {round}: {} connections in {:?}; counted {kinds:?}; proxy after: \
             {now}; idle before: {idle}",
            cases.len() * HOSTILE_PER_CASE,
            started.elapsed(),
        );
        after.push(now);
    }
    assert!(block_in_place(|| gw.is_running()), "the proxy died");
    let latencies = normal_requests(addr, 5, "after the hostile rounds").await;
    eprintln!("after the hostile rounds: normal requests in {latencies:?}");
    for (round, now) in after.iter().enumerate() {
        assert!(
            now.fds <= idle.fds + FD_TOLERANCE,
            "round {round}: {} fds after, {} before",
            now.fds,
            idle.fds
        );
    }
    let (warm, last) = (after[WARM_UP - 1], after[HOSTILE_ROUNDS - 1]);
    assert!(
        last.rss_kib <= warm.rss_kib + RSS_TOLERANCE_KIB,
        "RSS grew from {} KiB after round {} to {} KiB after round {}",
        warm.rss_kib,
        WARM_UP - 1,
        last.rss_kib,
        HOSTILE_ROUNDS - 1
    );
    stop_and_check_log(gw, "hostile headers");
}

/// How long an untrusted client waits for a SYN-ACK a kernel filter never sends.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// The lab, or a loud skip.
fn lab() -> Option<Lab> {
    Lab::new()
        .map_err(|why| common::skip(&format!("cannot build a network namespace: {why}")))
        .ok()
}

/// The spoof test's config: listeners on the lab's host addresses (v4 and v6), the lab's
/// trusted addresses trusted, and the given kernel filter.
fn lab_config(lab: &Lab, upstream: SocketAddr, filter: KernelFilter) -> String {
    config(
        TestConfig::new().listen_v4(lab.host4).listen_v6(lab.host6),
        upstream,
        &[
            format!("{}/32", lab.trusted4),
            format!("{}/128", lab.trusted6),
        ],
        1000,
        filter,
    )
}

/// The cases of the spoof test, against listeners `v4` and `v6`: a trusted source per
/// family (must be served: the setup works), and the untrusted source per family with a
/// valid header, v1 and v2, naming the trusted address as the client.
fn spoof(lab: &Lab, v4: SocketAddr, v6: SocketAddr) -> Vec<Outsider> {
    let spoofed4 = SocketAddr::new(lab.trusted4.into(), 40000);
    let spoofed6 = SocketAddr::new(lab.trusted6.into(), 40000);
    let trusted = |src: IpAddr, dst, header: Vec<u8>| {
        adversary::request_from_namespace(lab, src, dst, &header, ANSWER_TIMEOUT)
    };
    trusted(lab.trusted4.into(), v4, lb::v1(spoofed4, v4));
    trusted(lab.trusted6.into(), v6, lb::v2(spoofed6, v6, &[]));
    let attempts = [
        (IpAddr::from(lab.untrusted4), v4, lb::v1(spoofed4, v4)),
        (lab.untrusted4.into(), v4, lb::v2(spoofed4, v4, &[])),
        (lab.untrusted6.into(), v6, lb::v1(spoofed6, v6)),
        (lab.untrusted6.into(), v6, lb::v2(spoofed6, v6, &[])),
    ];
    // At once: each dropped SYN costs a whole connect timeout.
    std::thread::scope(|s| {
        let running: Vec<_> = attempts
            .iter()
            .map(|(src, dst, header)| {
                s.spawn(move || {
                    adversary::from_namespace(
                        lab,
                        *src,
                        *dst,
                        header,
                        CONNECT_TIMEOUT,
                        ANSWER_TIMEOUT,
                    )
                })
            })
            .collect();
        running
            .into_iter()
            .map(|t| t.join().expect("an outsider's thread panicked"))
            .collect()
    })
}

/// The listeners of a lab config, v4 first.
fn v4_v6(listeners: &[SocketAddr]) -> (SocketAddr, SocketAddr) {
    let v4 = listeners.iter().find(|a| a.is_ipv4()).copied();
    let v6 = listeners.iter().find(|a| a.is_ipv6()).copied();
    (v4.expect("a v4 listener"), v6.expect("a v6 listener"))
}

/// SYNs `program`'s kernel counters say it dropped, for `family` (`ipv4`, `ipv6`).
fn dropped(counters: &Scrape, program: Option<&str>, family: &str) -> u64 {
    program.map_or(0, |program| {
        counters.get(&format!(
            "trustgate_kernel_syns_total{{program=\"{program}\",family=\"{family}\",outcome=\"dropped\"}}"
        ))
    })
}

/// Runs the spoof test against the binary with `filter`; `dropped_by` names the program
/// whose kernel counters must show the drops (`None`: no kernel filter).
async fn spoof_through_the_binary(filter: impl Fn(&Lab) -> KernelFilter, dropped_by: Option<&str>) {
    let Some(lab) = lab() else { return };
    let (upstream, hits) = upstream::counting().await;
    let (gw, metrics) = start(&lab_config(&lab, upstream, filter(&lab)), 2);
    if let Some(program) = dropped_by {
        // `required = false` and socket mode's classic fallback both start without the
        // eBPF program when it cannot be loaded; that is a skip here, not a pass.
        let wanted = format!("trustgate_kernel_filter_attached{{program=\"{program}\"");
        let attached = scrape::scrape(metrics).await.starting_with(&wanted).len();
        let classic = scrape::scrape(metrics)
            .await
            .starting_with("trustgate_kernel_filter_attached{program=\"socket\"")
            .iter()
            .any(|(series, _)| series.contains("mode=\"classic\""));
        if attached == 0 || classic {
            return common::skip(&format!(
                "the {program} eBPF program could not be loaded (CAP_BPF?); log:\n{}",
                gw.log()
            ));
        }
    }
    let (v4, v6) = v4_v6(&gw.listeners);
    let outcomes = block_in_place(|| spoof(&lab, v4, v6));
    let counters = scrape::scrape(metrics).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "only the trusted sources reach the upstream; outsiders saw {outcomes:?}"
    );
    match dropped_by {
        None => {
            assert_eq!(
                outcomes,
                [0, 0, 0, 0].map(Outsider::Closed),
                "refused in user space"
            );
            assert_eq!(counters.refused("untrusted_peer"), 4);
        }
        Some(program) => {
            assert_eq!(
                outcomes,
                [(); 4].map(|()| Outsider::Dropped),
                "the kernel drops the SYNs"
            );
            assert_eq!(
                counters.refused("untrusted_peer"),
                0,
                "user space never saw them"
            );
            for family in ["ipv4", "ipv6"] {
                let dropped = dropped(&counters, dropped_by, family);
                assert!(dropped >= 2, "{program} {family}: {dropped} SYNs dropped");
            }
        }
    }
    let attached = counters.starting_with("trustgate_kernel_filter_attached");
    eprintln!(
        "spoofed headers, kernel filter {}: outsiders saw {outcomes:?}; refused in user \
         space: {}; kernel SYN drops v4/v6: {}/{}; attached: {attached:?}",
        dropped_by.unwrap_or("off"),
        counters.refused("untrusted_peer"),
        dropped(&counters, dropped_by, "ipv4"),
        dropped(&counters, dropped_by, "ipv6"),
    );
    stop_and_check_log(gw, "spoofed headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_header_from_an_untrusted_source_never_reaches_the_upstream_without_a_filter() {
    spoof_through_the_binary(|_| KernelFilter::mode("off"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_header_from_an_untrusted_source_never_reaches_the_upstream_with_the_ebpf_socket_filter()
 {
    spoof_through_the_binary(
        |_| KernelFilter::mode("socket").required(false),
        Some("socket"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_header_from_an_untrusted_source_never_reaches_the_upstream_with_xdp() {
    spoof_through_the_binary(
        |lab| {
            KernelFilter::mode("xdp")
                .interfaces([&lab.host_if])
                .required(false)
        },
        Some("xdp"),
    )
    .await;
}

/// The classic-BPF filter is what socket mode falls back to without CAP_BPF; a
/// privileged binary never picks it, so the proxy's listener runs in process with
/// `Plan::ClassicSocket`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_header_from_an_untrusted_source_never_reaches_the_upstream_with_the_classic_filter()
 {
    let Some(lab) = lab() else { return };
    let (upstream, hits) = upstream::counting().await;
    let text = lab_config(&lab, upstream, KernelFilter::mode("socket"));
    let proxy = common::inprocess::InProcess::start(&text, proxy::kernel::Plan::ClassicSocket)
        .expect("the classic filter needs no privilege");
    let attached = proxy.attachments();
    assert_eq!(attached.len(), 2, "both listeners filtered: {attached:?}");
    assert!(
        attached.iter().all(|a| matches!(
            a,
            proxy::kernel::Attachment::Socket {
                kind: proxy::kernel::SocketFilterKind::Classic,
                ..
            }
        )),
        "{attached:?}"
    );
    let (v4, v6) = v4_v6(&proxy.listeners);
    let outcomes = block_in_place(|| spoof(&lab, v4, v6));
    assert_eq!(
        outcomes,
        [(); 4].map(|()| Outsider::Dropped),
        "the classic filter drops the SYNs"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "only the trusted sources reach the upstream"
    );
    let counters = proxy.server.metrics();
    assert_eq!(
        counters.refused_untrusted.get(),
        0,
        "user space never saw them"
    );
    assert_eq!(
        counters.accepted.get(),
        2,
        "only the trusted connections were accepted"
    );
    eprintln!("spoofed headers from untrusted sources (classic): {outcomes:?}");
}

/// h2 connections of the stalled-upload test, each with [`MAX_STREAMS`] streams.
const STALLERS: usize = 20;
/// The proxy's default `max_concurrent_streams`: every stream a connection may open.
const MAX_STREAMS: usize = 64;
/// `max_upstream_connections_per_client` of the stalled-upload test.
const PER_CLIENT: usize = 4;
/// `max_upstream_connections` of the stalled-upload test: above what the stallers may
/// hold together (`STALLERS × PER_CLIENT`), so room is left for others.
const UPSTREAM_CAP: usize = 100;
/// `max_clients` of the stalled-upload tests.
const STALL_MAX_CLIENTS: usize = 64;
/// What the proxy holds besides connections, as its start-up budget reserves it.
const RESERVED_FDS: usize = proxy::nofile::RESERVED_FDS as usize;
/// How long the proxy may wait for room under `max_upstream_connections` before a 503:
/// its connect timeout (1 s in the 503 test), plus scheduling slack.
const ROOM_WAIT: Duration = Duration::from_secs(5);

/// 20 h2 connections × 64 streams whose bodies send a few bytes and stall (1,280 open
/// uploads) held 1,280 upstream connections before the caps, one per stream. With
/// `max_upstream_connections_per_client = 4`, each connection gets 4 upstream requests
/// and its other 60 streams wait their turn holding no upstream connection: the upstream
/// sees 80 connections, the proxy's descriptors stay within max_clients +
/// max_upstream_connections + reserved, and a new client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_h2_uploads_hold_at_most_their_share_of_upstream_connections_and_others_are_served()
{
    if !room_for(4 * (STALLERS * MAX_STREAMS) as u64) {
        return;
    }
    let (upstream, seen) = upstream::body_reading().await;
    let top = TestConfig::new()
        .max_clients(STALL_MAX_CLIENTS as u32)
        .max_upstream_connections(UPSTREAM_CAP as u32)
        .max_upstream_connections_per_client(PER_CLIENT as u32);
    let (gw, metrics) = start(&loopback_config(upstream, 1000, top), 1);
    let addr = gw.listeners[0];
    let pid = gw.pid().as_raw();
    normal_requests(addr, 2, "warm-up").await;
    let before = probe::usage(pid);

    let header = lb::client_header(addr);
    let mut stallers = Vec::with_capacity(STALLERS);
    for _ in 0..STALLERS {
        stallers.push(common::stall::open(addr, &header, MAX_STREAMS, "/upload").await);
    }
    let held_upstream = STALLERS * PER_CLIENT;
    // Every stream has reached the proxy: each connection's first 4 went upstream and
    // the other 60 are waiting for a turn.
    let waiting = (STALLERS * (MAX_STREAMS - PER_CLIENT)) as u64;
    let counted = scrape::until(
        metrics,
        "every stream reached the proxy",
        SETTLE_TIMEOUT,
        |s| s.upstream_queued("max_upstream_connections_per_client") >= waiting,
    )
    .await;
    seen.until("the stallers' upstream requests", SETTLE_TIMEOUT, |s| {
        s.requests() >= 2 + held_upstream
    })
    .await;
    let during = probe::usage(pid);
    let proxy_upstream = probe::connections_with(pid, &[upstream]);
    let budget = STALL_MAX_CLIENTS + UPSTREAM_CAP + RESERVED_FDS;
    eprintln!(
        "stalled uploads: {} streams on {STALLERS} connections; proxy fds {} before, {} \
         during (budget {budget}); {proxy_upstream} upstream connections, upstream saw {} \
         requests, peak {} connections",
        STALLERS * MAX_STREAMS,
        before.fds,
        during.fds,
        seen.requests(),
        seen.peak()
    );
    let latencies = normal_requests(addr, 5, "during the stalled uploads").await;

    assert!(
        during.fds <= budget,
        "{} descriptors, over the budget {budget}",
        during.fds
    );
    assert!(
        during.fds <= before.fds + STALLERS + held_upstream + 1,
        "{} descriptors: more than one per staller and one per upstream request ({} before)",
        during.fds,
        before.fds
    );
    assert_eq!(
        seen.requests(),
        2 + held_upstream + latencies.len(),
        "only each connection's share of streams went upstream"
    );
    assert!(
        seen.peak() <= held_upstream + 1,
        "the upstream saw {} connections at once; the stallers may hold {held_upstream}, \
         the normal clients one",
        seen.peak()
    );
    assert!(seen.peak() <= UPSTREAM_CAP);
    assert!(counted.upstream_open() <= UPSTREAM_CAP as u64);
    assert_eq!(
        counted.upstream_refused(),
        0,
        "the total cap was never reached"
    );
    for staller in &mut stallers {
        assert!(
            staller.answers.try_join_next().is_none(),
            "a stalled upload was answered"
        );
    }

    drop(stallers);
    seen.until(
        "the stallers' upstream connections closed",
        SETTLE_TIMEOUT,
        |s| s.open() <= 1,
    )
    .await;
    normal_requests(addr, 2, "after the stalled uploads").await;
    stop_and_check_log(gw, "stalled uploads");
}

/// At `max_upstream_connections` with every connection busy, a request waits the
/// connect timeout for room, then gets a 503, counted; the upstream never sees more
/// connections than the cap; once the busy ones finish, requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_upstream_connections_requests_wait_then_get_503_and_are_counted() {
    const CAP: usize = 4;
    const STREAMS: usize = 8;
    let (upstream, seen) = upstream::body_reading().await;
    let top = TestConfig::new()
        .max_clients(STALL_MAX_CLIENTS as u32)
        .max_upstream_connections(CAP as u32)
        .max_upstream_connections_per_client(STREAMS as u32)
        .upstream_connect_timeout(1);
    let (gw, metrics) = start(&loopback_config(upstream, 1000, top), 1);
    let addr = gw.listeners[0];
    let mut staller = common::stall::open(addr, &lb::client_header(addr), STREAMS, "/upload").await;
    let full = scrape::until(
        metrics,
        "the streams beyond the cap waiting",
        SETTLE_TIMEOUT,
        |s| s.upstream_queued("max_upstream_connections") >= (STREAMS - CAP) as u64,
    )
    .await;
    assert_eq!(full.upstream_open(), CAP as u64);
    let started = Instant::now();
    let mut refused = 0;
    while refused < STREAMS - CAP {
        let answer = tokio::time::timeout(ROOM_WAIT, staller.answers.join_next())
            .await
            .expect("the streams beyond the cap are answered after the connect timeout")
            .expect("streams left")
            .expect("no panic");
        assert_eq!(answer, Some(http::StatusCode::SERVICE_UNAVAILABLE));
        refused += 1;
    }
    let waited = started.elapsed();
    let counted = scrape::scrape(metrics).await;
    assert_eq!(counted.upstream_refused(), (STREAMS - CAP) as u64);
    assert_eq!(seen.peak(), CAP, "the upstream never saw more than the cap");
    assert_eq!(seen.requests(), CAP);
    eprintln!("at the cap: {refused} streams answered 503 after {waited:?}");

    // The bodies end: the busy connections answer, go idle and serve the next request.
    staller.bodies.clear();
    let mut ok = 0;
    while let Some(answer) = staller.answers.join_next().await {
        assert_eq!(answer.expect("no panic"), Some(http::StatusCode::OK));
        ok += 1;
    }
    assert_eq!(ok, CAP);
    normal_requests(addr, 3, "after the cap").await;
    assert_eq!(seen.peak(), CAP);
    stop_and_check_log(gw, "upstream cap");
}
