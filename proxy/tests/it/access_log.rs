//! The access log end to end, with the real binary: a record per request in a file, in
//! each format, parsed back (the client recovered from the PROXY header, query values
//! redacted); SIGUSR1 after a rename writes to the new file; a file nobody reads (a
//! FIFO) neither slows nor stops requests, and the records it cannot take are counted
//! as dropped; an unwritable path is named by `trustgate check`.

use crate::common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gateway::{Gateway, message};
use common::http1::Conn;
use common::testconfig::{AccessLog, App, KernelFilter, ProxyProtocol, TestConfig};
use common::upstream;
use nix::sys::signal::Signal;
use serde_json::Value;

/// Generous bound on waiting for a record that should already be there.
const HANG_GUARD: Duration = Duration::from_secs(30);
/// How often a test looks at the log file again while waiting for a record.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The client the PROXY header names.
const CLIENT: &str = "203.0.113.7:4711";

/// Fluentd's `apache2` parser, as its documentation gives it
/// (<https://docs.fluentd.org/parser/apache2>, "Regexp Patterns"); time format
/// `%d/%b/%Y:%H:%M:%S %z`.
const FLUENTD_APACHE2: &str = r#"^(?<host>[^ ]*) [^ ]* (?<user>[^ ]*) \[(?<time>[^\]]*)\] "(?<method>\S+)(?: +(?<path>(?:[^\"]|\\.)*?)(?: +\S*)?)?" (?<code>[^ ]*) (?<size>[^ ]*)(?: "(?<referer>(?:[^\"]|\\.)*)" "(?<agent>(?:[^\"]|\\.)*)")?$"#;

fn config(upstream: SocketAddr, access_log: AccessLog) -> String {
    TestConfig::new()
        .listen_port(0)
        .listen_v4("127.0.0.1")
        .default_app("app")
        .redact_query_in_access_log(true)
        .app("app", App::new("app.test").upstream(upstream))
        .proxy_protocol(
            ProxyProtocol::trusting(["127.0.0.1/32"]).kernel_filter(KernelFilter::mode("off")),
        )
        .metrics("127.0.0.1:0")
        .access_log(access_log)
        .render()
}

/// A keep-alive connection to `gw` that starts with a PROXY header naming [`CLIENT`].
fn connect(gw: &Gateway) -> Conn {
    connect_to(gw.listeners[0])
}

fn connect_to(addr: SocketAddr) -> Conn {
    let stream = TcpStream::connect(addr).expect("connecting to trustgate");
    let client: SocketAddr = CLIENT.parse().expect("client address");
    Conn::new(stream, Some((client, addr))).expect("sending the PROXY header")
}

/// The lines of `path` once it holds at least `n` (polled, bounded).
fn lines_once(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, not {n}, after {HANG_GUARD:?}",
            path.display(),
            lines.len()
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

fn scrape(addr: SocketAddr) -> common::scrape::Scrape {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime to scrape with");
    rt.block_on(common::scrape::scrape(addr))
}

/// Starts trustgate logging to `dir/access.log` in `format`, sends one request with a
/// query and returns the record's line.
fn one_record(format: &str) -> String {
    let (_rt, demo) = upstream::demo_in_background();
    let dir = temp_dir();
    let path = dir.path().join("access.log");
    let gw = Gateway::start(&config(demo, AccessLog::to(&path).format(format)), 1);
    let (status, _) = connect(&gw)
        .get("/logged?token=s3cret&x")
        .expect("a response");
    assert_eq!(status, 200);
    let lines = lines_once(&path, 1);
    assert_eq!(lines.len(), 1, "one line per request: {lines:?}");
    assert!(
        !gw.seen.iter().any(|e| e.get("client").is_some()),
        "access records went to stderr too"
    );
    lines[0].clone()
}

#[test]
fn json_records_in_a_file_parse_back_with_their_fields() {
    let line = one_record("json");
    let v: Value = serde_json::from_str(&line).expect("a JSON object");
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    assert_eq!(s("client").as_deref(), Some("203.0.113.7"));
    assert_eq!(v.get("client_port").and_then(Value::as_u64), Some(4711));
    assert!(s("peer").is_some_and(|p| p.starts_with("127.0.0.1:")));
    assert_eq!(s("method").as_deref(), Some("GET"));
    assert_eq!(s("host").as_deref(), Some("app.test"));
    assert_eq!(s("path").as_deref(), Some("/logged?token=<redacted>&x"));
    assert_eq!(s("version").as_deref(), Some("HTTP/1.1"));
    assert_eq!(v.get("status").and_then(Value::as_u64), Some(200));
    assert!(s("upstream").is_some());
    assert!(
        v.get("bytes")
            .and_then(Value::as_u64)
            .is_some_and(|b| b > 0)
    );
    assert!(v.get("duration_ms").and_then(Value::as_u64).is_some());
    assert!(s("time").is_some_and(|t| t.ends_with('Z') && t.len() == 27));
    assert_eq!(v.get("referer"), Some(&Value::Null));
}

#[test]
fn combined_records_in_a_file_parse_with_fluentds_apache2_expression() {
    let line = one_record("combined");
    let re = regex::Regex::new(FLUENTD_APACHE2).expect("Fluentd's expression compiles");
    let caps = re
        .captures(&line)
        .unwrap_or_else(|| panic!("not a combined line: {line}"));
    let c = |name: &str| caps.name(name).map(|m| m.as_str());
    assert_eq!(
        c("host"),
        Some("203.0.113.7"),
        "$remote_addr is the PROXY client"
    );
    assert_eq!(c("user"), Some("-"));
    assert_eq!(c("method"), Some("GET"));
    assert_eq!(c("path"), Some("/logged?token=<redacted>&x"));
    assert_eq!(c("code"), Some("200"));
    assert!(c("size").is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n > 0)));
    assert_eq!(c("referer"), Some("-"));
    assert_eq!(c("agent"), Some("-"));
    let time = c("time").expect("a time");
    assert!(time.ends_with(" +0000") && time.len() == 26, "{time}");
}

#[test]
fn text_records_in_a_file_keep_the_fields_of_the_old_event() {
    let line = one_record("text");
    let (head, fields) = line
        .split_once("  INFO trustgate::access: access ")
        .unwrap_or_else(|| panic!("not a text line: {line}"));
    assert!(head.ends_with('Z'), "{head}");
    let field = |name: &str| {
        fields
            .split(' ')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    assert_eq!(field("client"), Some("203.0.113.7"));
    assert_eq!(field("client_port"), Some("4711"));
    assert_eq!(field("host"), Some("app.test"));
    assert_eq!(field("path"), Some("/logged?token=<redacted>&x"));
    assert_eq!(field("status"), Some("200"));
    assert_eq!(field("version"), Some("HTTP/1.1"));
    assert!(field("bytes").is_some_and(|b| b != "0"));
}

#[test]
fn sigusr1_after_a_rename_writes_to_a_new_file_at_the_path() {
    let (_rt, demo) = upstream::demo_in_background();
    let dir = temp_dir();
    let path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let mut gw = Gateway::start(&config(demo, AccessLog::to(&path).format("combined")), 1);
    let mut conn = connect(&gw);
    conn.get("/before").expect("a response");
    lines_once(&path, 1);
    std::fs::rename(&path, &rotated).expect("rotating the log");
    gw.signal(Signal::SIGUSR1);
    gw.wait_for(|e| message(e) == Some("access log reopened"), HANG_GUARD)
        .unwrap_or_else(|| panic!("no reopen logged:\n{}", gw.log()));
    conn.get("/after")
        .expect("a response on the same connection");
    let new = lines_once(&path, 1);
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].contains("\"GET /after HTTP/1.1\""), "{new:?}");
    let old = lines_once(&rotated, 1);
    assert_eq!(old.len(), 1, "{old:?}");
    assert!(old[0].contains("\"GET /before HTTP/1.1\""), "{old:?}");
}

/// Rewrites the config and reloads with SIGHUP; panics unless the reload applied.
fn reload(gw: &mut Gateway, text: &str) {
    std::fs::write(&gw.config_path, text).expect("rewriting the config");
    gw.signal(Signal::SIGHUP);
    gw.wait_for(|e| message(e) == Some("config reloaded"), HANG_GUARD)
        .unwrap_or_else(|| panic!("the reload was not applied:\n{}", gw.log()));
}

#[test]
fn a_reload_changes_the_path_and_the_format_and_turns_the_log_off() {
    let (_rt, demo) = upstream::demo_in_background();
    let dir = temp_dir();
    let first = dir.path().join("first.log");
    let second = dir.path().join("second.log");
    let table = |path: &Path, format: &str, off: bool| AccessLog::to(path).format(format).off(off);
    let mut gw = Gateway::start(&config(demo, table(&first, "json", false)), 1);
    let mut conn = connect(&gw);
    conn.get("/one").expect("a response");
    lines_once(&first, 1);
    reload(&mut gw, &config(demo, table(&second, "combined", false)));
    conn.get("/two").expect("a response");
    let lines = lines_once(&second, 1);
    assert!(lines[0].contains("\"GET /two HTTP/1.1\""), "{lines:?}");
    reload(&mut gw, &config(demo, table(&second, "combined", true)));
    // Requests on a new connection get the new runtime; the old one keeps its own.
    let mut fresh = connect(&gw);
    fresh.get("/unlogged").expect("a response");
    reload(&mut gw, &config(demo, table(&second, "combined", false)));
    connect(&gw).get("/three").expect("a response");
    let lines = lines_once(&second, 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("/three"), "{lines:?}");
    let first_lines = lines_once(&first, 1);
    assert_eq!(first_lines.len(), 1, "{first_lines:?}");
    assert!(first_lines[0].starts_with('{'), "{first_lines:?}");
}

#[test]
fn a_log_nobody_reads_neither_slows_requests_nor_stops_them_and_drops_are_counted() {
    use std::os::unix::fs::OpenOptionsExt;
    let (_rt, demo) = upstream::demo_in_background();
    let dir = temp_dir();
    let fifo = dir.path().join("access.fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("running mkfifo");
    assert!(made.success(), "mkfifo failed");
    // A reader that never reads: opening for writing then succeeds, writes block once
    // the pipe's buffer is full.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("opening the FIFO's read end");
    let mut gw = Gateway::start(&config(demo, AccessLog::to(&fifo).format("json")), 1);
    let metrics = gw.metrics_listener();
    let addr = gw.listeners[0];
    // More than the pipe (64 KiB) and the queue (4096 records) hold together.
    const CONNECTIONS: usize = 4;
    const PER_CONNECTION: usize = 2000;
    let slowest: Vec<Duration> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                s.spawn(move || {
                    let mut conn = connect_to(addr);
                    let mut slowest = Duration::ZERO;
                    for i in 0..PER_CONNECTION {
                        let started = Instant::now();
                        let (status, _) = conn
                            .get(&format!("/r{i}"))
                            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
                        assert_eq!(status, 200);
                        slowest = slowest.max(started.elapsed());
                    }
                    slowest
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a client thread"))
            .collect()
    });
    let slowest = slowest.into_iter().max().unwrap_or_default();
    // A worker blocked on the pipe would never answer (the client gives up at 10 s).
    assert!(
        slowest < Duration::from_secs(2),
        "a request took {slowest:?} while the log was stalled"
    );
    let scraped = scrape(metrics);
    let dropped = scraped.get("trustgate_access_log_dropped_total");
    assert!(
        dropped > 0 && dropped < (CONNECTIONS * PER_CONNECTION) as u64,
        "dropped {dropped}"
    );
    assert!(gw.is_running());
}

#[test]
fn check_names_an_access_log_path_that_cannot_be_opened() {
    let dir = temp_dir();
    let missing = dir.path().join("no-such-dir").join("access.log");
    let text = config(
        "127.0.0.1:9".parse().expect("address"),
        AccessLog::to(&missing),
    );
    let (_cfg_dir, config_path): (tempfile::TempDir, PathBuf) =
        common::gateway::write_config(&text);
    let out = Command::new(env!("CARGO_BIN_EXE_trustgate"))
        .arg("-c")
        .arg(&config_path)
        .arg("check")
        .stdin(Stdio::null())
        .output()
        .expect("running trustgate check");
    assert!(!out.status.success(), "check passed an unwritable path");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("access_log.path") && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains("cannot open this file for appending"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_format_is_refused_with_the_nearest_name() {
    let text = config(
        "127.0.0.1:9".parse().expect("address"),
        AccessLog::new().format("jsno"),
    );
    let (_dir, config_path) = common::gateway::write_config(&text);
    let out = Command::new(env!("CARGO_BIN_EXE_trustgate"))
        .arg("-c")
        .arg(&config_path)
        .arg("check")
        .output()
        .expect("running trustgate check");
    assert!(!out.status.success());
    let stderr = BufReader::new(&out.stderr[..])
        .lines()
        .map_while(Result::ok)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        stderr.contains("access_log.format = \"jsno\"")
            && stderr.contains("did you mean \"json\"?"),
        "{stderr}"
    );
}
