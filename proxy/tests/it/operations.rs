//! Running trustgate in production, with the real binary: reloading the trusted list
//! while requests flow (nothing lost, the kernel and user space both follow), a bad
//! config leaving everything as it was, the counters after known traffic scraped over
//! HTTP, and SIGTERM letting a request in flight finish while new connections are
//! refused. The reload test needs root (namespace) and CAP_BPF; it skips loudly without.

use crate::common;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::gateway::{Gateway, message};
use common::http1::Conn;
use common::netns::Lab;
use common::testconfig::{App, KernelFilter, ProxyProtocol, TestConfig, Tls};
use common::upstream;
use nix::sys::signal::Signal;

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A dropped SYN gets no answer; this is how long the untrusted client waits for one.
const DROP_TIMEOUT: Duration = Duration::from_millis(1500);

fn free_port() -> u16 {
    common::peers::free_port("127.0.0.1")
}

/// A config listening on `listen` (port 0), trusting `trusted`, routing to `upstream`.
fn config(
    listen: IpAddr,
    upstream: SocketAddr,
    trusted: &[String],
    mode: &str,
    metrics: Option<u16>,
) -> String {
    config_of(listen, app(upstream), trusted, mode, metrics).render()
}

/// The one app, `app.test`, routing to `upstream`.
fn app(upstream: SocketAddr) -> App {
    App::new("app.test").upstream(upstream)
}

/// [`config`] serving `app`, for a test to add to: listening on `listen` (port 0),
/// PROXY headers from `trusted` within 200 ms, the kernel filter in `mode`, and metrics
/// on `metrics` of loopback when given.
fn config_of(
    listen: IpAddr,
    app: App,
    trusted: &[String],
    mode: &str,
    metrics: Option<u16>,
) -> TestConfig {
    let config = TestConfig::new()
        .listen_port(0)
        .listen_v4(listen)
        .default_app("app")
        .app("app", app)
        .proxy_protocol(
            ProxyProtocol::trusting(trusted)
                .timeout(200)
                .kernel_filter(KernelFilter::mode(mode)),
        );
    match metrics {
        Some(port) => config.metrics(format!("127.0.0.1:{port}")),
        None => config,
    }
}

/// Rewrites the config and reloads with SIGHUP; returns the reload's log message.
fn reload(gw: &mut Gateway, text: &str) -> String {
    std::fs::write(&gw.config_path, text).expect("rewriting the config");
    gw.signal(Signal::SIGHUP);
    let event = gw
        .wait_for(
            |e| matches!(message(e), Some(m) if m.starts_with("config reloaded") || m.starts_with("reload refused") || m.starts_with("reload failed")),
            EVENT_TIMEOUT,
        )
        .unwrap_or_else(|| panic!("no reload outcome logged:\n{}", gw.log()));
    message(&event).unwrap_or_default().to_string()
}

/// Runs `f` on a Tokio runtime of its own thread: the in-process upstream lives there
/// while the test drives the blocking helpers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn reload_changes_who_is_trusted_in_kernel_and_user_space_without_losing_a_request() {
    let Ok(lab) =
        Lab::new().map_err(|why| common::skip(&format!("cannot build a network namespace: {why}")))
    else {
        return;
    };
    let rt = runtime();
    let upstream = rt.block_on(upstream::demo());
    for mode in ["socket", "off"] {
        let lb = format!("{}/32", lab.trusted4);
        let outsider = format!("{}/32", lab.untrusted4);
        let before = config(
            lab.host4.into(),
            upstream,
            std::slice::from_ref(&lb),
            mode,
            None,
        );
        let mut gw = Gateway::start(&before, 1);
        let addr = gw.listeners[0];
        let client = SocketAddr::new(Ipv4Addr::new(203, 0, 113, 9).into(), 40000);
        let connect = |src: Ipv4Addr| lab.connect(src.into(), addr, DROP_TIMEOUT);
        // A load balancer keeps requests flowing through every reload below, on one
        // keep-alive connection and on a new connection each time round. Each round
        // ticks, so the test can make sure rounds ran between its steps.
        let stop = AtomicBool::new(false);
        let (done, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (tick_tx, ticks) = std::sync::mpsc::channel::<()>();
        let rounds = |n: usize| {
            for _ in 0..n {
                ticks
                    .recv_timeout(EVENT_TIMEOUT)
                    .expect("the request loop stalled");
            }
        };
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut keepalive = Conn::new(
                    connect(lab.trusted4).expect("trusted connect"),
                    Some((client, addr)),
                )
                .expect("conn");
                while !stop.load(Ordering::Relaxed) {
                    let kept = matches!(keepalive.get("/loop"), Ok((200, _)));
                    let fresh = connect(lab.trusted4)
                        .and_then(|s| Conn::new(s, Some((client, addr))))
                        .and_then(|mut c| c.get("/fresh"));
                    for ok in [kept, matches!(fresh, Ok((200, _)))] {
                        let counter = if ok { &done } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    if tick_tx.send(()).is_err() {
                        break;
                    }
                }
            });
            // Stops the loop however this scope ends, so a failed assertion below cannot
            // leave the scope waiting on it forever.
            let _stop = StopOnDrop(&stop);
            let refused = |case: &str| match mode {
                // The kernel drops the SYN: no SYN-ACK, no RST.
                "socket" => {
                    let err = connect(lab.untrusted4).expect_err(case);
                    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{mode}, {case}: {err}");
                }
                // User space closes it before reading a byte of HTTP.
                _ => {
                    let stream = connect(lab.untrusted4).expect("connect");
                    let mut conn = Conn::new(stream, Some((client, addr))).expect("conn");
                    assert!(
                        conn.get("/").is_err(),
                        "{mode}, {case}: an untrusted peer was served"
                    );
                }
            };
            refused("before any reload");
            rounds(2);
            let added = config(
                lab.host4.into(),
                upstream,
                &[lb.clone(), outsider],
                mode,
                None,
            );
            assert_eq!(reload(&mut gw, &added), "config reloaded");
            rounds(2);
            let mut admitted = Conn::new(
                connect(lab.untrusted4).expect("added prefix connects"),
                Some((client, addr)),
            )
            .expect("conn");
            assert_eq!(
                admitted.get("/added").expect("served").0,
                200,
                "{mode}: the added prefix is served"
            );
            assert_eq!(reload(&mut gw, &before), "config reloaded");
            rounds(2);
            refused("after its prefix was removed");
            // The connection made while the prefix was trusted stays up.
            assert_eq!(
                admitted.get("/still-up").expect("established connection").0,
                200
            );
            // A broken config is refused and changes nothing.
            let broken = config(
                lab.host4.into(),
                upstream,
                &["10.0.0.1/8".into()],
                mode,
                None,
            );
            assert!(
                reload(&mut gw, &broken).starts_with("reload refused"),
                "{mode}: a bad config was applied"
            );
            refused("after a refused reload");
            rounds(2);
        });
        let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        assert_eq!(
            failed,
            0,
            "{mode}: {failed} of {} requests failed across reloads",
            done + failed
        );
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Scrapes `/metrics` into `name{labels}` -> value.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("metrics connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    text.lines()
        .filter(|l| l.starts_with("trustgate_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn counters_after_known_traffic_are_exact_over_http() {
    let rt = runtime();
    let upstream = rt.block_on(upstream::demo());
    let metrics_port = free_port();
    let text = config(
        Ipv4Addr::LOCALHOST.into(),
        upstream,
        &["127.0.0.1/32".into()],
        "off",
        Some(metrics_port),
    );
    let mut gw = Gateway::start(&text, 1);
    let addr = gw.listeners[0];
    let client = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 7).into(), 5555);
    // Three requests from the trusted load balancer.
    let mut conn = Conn::new(
        TcpStream::connect(addr).expect("connect"),
        Some((client, addr)),
    )
    .expect("conn");
    for _ in 0..3 {
        assert_eq!(conn.get("/ok").expect("served").0, 200);
    }
    // An untrusted peer: 127.0.0.2 is not in the list.
    let _outsider = common::connect_from(Ipv4Addr::new(127, 0, 0, 2).into(), addr, EVENT_TIMEOUT)
        .expect("connect");
    // A bad header, and one that never completes.
    let mut bad = TcpStream::connect(addr).expect("connect");
    bad.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 +80\r\n")
        .expect("write");
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(b"PROXY TCP4 1.2").expect("write");
    for _ in 0..3 {
        gw.wait_for(
            |e| message(e).is_some_and(|m| m.starts_with("refused")),
            EVENT_TIMEOUT,
        )
        .unwrap_or_else(|| panic!("refusals not logged:\n{}", gw.log()));
    }
    let m = scrape(metrics_port);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in {m:#?}"))
    };
    assert_eq!(get("trustgate_connections_accepted_total"), 4.0);
    assert_eq!(
        get(r#"trustgate_connections_refused_total{reason="untrusted_peer"}"#),
        1.0
    );
    assert_eq!(
        get(r#"trustgate_proxy_header_errors_total{kind="timeout"}"#),
        1.0
    );
    let bad_kinds: f64 = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with("trustgate_proxy_header_errors_total") && !k.contains("timeout")
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(bad_kinds, 1.0, "one malformed header: {m:#?}");
    assert_eq!(get(r#"trustgate_requests_total{class="2xx"}"#), 3.0);
    assert_eq!(get(r#"trustgate_requests_total{class="5xx"}"#), 0.0);
    // The connection with three requests is still open.
    assert_eq!(get("trustgate_connections_active"), 1.0);
    assert_eq!(get(r#"trustgate_reloads_total{outcome="ok"}"#), 0.0);
    drop(conn);
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_and_refuses_new_connections() {
    let rt = runtime();
    let (arrived_tx, arrived_rx) = std::sync::mpsc::channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let upstream = {
        let release = Arc::clone(&release);
        let arrived_tx = Arc::new(std::sync::Mutex::new(arrived_tx));
        rt.block_on(upstream::serve(move |_req| {
            let release = Arc::clone(&release);
            let _ = arrived_tx.lock().expect("lock").send(());
            async move {
                release.notified().await;
                upstream::text("finished after SIGTERM")
            }
        }))
    };
    let text = config(
        Ipv4Addr::LOCALHOST.into(),
        upstream,
        &["127.0.0.1/32".into()],
        "socket",
        None,
    );
    let mut gw = Gateway::start(&text, 1);
    let addr = gw.listeners[0];
    let client = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 7).into(), 5555);
    let in_flight = std::thread::spawn(move || {
        let mut conn = Conn::new(
            TcpStream::connect(addr).expect("connect"),
            Some((client, addr)),
        )
        .expect("conn");
        conn.get("/long")
    });
    arrived_rx
        .recv_timeout(EVENT_TIMEOUT)
        .expect("the request reached the upstream");
    gw.signal(Signal::SIGTERM);
    gw.wait_for(
        |e| message(e).is_some_and(|m| m.starts_with("draining")),
        EVENT_TIMEOUT,
    )
    .unwrap_or_else(|| panic!("no drain logged:\n{}", gw.log()));
    let err = TcpStream::connect(addr).expect_err("the listener is closed while draining");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    release.notify_one();
    let (status, body) = in_flight
        .join()
        .expect("client thread")
        .expect("the in-flight request completes");
    assert_eq!((status, body.as_str()), (200, "finished after SIGTERM"));
    assert_eq!(
        gw.wait_exit(EVENT_TIMEOUT),
        Some(true),
        "clean exit after the drain:\n{}",
        gw.log()
    );
    assert!(
        !gw.events("stopped; kernel filter detached").is_empty(),
        "{}",
        gw.log()
    );
}

#[test]
fn watch_reloads_when_the_config_or_a_certificate_changes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let make_cert = || common::certs::write_self_signed(dir.path(), "app.test");
    let (cert, key) = make_cert();
    let tls_port = free_port();
    let text = |trusted: &str| {
        let app = app("127.0.0.1:9".parse().expect("addr"))
            .tls(Tls::files(&cert, &key).https_redirection(false));
        config_of(
            Ipv4Addr::LOCALHOST.into(),
            app,
            &[trusted.into()],
            "off",
            None,
        )
        .listen_port_tls(tls_port)
        .render()
    };
    let mut gw = Gateway::start_with_args(&["-w"], &text("127.0.0.1/32"), 2);
    let reloaded = |gw: &mut Gateway, what: &str| {
        gw.wait_for(|e| message(e) == Some("config reloaded"), EVENT_TIMEOUT)
            .unwrap_or_else(|| panic!("no reload after {what}:\n{}", gw.log()));
    };
    std::fs::write(&gw.config_path, text("127.0.0.0/8")).expect("rewrite");
    reloaded(&mut gw, "the config changed");
    make_cert();
    reloaded(&mut gw, "the certificate changed");
}

#[test]
fn grace_period_bounds_the_drain() {
    let rt = runtime();
    // An upstream that says when a request arrived, and never answers it.
    let (arrived_tx, arrived_rx) = std::sync::mpsc::channel::<()>();
    let arrived_tx = Arc::new(std::sync::Mutex::new(arrived_tx));
    let upstream = rt.block_on(upstream::serve(move |_req| {
        let _ = arrived_tx.lock().expect("lock").send(());
        async {
            std::future::pending::<()>().await;
            upstream::text("never")
        }
    }));
    let text = config(
        Ipv4Addr::LOCALHOST.into(),
        upstream,
        &["127.0.0.1/32".into()],
        "off",
        None,
    );
    let mut gw = Gateway::start_with_args(&["--grace-period", "1"], &text, 1);
    let addr = gw.listeners[0];
    let client = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 7).into(), 5555);
    let _stuck = std::thread::spawn(move || {
        let mut conn = Conn::new(
            TcpStream::connect(addr).expect("connect"),
            Some((client, addr)),
        )
        .expect("conn");
        conn.get("/forever")
    });
    arrived_rx
        .recv_timeout(EVENT_TIMEOUT)
        .expect("the request reached the upstream");
    gw.signal(Signal::SIGTERM);
    let cut = gw
        .wait_for(
            |e| message(e).is_some_and(|m| m.starts_with("grace period over")),
            EVENT_TIMEOUT,
        )
        .unwrap_or_else(|| panic!("the drain was not cut at the grace period:\n{}", gw.log()));
    assert_eq!(common::gateway::field(&cut, "open").as_deref(), Some("1"));
    assert!(
        gw.wait_exit(EVENT_TIMEOUT).is_some(),
        "trustgate did not exit after the grace period"
    );
}

#[test]
fn max_clients_per_ip_counts_the_recovered_client() {
    let rt = runtime();
    let upstream = rt.block_on(upstream::demo());
    let text = config_of(
        Ipv4Addr::LOCALHOST.into(),
        app(upstream),
        &["127.0.0.1/32".into()],
        "off",
        None,
    )
    .max_clients_per_ip(2)
    .render();
    let mut gw = Gateway::start(&text, 1);
    let addr = gw.listeners[0];
    let alice = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 1).into(), 1000);
    let bob = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 2).into(), 1000);
    let open = |client| {
        let mut conn = Conn::new(
            TcpStream::connect(addr).expect("connect"),
            Some((client, addr)),
        )
        .expect("conn");
        let status = conn.get("/").map(|(s, _)| s);
        (conn, status)
    };
    // All from the same load balancer (127.0.0.1): the limit is per recovered client.
    let (_a1, s1) = open(alice);
    let (_a2, s2) = open(alice);
    let (_a3, s3) = open(alice);
    let (_b1, s4) = open(bob);
    assert_eq!((s1.ok(), s2.ok()), (Some(200), Some(200)));
    assert!(
        s3.is_err(),
        "a third connection for the same client was served"
    );
    assert_eq!(
        s4.ok(),
        Some(200),
        "another client behind the same load balancer is served"
    );
    gw.wait_for(
        |e| message(e) == Some("refused: max_clients_per_ip reached"),
        EVENT_TIMEOUT,
    )
    .unwrap_or_else(|| panic!("refusal not logged:\n{}", gw.log()));
}

#[test]
fn reload_rebinds_a_listener_whose_port_changed() {
    let rt = runtime();
    let upstream = rt.block_on(upstream::demo());
    let (first, second) = (free_port(), free_port());
    let text = |port: u16| {
        config_of(
            Ipv4Addr::LOCALHOST.into(),
            app(upstream),
            &["127.0.0.1/32".into()],
            "socket",
            None,
        )
        .listen_port(port)
        .render()
    };
    let mut gw = Gateway::start(&text(first), 1);
    let old: SocketAddr = (Ipv4Addr::LOCALHOST, first).into();
    let client = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 7).into(), 5555);
    let mut established = Conn::new(
        TcpStream::connect(old).expect("connect"),
        Some((client, old)),
    )
    .expect("conn");
    assert_eq!(established.get("/before").expect("served").0, 200);
    assert_eq!(reload(&mut gw, &text(second)), "config reloaded");
    let new: SocketAddr = (Ipv4Addr::LOCALHOST, second).into();
    let mut conn = Conn::new(
        TcpStream::connect(new).expect("the new port listens"),
        Some((client, new)),
    )
    .expect("conn");
    assert_eq!(conn.get("/new-port").expect("served").0, 200);
    // The new listener got the kernel filter before it listened.
    let err = common::connect_from(Ipv4Addr::new(127, 0, 0, 2).into(), new, DROP_TIMEOUT)
        .expect_err("outsider");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    let err = TcpStream::connect(old).expect_err("the old port is closed");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(
        established
            .get("/after")
            .expect("the established connection carries on")
            .0,
        200
    );
}
