//! TLS against clients nobody here wrote, with the real binary: `openssl s_client` without
//! SNI (one TLS app, several without a default, `default_tls_app`), with an unknown SNI
//! and with an IP address for one; the 421 after a handshake without SNI; the server's
//! cipher order; HAProxy's `check-ssl` without `check-sni`; and resumption (`-sess_out`,
//! then `-sess_in`) for TLS 1.3 and 1.2 across a SIGHUP, across ticket-key rotations, and
//! between two instances sharing `tls_ticket_key_file` behind HAProxy round-robin. Each
//! test needs `openssl` (and `haproxy` where named), and skips without.

use crate::common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::gateway::{Gateway, message};
use common::scrape::{self, Scrape};
use common::testconfig::{App, KernelFilter, ProxyProtocol, TestConfig, Tls};
use common::{peers, upstream};
use nix::sys::signal::Signal;

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `openssl s_client` may run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

const KEY_A: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const KEY_B: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0";
const KEY_C: &str = "5555555555555555555555555555555555555555555555555555555555555555";

/// Certificates for `a.test` and `b.test`, a demo upstream, and a directory for key
/// files and sessions.
struct Lab {
    openssl: PathBuf,
    dir: tempfile::TempDir,
    upstream: SocketAddr,
    _upstream: tokio::runtime::Runtime,
}

impl Lab {
    fn new() -> Option<Lab> {
        let openssl = common::tool("openssl")?;
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["a.test", "b.test"] {
            common::certs::write_self_signed(dir.path(), name);
        }
        let (runtime, upstream) = upstream::demo_in_background();
        Some(Lab {
            openssl,
            dir,
            upstream,
            _upstream: runtime,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A TLS-only config on an ephemeral port of 127.0.0.1 serving `apps` (of "a", "b"),
    /// with `top` holding the top-level keys under test, metrics on an ephemeral port,
    /// and the PROXY protocol from loopback when `proxied`.
    fn config(&self, apps: &[&str], top: TestConfig, proxied: bool) -> String {
        let mut config = top
            .listen_port_tls(0)
            .listen_v4("127.0.0.1")
            .metrics("127.0.0.1:0");
        for app in apps {
            let (cert, key) = (
                self.path(&format!("{app}.test.crt")),
                self.path(&format!("{app}.test.key")),
            );
            config = config.app(
                app,
                App::new(&format!("{app}.test"))
                    .tls(Tls::files(cert, key))
                    .upstream(self.upstream),
            );
        }
        if proxied {
            config = config.proxy_protocol(
                ProxyProtocol::trusting(["127.0.0.1/32"])
                    .timeout(1000)
                    .kernel_filter(KernelFilter::mode("off")),
            );
        }
        config.render()
    }

    /// Writes `keys` (first encrypts) to the key file with mode 600; returns the config
    /// naming it, to add the keys under test to.
    fn key_file(&self, keys: &[&str]) -> TestConfig {
        let path = self.path("ticket.keys");
        std::fs::write(&path, format!("# test keys\n{}\n", keys.join("\n"))).expect("write keys");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        TestConfig::new().tls_ticket_key_file(path)
    }

    /// Runs `openssl s_client -connect addr ARGS`, sending an HTTP/1.1 GET with `host`
    /// (or nothing) and reading until the server closes.
    fn s_client(&self, addr: SocketAddr, args: &[&str], host: Option<&str>) -> Client {
        let mut child = Command::new(&self.openssl)
            .arg("s_client")
            .arg("-connect")
            .arg(addr.to_string())
            .arg("-ign_eof")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running openssl s_client");
        let mut stdin = child.stdin.take().expect("piped stdin");
        if let Some(host) = host {
            let request = format!("GET /tls HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            // A refused handshake may have closed the pipe already.
            let _ = stdin.write_all(request.as_bytes());
        }
        drop(stdin);
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(CLIENT_TIMEOUT) {
            Ok(out) => out.expect("waiting for s_client"),
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                panic!("openssl s_client {args:?} did not finish within {CLIENT_TIMEOUT:?}");
            }
        };
        Client {
            out: String::from_utf8_lossy(&out.stdout).into_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn session(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// What `s_client` printed.
struct Client {
    out: String,
    err: String,
}

impl Client {
    /// The subject of the certificate served (`CN = a.test`).
    fn subject(&self) -> Option<&str> {
        self.out.lines().find_map(|l| l.strip_prefix("subject="))
    }

    /// The session line: `New, TLSv1.3, Cipher is ...` or `Reused, ...`.
    fn session(&self) -> &str {
        self.out
            .lines()
            .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
            .unwrap_or_else(|| panic!("no session line:\n{}\n{}", self.out, self.err))
    }

    fn reused(&self) -> bool {
        self.session().starts_with("Reused, ")
    }

    /// The HTTP status line of the answer.
    fn status(&self) -> Option<&str> {
        self.out.lines().find(|l| l.starts_with("HTTP/1.1 "))
    }

    /// Whether the server's fatal `unrecognized_name` alert (112) was received.
    fn unrecognized_name(&self) -> bool {
        self.err.contains("alert number 112") || self.err.contains("unrecognized name")
    }

    fn dump(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.out, self.err)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A running trustgate and its addresses.
struct Instance {
    gw: Gateway,
    tls: SocketAddr,
    metrics: SocketAddr,
}

impl Instance {
    fn start(config: &str) -> Instance {
        let mut gw = Gateway::start(config, 1);
        let tls = gw.listeners[0];
        let metrics = gw.metrics_listener();
        Instance { gw, tls, metrics }
    }

    fn scrape(&self) -> Scrape {
        runtime().block_on(scrape::scrape(self.metrics))
    }

    /// Scrapes until `done` holds (counters change with no event to wait for).
    fn until(&self, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
        runtime().block_on(scrape::until(self.metrics, what, EVENT_TIMEOUT, done))
    }

    /// Rewrites the config (or leaves it, with `None`) and reloads with SIGHUP; returns
    /// the reload's outcome message.
    fn reload(&mut self, text: Option<&str>) -> String {
        if let Some(text) = text {
            std::fs::write(&self.gw.config_path, text).expect("rewriting the config");
        }
        self.gw.signal(Signal::SIGHUP);
        let event = self
            .gw
            .wait_for(
                |e| matches!(message(e), Some(m) if m.starts_with("config reloaded") || m.starts_with("reload refused") || m.starts_with("reload failed")),
                EVENT_TIMEOUT,
            )
            .unwrap_or_else(|| panic!("no reload outcome logged:\n{}", self.gw.log()));
        message(&event).unwrap_or_default().to_string()
    }
}

fn tls_errors(s: &Scrape, kind: &str) -> u64 {
    s.get(&format!("trustgate_tls_errors_total{{kind=\"{kind}\"}}"))
}

fn handshakes(s: &Scrape, kind: &str) -> u64 {
    s.get(&format!(
        "trustgate_tls_handshakes_total{{kind=\"{kind}\"}}"
    ))
}

#[test]
fn without_sni_the_only_tls_app_is_served() {
    let Some(lab) = Lab::new() else { return };
    let tg = Instance::start(&lab.config(&["a"], TestConfig::new(), false));
    let c = lab.s_client(tg.tls, &["-noservername"], Some("a.test"));
    assert_eq!(c.subject(), Some("CN = a.test"), "{}", c.dump());
    assert_eq!(c.status(), Some("HTTP/1.1 200 OK"), "{}", c.dump());
    // An IP address as SNI (RFC 6066 forbids it; some clients send one) is no SNI.
    let c = lab.s_client(tg.tls, &["-servername", "127.0.0.1"], Some("a.test"));
    assert_eq!(c.subject(), Some("CN = a.test"), "{}", c.dump());
    assert_eq!(c.status(), Some("HTTP/1.1 200 OK"), "{}", c.dump());
    let s = tg.scrape();
    assert_eq!((handshakes(&s, "full"), tls_errors(&s, "no_sni")), (2, 0));
}

#[test]
fn without_sni_and_without_a_default_several_tls_apps_refuse_with_unrecognized_name() {
    let Some(lab) = Lab::new() else { return };
    let tg = Instance::start(&lab.config(&["a", "b"], TestConfig::new(), false));
    let c = lab.s_client(tg.tls, &["-noservername"], Some("a.test"));
    assert!(c.unrecognized_name(), "{}", c.dump());
    assert_eq!(c.subject(), None, "no certificate was served: {}", c.dump());
    let c = lab.s_client(tg.tls, &["-servername", "127.0.0.1"], None);
    assert!(c.unrecognized_name(), "IP SNI is no SNI: {}", c.dump());
    tg.until("two no_sni failures", |s| tls_errors(s, "no_sni") == 2);
}

#[test]
fn default_tls_app_serves_no_sni_and_the_host_must_name_it() {
    let Some(lab) = Lab::new() else { return };
    let tg =
        Instance::start(&lab.config(&["a", "b"], TestConfig::new().default_tls_app("B"), false));
    let c = lab.s_client(tg.tls, &["-noservername"], Some("b.test"));
    assert_eq!(c.subject(), Some("CN = b.test"), "{}", c.dump());
    assert_eq!(c.status(), Some("HTTP/1.1 200 OK"), "{}", c.dump());
    // b's certificate was served: a request for a is misdirected.
    let c = lab.s_client(tg.tls, &["-noservername"], Some("a.test"));
    assert_eq!(c.subject(), Some("CN = b.test"), "{}", c.dump());
    assert_eq!(
        c.status(),
        Some("HTTP/1.1 421 Misdirected Request"),
        "{}",
        c.dump()
    );
    let c = lab.s_client(tg.tls, &["-servername", "127.0.0.1"], Some("b.test"));
    assert_eq!(c.subject(), Some("CN = b.test"), "{}", c.dump());
    // SNI still wins over the default.
    let c = lab.s_client(tg.tls, &["-servername", "a.test"], Some("a.test"));
    assert_eq!(c.subject(), Some("CN = a.test"), "{}", c.dump());
    assert_eq!(c.status(), Some("HTTP/1.1 200 OK"), "{}", c.dump());
}

#[test]
fn unknown_sni_gets_unrecognized_name_and_is_counted() {
    let Some(lab) = Lab::new() else { return };
    // The default covers no SNI only: a name that no app serves is refused.
    let tg =
        Instance::start(&lab.config(&["a", "b"], TestConfig::new().default_tls_app("a"), false));
    let c = lab.s_client(tg.tls, &["-servername", "c.test"], Some("c.test"));
    assert!(c.unrecognized_name(), "{}", c.dump());
    assert_eq!(c.subject(), None, "{}", c.dump());
    let s = tg.until("an unknown_sni failure", |s| {
        tls_errors(s, "unknown_sni") == 1
    });
    assert_eq!(tls_errors(&s, "no_sni"), 0);
    assert_eq!(handshakes(&s, "full"), 0);
}

#[test]
fn the_server_cipher_order_wins_unless_the_client_puts_chacha_first() {
    let Some(lab) = Lab::new() else { return };
    let tg = Instance::start(&lab.config(&["a"], TestConfig::new(), false));
    let cipher = |args: &[&str]| -> String {
        let mut all = vec!["-servername", "a.test"];
        all.extend_from_slice(args);
        let c = lab.s_client(tg.tls, &all, Some("a.test"));
        c.session()
            .rsplit("Cipher is ")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let aes_128_first = [
        "-ciphersuites",
        "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
    ];
    assert_eq!(cipher(&aes_128_first), "TLS_AES_256_GCM_SHA384");
    let chacha_first = [
        "-ciphersuites",
        "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384",
    ];
    assert_eq!(cipher(&chacha_first), "TLS_CHACHA20_POLY1305_SHA256");
    let tls12 = [
        "-tls1_2",
        "-cipher",
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384",
    ];
    assert_eq!(cipher(&tls12), "ECDHE-ECDSA-AES256-GCM-SHA384");
}

/// Whether a `s_client -sess_out` then `-sess_in` pair resumes, for `version`
/// (`-tls1_3` or `-tls1_2`): the first must be new, the second's answer is returned.
fn new_session(lab: &Lab, addr: SocketAddr, version: &str, file: &str) {
    let out = lab.session(file);
    let c = lab.s_client(
        addr,
        &[version, "-servername", "a.test", "-sess_out", &out],
        Some("a.test"),
    );
    assert!(c.session().starts_with("New, "), "{}", c.dump());
    assert_eq!(c.status(), Some("HTTP/1.1 200 OK"), "{}", c.dump());
}

fn resumed(lab: &Lab, addr: SocketAddr, version: &str, file: &str) -> bool {
    let input = lab.session(file);
    let c = lab.s_client(
        addr,
        &[version, "-servername", "a.test", "-sess_in", &input],
        Some("a.test"),
    );
    assert_eq!(c.status(), Some("HTTP/1.1 200 OK"), "{}", c.dump());
    c.reused()
}

#[test]
fn sessions_resume_for_tls13_and_tls12_before_and_after_a_reload() {
    let Some(lab) = Lab::new() else { return };
    let config = lab.config(&["a", "b"], TestConfig::new(), false);
    let mut tg = Instance::start(&config);
    for version in ["-tls1_3", "-tls1_2"] {
        new_session(&lab, tg.tls, version, "s.pem");
        assert!(
            resumed(&lab, tg.tls, version, "s.pem"),
            "{version}, same runtime"
        );
        assert!(resumed(&lab, tg.tls, version, "s.pem"), "{version}, again");
        assert_eq!(tg.reload(None), "config reloaded");
        assert!(
            resumed(&lab, tg.tls, version, "s.pem"),
            "{version}, after SIGHUP"
        );
        // A config that changes (another app's certificate gone) keeps it too.
        assert_eq!(
            tg.reload(Some(&lab.config(&["a"], TestConfig::new(), false))),
            "config reloaded"
        );
        assert!(
            resumed(&lab, tg.tls, version, "s.pem"),
            "{version}, after a changed config"
        );
        assert_eq!(tg.reload(Some(&config)), "config reloaded");
    }
    let s = tg.scrape();
    assert_eq!((handshakes(&s, "full"), handshakes(&s, "resumed")), (2, 8));
}

#[test]
fn rotated_ticket_keys_keep_sessions_resuming_across_reloads() {
    let Some(lab) = Lab::new() else { return };
    for version in ["-tls1_3", "-tls1_2"] {
        let mut tg = Instance::start(&lab.config(&["a"], lab.key_file(&[KEY_A]), false));
        new_session(&lab, tg.tls, version, "by-a.pem");
        // The new key first, the old one second.
        let rotated = lab.config(&["a"], lab.key_file(&[KEY_B, KEY_A]), false);
        assert_eq!(tg.reload(Some(&rotated)), "config reloaded");
        assert!(
            resumed(&lab, tg.tls, version, "by-a.pem"),
            "{version}: B, A"
        );
        new_session(&lab, tg.tls, version, "by-b.pem");
        // The new key alone: the one that encrypted before (B) still decrypts; A, neither
        // listed nor the last to encrypt, is gone.
        let alone = lab.config(&["a"], lab.key_file(&[KEY_C]), false);
        assert_eq!(tg.reload(Some(&alone)), "config reloaded");
        assert!(
            resumed(&lab, tg.tls, version, "by-b.pem"),
            "{version}: C after B"
        );
        assert!(
            !resumed(&lab, tg.tls, version, "by-a.pem"),
            "{version}: A was dropped"
        );
        // A reload that leaves the key file alone keeps B.
        assert_eq!(tg.reload(None), "config reloaded");
        assert!(
            resumed(&lab, tg.tls, version, "by-b.pem"),
            "{version}: B kept"
        );
    }
}

#[test]
fn a_group_readable_key_file_is_refused_at_check_start_and_reload() {
    let Some(lab) = Lab::new() else { return };
    let good = lab.config(&["a"], lab.key_file(&[KEY_A]), false);
    let mut tg = Instance::start(&good);
    new_session(&lab, tg.tls, "-tls1_3", "s.pem");
    let path = lab.path("ticket.keys");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    // check and start refuse it, saying what to do.
    let (dir, config_path) = common::gateway::write_config(&good);
    let check = Command::new(env!("CARGO_BIN_EXE_trustgate"))
        .args(["check", "-c"])
        .arg(&config_path)
        .output()
        .expect("trustgate check");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        !check.status.success() && stderr.contains("chmod 600"),
        "{stderr}"
    );
    let (started, stderr) = common::gateway::run_to_exit(&["env"], &good);
    assert!(!started && stderr.contains("chmod 600"), "{stderr}");
    drop(dir);
    // A reload refuses it and the running keys stay.
    assert!(tg.reload(None).starts_with("reload failed"));
    assert!(resumed(&lab, tg.tls, "-tls1_3", "s.pem"));
    // A good file is validated and counted by check.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (_dir, config_path) = common::gateway::write_config(&good);
    let check = Command::new(env!("CARGO_BIN_EXE_trustgate"))
        .args(["check", "-c"])
        .arg(&config_path)
        .output()
        .expect("trustgate check");
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        stdout.contains("ticket key file: 1 key(s) read"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ClientHellos without SNI get app a"),
        "{stdout}"
    );
}

/// A HAProxy config of `backends` behind one TCP frontend on `front`, with an admin
/// socket in its directory.
fn haproxy_config(front: SocketAddr, backend: &str) -> String {
    format!(
        "global\n    pidfile {{dir}}/haproxy.pid\n    nbthread 1\n    stats socket {{dir}}/admin.sock level admin\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\
         frontend fe\n    bind {front}\n    default_backend be\n\
         backend be\n{backend}"
    )
}

/// A field of `server`'s row in HAProxy's `show stat` CSV.
fn haproxy_stat(dir: &Path, server: &str, field: &str) -> Option<String> {
    let mut socket = UnixStream::connect(dir.join("admin.sock")).ok()?;
    socket.write_all(b"show stat\n").ok()?;
    let mut csv = String::new();
    socket.read_to_string(&mut csv).ok()?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let column = header.iter().position(|h| *h == field)?;
    let row = lines.find(|l| l.split(',').nth(1) == Some(server))?;
    row.split(',').nth(column).map(str::to_owned)
}

/// Waits until HAProxy has a result of `server`'s health check; returns its status.
fn checked(peer: &peers::Peer, server: &str) -> String {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        // "* " marks a check in progress; INI, none finished yet.
        if let Some(status) = haproxy_stat(peer.dir(), server, "check_status")
            .map(|s| s.trim_start_matches("* ").to_owned())
            && !status.is_empty()
            && !status.starts_with("INI")
        {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "no check result:\n{}",
            peer.log()
        );
        // HAProxy gives no event to wait for; its checks run every 100 ms.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn haproxy_check_ssl_without_check_sni_is_served() {
    let Some(lab) = Lab::new() else { return };
    let Some(haproxy) = common::tool("haproxy") else {
        return;
    };
    for (top, passes) in [
        (TestConfig::new().default_tls_app("b"), true),
        (TestConfig::new(), false),
    ] {
        let tg = Instance::start(&lab.config(&["a", "b"], top, true));
        let front = peers::free_addr("127.0.0.1");
        let backend = format!(
            "    server ours {} send-proxy-v2 check check-send-proxy check-ssl verify none inter 100ms\n",
            tg.tls
        );
        let peer = peers::haproxy(&haproxy, &haproxy_config(front, &backend), front);
        let status = checked(&peer, "ours");
        if passes {
            // L6OK: the TLS handshake completed, without SNI.
            assert_eq!(status, "L6OK", "{}", peer.log());
            tg.until("a full handshake", |s| handshakes(s, "full") >= 1);
            assert_eq!(tls_errors(&tg.scrape(), "no_sni"), 0);
        } else {
            assert_ne!(status, "L6OK", "{}", peer.log());
            tg.until("a no_sni failure", |s| tls_errors(s, "no_sni") >= 1);
        }
    }
}

#[test]
fn two_instances_sharing_a_key_file_resume_each_others_sessions_behind_haproxy() {
    let Some(lab) = Lab::new() else { return };
    let Some(haproxy) = common::tool("haproxy") else {
        return;
    };
    let config = lab.config(&["a"], lab.key_file(&[KEY_A]), true);
    let mut one = Instance::start(&config);
    let two = Instance::start(&config);
    let front = peers::free_addr("127.0.0.1");
    let backend = format!(
        "    balance roundrobin\n    server one {} send-proxy-v2\n    server two {} send-proxy-v2\n",
        one.tls, two.tls
    );
    let _haproxy = peers::haproxy(&haproxy, &haproxy_config(front, &backend), front);
    // HAProxy's readiness probe reached one of them (no TLS, counted as a handshake
    // failure there); the pairs below alternate from whichever is next.
    let mut expected = [(0u64, 0u64); 2];
    for (round, version) in ["-tls1_3", "-tls1_2", "-tls1_3"].iter().enumerate() {
        let file = format!("fleet-{round}.pem");
        new_session(&lab, front, version, &file);
        assert!(
            resumed(&lab, front, version, &file),
            "{version}: the second connection resumed"
        );
        let (s1, s2) = (one.scrape(), two.scrape());
        let counts = [
            (handshakes(&s1, "full"), handshakes(&s1, "resumed")),
            (handshakes(&s2, "full"), handshakes(&s2, "resumed")),
        ];
        // One instance did the full handshake, the other resumed it.
        let (first, second) = if counts[0].0 > expected[0].0 {
            (0, 1)
        } else {
            (1, 0)
        };
        expected[first].0 += 1;
        expected[second].1 += 1;
        assert_eq!(counts, expected, "{version}, round {round}");
        if round == 1 {
            // A reload of one instance (key file re-read) keeps it resuming the other's.
            assert_eq!(one.reload(None), "config reloaded");
        }
    }
}
