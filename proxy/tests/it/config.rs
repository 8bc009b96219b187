//! The config module end to end: rpxy's own example loads with one warning per feature
//! trustgate lacks, every supported key reaches its typed value, and every refusal
//! names the file, the key and the value and says what to do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use http::header::HeaderName;
use ipnet::IpNet;
use proxy::config::{
    self, AccessDestination, AccessFormat, AccessLogConfig, App, AppTls, Config, ConfigError,
    HeaderRules, HostHeader, KernelFilterConfig, KernelFilterMode, Limits, Listeners, LoadBalance,
    LoadOptions, ProxyProtocolConfig, Route, Timeouts, TlvField, TlvHeader, Upstream, UpstreamHttp,
    UpstreamOptions, ValueError, Warning, WarningKind, XdpMode,
};
use proxy::proxy_protocol::Version;
use proxy::trust::{Class, TrustList};

const NO_FILE_CHECKS: LoadOptions = LoadOptions { check_files: false };

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

fn nets(list: &[&str]) -> TrustList {
    TrustList::new(
        list.iter()
            .map(|s| s.parse::<IpNet>().expect("test network")),
    )
}

fn upstream(uri: &str) -> Upstream {
    let uri = uri.parse::<Uri>().expect("test URI");
    Upstream {
        scheme: uri.scheme().expect("test URI has a scheme").clone(),
        authority: uri.authority().expect("test URI has a host").clone(),
        send_proxy_protocol: None,
    }
}

fn proxied(uri: &str, version: Version) -> Upstream {
    Upstream {
        send_proxy_protocol: Some(version),
        ..upstream(uri)
    }
}

fn keys_and_kinds(warnings: &[Warning]) -> Vec<(&str, &WarningKind)> {
    warnings.iter().map(|w| (w.key.as_str(), &w.kind)).collect()
}

#[test]
fn rpxy_example_loads_with_one_warning_per_unsupported_feature() {
    let path = fixture("rpxy-config-example.toml");
    let (config, warnings) =
        config::load_with(&path, NO_FILE_CHECKS).expect("rpxy's example loads");
    assert_eq!(
        keys_and_kinds(&warnings),
        vec![
            (
                "experimental.acme",
                &WarningKind::Unsupported {
                    feature: "ACME certificate issuance"
                }
            ),
            (
                "experimental.cache",
                &WarningKind::Unsupported {
                    feature: "the response cache"
                }
            ),
            (
                "experimental.h3",
                &WarningKind::Unsupported { feature: "HTTP/3" }
            ),
            (
                "apps.localhost_with_acme.tls.acme",
                &WarningKind::AcmeAppNotServed
            ),
        ]
    );
    assert!(warnings.iter().all(|w| w.file == path));
    assert_eq!(
        warnings[2].to_string(),
        format!(
            "{}: experimental.h3: HTTP/3 is not implemented by trustgate; ignored",
            path.display()
        )
    );

    assert_eq!(config.listeners.plain, vec![addr("0.0.0.0:8080")]);
    assert_eq!(config.listeners.tls, vec![addr("0.0.0.0:8443")]);
    assert_eq!(config.limits.max_concurrent_streams, 100);
    let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["another_localhost", "localhost"]);
    assert_eq!(config.default_app.as_deref(), Some("another_localhost"));
    let localhost = &config.apps[1];
    assert_eq!(
        localhost.tls.as_ref().map(|t| t.cert_path.as_path()),
        Some(Path::new("/certs/server.crt"))
    );
    let paths: Vec<&str> = localhost.routes.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/maps", "/"]);
    assert_eq!(localhost.routes[1].load_balance, LoadBalance::RoundRobin);
    assert_eq!(
        localhost.routes[1].options.http_version,
        UpstreamHttp::Http2
    );
    assert_eq!(
        localhost.routes[0].upstreams[0],
        upstream("https://www.bing.com")
    );
    assert_eq!(config.proxy_protocol, None);
}

#[test]
fn rpxy_example_with_file_checks_names_the_missing_certificate() {
    let path = fixture("rpxy-config-example.toml");
    let err = config::load(&path).expect_err("/certs/server.crt does not exist here");
    assert!(
        matches!(&err, ConfigError::File { key, .. } if key == "apps.localhost.tls.tls_cert_path")
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}: apps.localhost.tls.tls_cert_path = \"/certs/server.crt\": cannot read this \
             file: No such file or directory (os error 2)",
            path.display()
        )
    );
}

#[test]
fn rpxy_example_loads_with_file_checks_once_the_certificates_exist() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-rpxy-example");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&cert, "not checked as PEM here").expect("write cert");
    std::fs::write(&key, "not checked as PEM here").expect("write key");
    let text = std::fs::read_to_string(fixture("rpxy-config-example.toml"))
        .expect("fixture")
        .replace("/certs/server.crt", &cert.display().to_string())
        .replace("/certs/server.key", &key.display().to_string());
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    let (config, warnings) = config::load(&path).expect("loads with the files in place");
    assert_eq!(warnings.len(), 4);
    assert_eq!(
        config.apps[1].tls.as_ref().map(|t| t.key_path.clone()),
        Some(key)
    );

    // A directory where a file belongs is refused.
    let text = std::fs::read_to_string(&path)
        .expect("config")
        .replace(&cert.display().to_string(), &dir.display().to_string());
    std::fs::write(&path, text).expect("write config");
    let err = config::load(&path).expect_err("a directory is not a certificate");
    assert!(
        err.to_string()
            .contains("cannot read this file: is a directory"),
        "{err}"
    );
}

#[test]
fn every_supported_key_is_parsed_to_its_value() {
    let path = fixture("every-key.toml");
    let (config, warnings) = config::load_with(&path, NO_FILE_CHECKS).expect("every-key loads");
    assert_eq!(warnings, vec![]);
    let plain_app = App {
        name: "plain".into(),
        server_name: "plain.example".into(),
        tls: None,
        routes: vec![Route {
            path: "/".into(),
            replace_path: None,
            upstreams: vec![upstream("http://127.0.0.1:8081")],
            load_balance: LoadBalance::First,
            options: UpstreamOptions {
                host: HostHeader::Original,
                http_version: UpstreamHttp::Auto,
                forwarded_header: false,
                upgrade_insecure_requests: false,
            },
        }],
        tlv_headers: vec![],
    };
    let tlv = |tlv, name: &'static str| TlvHeader {
        tlv,
        name: HeaderName::from_static(name),
    };
    let secure_app = App {
        name: "secure".into(),
        server_name: "secure.example".into(),
        tls: Some(AppTls {
            cert_path: "certs/secure.crt".into(),
            key_path: "certs/secure.key".into(),
            client_ca_path: Some("certs/ca.crt".into()),
            https_redirection: false,
        }),
        routes: vec![
            Route {
                path: "/api".into(),
                replace_path: Some("/v2".into()),
                upstreams: vec![
                    proxied("http://api.internal:9000", Version::V1),
                    upstream("http://api2.internal:9000"),
                ],
                load_balance: LoadBalance::Random,
                options: UpstreamOptions {
                    host: HostHeader::Original,
                    http_version: UpstreamHttp::Http11,
                    forwarded_header: true,
                    upgrade_insecure_requests: true,
                },
            },
            Route {
                path: "/".into(),
                replace_path: None,
                upstreams: vec![
                    proxied("https://10.1.0.1:8443", Version::V2),
                    upstream("https://10.1.0.2:8443"),
                ],
                load_balance: LoadBalance::RoundRobin,
                options: UpstreamOptions {
                    host: HostHeader::Upstream,
                    http_version: UpstreamHttp::Http2,
                    forwarded_header: false,
                    upgrade_insecure_requests: false,
                },
            },
        ],
        tlv_headers: vec![
            tlv(TlvField::Alpn, "x-pp-alpn"),
            tlv(TlvField::Authority, "x-pp-authority"),
            tlv(TlvField::UniqueId, "x-request-id"),
            tlv(TlvField::Netns, "x-pp-netns"),
            tlv(TlvField::SslVersion, "x-client-tls-version"),
            tlv(TlvField::SslCn, "x-client-cn"),
            tlv(TlvField::SslCipher, "x-client-cipher"),
            tlv(TlvField::SslSigAlg, "x-pp-sig-alg"),
            tlv(TlvField::SslKeyAlg, "x-pp-key-alg"),
            tlv(TlvField::SslGroup, "x-pp-group"),
            tlv(TlvField::SslSigScheme, "x-pp-sig-scheme"),
            tlv(TlvField::SslVerify, "x-client-verify"),
            tlv(TlvField::AwsVpceId, "x-aws-vpce-id"),
            tlv(TlvField::AzureLinkId, "x-azure-link-id"),
            tlv(TlvField::GcpPscConnectionId, "x-gcp-psc-id"),
        ],
    };
    let expected = Config {
        source: path.clone(),
        listeners: Listeners {
            plain: vec![
                addr("127.0.0.1:8080"),
                addr("127.0.0.2:8080"),
                addr("[::1]:8080"),
            ],
            tls: vec![
                addr("127.0.0.1:8443"),
                addr("127.0.0.2:8443"),
                addr("[::1]:8443"),
            ],
            public_https_port: Some(443),
        },
        limits: Limits {
            tcp_listen_backlog: 2048,
            max_concurrent_streams: 100,
            max_clients: 1000,
            max_clients_per_ip: Some(20),
            max_upstream_connections: 300,
            max_upstream_connections_per_client: 4,
            request_max_body_size: Some(10 * 1024 * 1024),
            request_max_header_size: 32 * 1024,
            connection_handling_timeout: Some(Duration::from_secs(30)),
        },
        timeouts: Timeouts {
            request_header: Duration::from_secs(30),
            keepalive: Duration::from_millis(15_500),
            request_body: Duration::from_secs(20),
            upstream_connect: Duration::from_secs(3),
            upstream_read: Duration::from_secs(90),
            send: Duration::from_secs(45),
            tunnel_idle: Some(Duration::from_secs(600)),
        },
        trusted_forwarded_proxies: nets(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]),
        redact_query_in_access_log: true,
        access_log: AccessLogConfig {
            on: true,
            destination: AccessDestination::File("logs/access.log".into()),
            format: AccessFormat::Combined,
        },
        headers: HeaderRules {
            underscores_in_headers: true,
            upgrade_protocols: vec!["websocket".into(), "x-custom".into()],
        },
        apps: vec![plain_app, secure_app],
        default_app: Some("plain".into()),
        default_tls_app: Some("secure".into()),
        tls_ticket_key_file: Some(PathBuf::from("certs/ticket.keys")),
        proxy_protocol: Some(ProxyProtocolConfig {
            trust: TrustList::with_classes(
                [
                    ("10.0.0.0/8", Class::Proxy),
                    ("2001:db8::/32", Class::Proxy),
                    ("192.0.2.10/32", Class::Proxy),
                    ("10.1.0.0/16", Class::Direct),
                    ("198.51.100.7/32", Class::Direct),
                ]
                .map(|(n, c)| (n.parse::<IpNet>().expect("test network"), c)),
            )
            .expect("no network in both lists"),
            timeout: Duration::from_millis(100),
            first_byte_timeout: Duration::from_secs(5),
            accept_v1_mixed_families: false,
            kernel_filter: KernelFilterConfig {
                mode: KernelFilterMode::Xdp {
                    interfaces: vec!["eth0".into(), "eth1".into()],
                    xdp_mode: XdpMode::Native,
                },
                required: false,
                observe_only: true,
                detach_accepted: true,
            },
        }),
        metrics_listen: Some(addr("[::1]:9464")),
    };
    assert_eq!(config, expected);
    assert_eq!(config.listeners.ports(), vec![8080, 8443]);
    assert!(config.apps[1].routes[1].upstreams[0].tls());
}

#[test]
fn summary_prints_listeners_apps_routes_trust_and_the_kernel_filter_plan() {
    let (config, _) = config::load_with(fixture("every-key.toml"), NO_FILE_CHECKS).expect("loads");
    let summary = config.summary();
    for line in [
        "  http   127.0.0.1:8080\n",
        "  https  [::1]:8443\n",
        "  HTTPS redirects go to port 443\n",
        "limits: 1000 clients, 20 per client address, 100 HTTP/2 streams per connection, \
         backlog 2048, request body 10 MiB, connection lifetime 30s\n",
        "upstream: 300 connections in total, 4 requests in flight per connection (more wait); \
         descriptors needed: 1364 (1000 clients + 300 upstream + 64 reserved)\n",
        "forwarded headers: believed from 10.0.0.0/8, 192.0.2.7/32, 2001:db8::/32\n",
        "access log: combined to logs/access.log (reopened on SIGUSR1), query strings redacted\n",
        "request headers: head up to 32 KiB (431 beyond), names with '_' passed on unless they \
         fold onto a managed or TLV header, upgrades websocket, x-custom\n",
        "  plain (server_name plain.example), default app for plain HTTP, plain HTTP only\n",
        "  secure (server_name secure.example), TLS with certs/secure.crt, client certificates from certs/ca.crt, \
         default TLS app (ClientHellos without SNI)\n",
        "TLS: ClientHellos without SNI get app secure; unknown SNI is refused (unrecognized_name); \
         session tickets from certs/ticket.keys\n",
        "    PROXY v2 TLVs as headers: alpn -> x-pp-alpn, authority -> x-pp-authority, \
         unique_id -> x-request-id, netns -> x-pp-netns, ",
        "gcp_psc_connection_id -> x-gcp-psc-id\n",
        "    /api (as /v2) -> http://api.internal:9000/ (PROXY v1), http://api2.internal:9000/ [random], \
         HTTP/1.1 upstream, Forwarded header, upgrade-insecure-requests\n",
        "    / -> https://10.1.0.1:8443/ (PROXY v2), https://10.1.0.2:8443/ [round_robin], Host set to the upstream, HTTP/2 upstream\n",
        "proxy protocol: required from trusted load balancers, first byte within 5s, \
         header within 100ms of it; refused from direct sources\n",
        "  trusted load balancers (class proxy, send a PROXY header): 10.0.0.0/8, 192.0.2.10/32, 2001:db8::/32\n",
        "  direct sources (class direct, connect as themselves): 10.1.0.0/16, 198.51.100.7/32\n",
        "  where the lists nest, the longest prefix decides the class\n",
        "kernel filter: XDP on eth0, eth1 (native), SYNs to ports 8080, 8443\n",
        "  optional: run with the user-space check if it cannot be loaded; observe only: count what would be dropped, pass it\n",
        "metrics: http://[::1]:9464/metrics\n",
    ] {
        assert!(summary.contains(line), "missing {line:?} in:\n{summary}");
    }
    assert_eq!(summary, config.to_string());
}

#[test]
fn shipped_config_runs_on_loopback_with_the_socket_filter() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
    let (config, warnings) = config::load(&path).expect("config.toml loads");
    assert_eq!(warnings, vec![]);
    assert_eq!(config.listeners.plain, vec![addr("127.0.0.1:8080")]);
    assert!(config.listeners.tls.is_empty());
    assert_eq!(
        config.default_app().map(|a| a.server_name.as_str()),
        Some("demo.localhost")
    );
    assert_eq!(
        config.apps[0].routes[0].upstreams,
        vec![upstream("http://127.0.0.1:8081")]
    );
    let pp = config.proxy_protocol.expect("PROXY protocol on");
    assert_eq!(pp.trust, nets(&["127.0.0.1/32", "::1/128"]));
    assert_eq!(pp.timeout, Duration::from_millis(50));
    assert_eq!(
        pp.kernel_filter,
        KernelFilterConfig {
            mode: KernelFilterMode::Socket,
            required: false,
            observe_only: false,
            detach_accepted: true,
        }
    );
    assert_eq!(config.metrics_listen, Some(addr("127.0.0.1:9464")));
}

#[test]
fn every_rpxy_feature_trustgate_lacks_loads_with_one_warning_each() {
    let text = r#"
        listen_port = 80
        listen_port_tls = 443
        https_redirection_port = 443
        sticky_cookie_secret = "c2VjcmV0"
        trusted_forwarded_proxies = ["fastly", "10.0.0.0/8"]
        [apps.a]
        server_name = "a"
        tls = { tls_cert_path = "c", tls_cert_key_path = "k", acme = true }
        [[apps.a.reverse_proxy]]
        upstream = [{ location = "x" }, { location = "y" }]
        load_balance = "sticky"
        [apps.a.reverse_proxy.health_check]
        type = "http"
        path = "/healthz"
        [[apps.a.reverse_proxy]]
        path = "/b"
        upstream = [{ location = "x" }]
        load_balance = "primary_backup"
        health_check = true
        [experimental]
        ignore_sni_consistency = true
        [experimental.h3]
        alt_svc_max_age = 3600
        [experimental.cache]
        [experimental.acme]
        email = "a@example.com"
    "#;
    let (config, warnings) = config::parse_str(text, "t.toml").expect("loads");
    let mut keys: Vec<&str> = warnings.iter().map(|w| w.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "apps.a.reverse_proxy[0].health_check",
            "apps.a.reverse_proxy[0].load_balance",
            "apps.a.reverse_proxy[1].health_check",
            "apps.a.reverse_proxy[1].load_balance",
            "apps.a.tls.acme",
            "experimental.acme",
            "experimental.cache",
            "experimental.h3",
            "experimental.ignore_sni_consistency",
            "https_redirection_port",
            "sticky_cookie_secret",
            "trusted_forwarded_proxies[0]",
        ]
    );
    assert_eq!(config.trusted_forwarded_proxies, nets(&["10.0.0.0/8"]));
    let messages: Vec<String> = warnings.iter().map(Warning::to_string).collect();
    for expected in [
        "t.toml: trusted_forwarded_proxies[0]: \"fastly\" is an rpxy provider list, which trustgate \
         does not ship; this entry trusts nobody: list the provider's networks as CIDRs instead",
        "t.toml: apps.a.reverse_proxy[0].load_balance: load_balance = \"sticky\" is not \
         implemented by trustgate; using \"round_robin\"",
        "t.toml: apps.a.reverse_proxy[1].load_balance: load_balance = \"primary_backup\" is not \
         implemented by trustgate; using \"none\"",
        "t.toml: https_redirection_port: renamed public_https_port in rpxy; read as public_https_port",
        "t.toml: experimental.ignore_sni_consistency: trustgate always requires the TLS server \
         name and the Host header to agree; ignored",
        "t.toml: apps.a.tls.acme: ACME is not implemented by trustgate; the certificate files given are used",
        "t.toml: apps.a.reverse_proxy[0].health_check: active upstream health checking is not \
         implemented by trustgate; ignored",
    ] {
        assert!(
            messages.iter().any(|m| m == expected),
            "missing {expected:?} in {messages:#?}"
        );
    }
}

#[test]
fn trusting_everyone_is_warned() {
    let text = "listen_port = 80\ntrusted_forwarded_proxies = \"::/0\"\n[apps.a]\nserver_name = \"a\"\n\
                reverse_proxy = [{ upstream = [{ location = \"x\" }] }]\n\
                [experimental.tcp_recv_proxy_protocol]\ntrusted_proxies = [\"0.0.0.0/0\"]\n";
    let (_, warnings) = config::parse_str(text, "t.toml").expect("loads");
    let messages: Vec<String> = warnings.iter().map(Warning::to_string).collect();
    assert_eq!(
        messages,
        [
            "t.toml: trusted_forwarded_proxies: \"::/0\" trusts every IPv6 source",
            "t.toml: experimental.tcp_recv_proxy_protocol.trusted_proxies[0]: \"0.0.0.0/0\" trusts every IPv4 source",
        ]
    );
}

/// Top-level keys, then one app, then more tables: a config that is valid but for the
/// part under test.
fn cfg(top: &str, tables: &str) -> String {
    format!(
        "{top}\n[apps.a]\nserver_name = \"a.example\"\n\
         reverse_proxy = [{{ upstream = [{{ location = \"127.0.0.1:8081\" }}] }}]\n{tables}"
    )
}

fn pp(lines: &str) -> String {
    cfg(
        "listen_port = 8080",
        &format!("[experimental.tcp_recv_proxy_protocol]\n{lines}"),
    )
}

fn kf(lines: &str) -> String {
    pp(&format!(
        "trusted_proxies = [\"10.0.0.0/8\"]\n[experimental.tcp_recv_proxy_protocol.kernel_filter]\n{lines}"
    ))
}

fn route(lines: &str) -> String {
    format!("listen_port = 80\n[apps.a]\nserver_name = \"a\"\n[[apps.a.reverse_proxy]]\n{lines}")
}

#[test]
fn error_messages_name_the_file_key_value_and_the_fix() {
    let cases: Vec<(String, &str)> = vec![
        (
            pp("trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\"]"),
            "t.toml: experimental.tcp_recv_proxy_protocol.trusted_proxies[1] = \"10.0.0.1/8\": \
             host bits set; did you mean \"10.0.0.0/8\"? (for the one host, write \"10.0.0.1/32\")",
        ),
        (
            pp("trusted_proxie = [\"10.0.0.0/8\"]"),
            "t.toml: unknown key experimental.tcp_recv_proxy_protocol.trusted_proxie; did you mean \
             experimental.tcp_recv_proxy_protocol.trusted_proxies?",
        ),
        (
            cfg("listen_port = 80", "[metrics]\ntimeout = 5"),
            "t.toml: unknown key metrics.timeout; this key belongs in [experimental.tcp_recv_proxy_protocol]",
        ),
        (
            "[apps.a]\nlisten_port = 80".into(),
            "t.toml: unknown key apps.a.listen_port; this is a top-level key: move it above the first [table]",
        ),
        (
            cfg("listen_port = 80", "[apps.b]\nallowhosts = [\"127.0.0.1\"]"),
            "t.toml: unknown key apps.b.allowhosts; it is neither an rpxy nor a trustgate key (see \
             docs/config.md); unknown keys are refused so that a typo cannot silently change behaviour",
        ),
        (
            pp("timeout = 50"),
            "t.toml: experimental.tcp_recv_proxy_protocol.trusted_proxies is missing: PROXY headers \
             are accepted only from the load balancers listed here: list them (trusted_proxies = \
             [\"10.0.0.0/8\"]), or remove the table",
        ),
        (
            pp("trusted_proxies = []"),
            "t.toml: experimental.tcp_recv_proxy_protocol.trusted_proxies = []: the list is empty: \
             list the load balancers allowed to send PROXY headers, or remove \
             [experimental.tcp_recv_proxy_protocol]",
        ),
        (
            pp("trusted_proxies = [\"10.0.0.0/33\"]"),
            "t.toml: experimental.tcp_recv_proxy_protocol.trusted_proxies[0] = \"10.0.0.0/33\": not \
             an IP network: write a CIDR like \"10.0.0.0/8\" or \"2001:db8::/32\", or one address \
             (taken as /32 or /128)",
        ),
        (
            pp("trusted_proxies = [\"::ffff:10.0.0.0/104\"]"),
            "t.toml: experimental.tcp_recv_proxy_protocol.trusted_proxies[0] = \"::ffff:10.0.0.0/104\": \
             an IPv4-mapped IPv6 prefix never matches: mapped peers are judged as IPv4; write \
             \"10.0.0.0/8\" instead",
        ),
        (
            cfg("listen_port = 80\ntrusted_forwarded_proxies = \"cloudfare\"", ""),
            "t.toml: trusted_forwarded_proxies = \"cloudfare\": neither an IP network nor a provider \
             name trustgate recognises; did you mean \"cloudflare\"?",
        ),
        (
            kf("mode = \"sockets\""),
            "t.toml: experimental.tcp_recv_proxy_protocol.kernel_filter.mode = \"sockets\": must be \
             one of \"socket\", \"xdp\", \"off\"; did you mean \"socket\"?",
        ),
        (
            kf("mode = \"xdp\"\ninterfaces = [\"eth0\"]\nxdp_mode = \"drv\""),
            "t.toml: experimental.tcp_recv_proxy_protocol.kernel_filter.xdp_mode = \"drv\": must be \
             one of \"auto\", \"native\", \"generic\"",
        ),
        (
            kf("mode = \"socket\"\ninterfaces = [\"eth0\"]"),
            "t.toml: experimental.tcp_recv_proxy_protocol.kernel_filter.interfaces = [\"eth0\"]: only \
             used with mode = \"xdp\" (mode is \"socket\"): remove this key, or set mode = \"xdp\"",
        ),
        (
            kf("mode = \"xdp\""),
            "t.toml: experimental.tcp_recv_proxy_protocol.kernel_filter.mode = \"xdp\": mode = \"xdp\" \
             needs interfaces = [\"eth0\", ...] naming where to attach; or use mode = \"socket\", \
             which needs no interface",
        ),
        (
            kf("mode = \"xdp\"\ninterfaces = [\"eth 0\"]"),
            "t.toml: experimental.tcp_recv_proxy_protocol.kernel_filter.interfaces[0] = \"eth 0\": \
             not an interface name: 1 to 15 bytes, no '/' and no whitespace",
        ),
        (
            kf("mode = \"xdp\"\ninterfaces = [\"eth0\", \"eth0\"]"),
            "t.toml: experimental.tcp_recv_proxy_protocol.kernel_filter.interfaces[1] = \"eth0\": listed twice",
        ),
        (
            cfg("", ""),
            "t.toml: neither listen_port nor listen_port_tls is set: set listen_port (plain HTTP), \
             listen_port_tls (HTTPS), or both",
        ),
        (
            "listen_port = 80".into(),
            "t.toml: no app to serve: add an [apps.NAME] table with server_name and \
             [[apps.NAME.reverse_proxy]] (see config.toml)",
        ),
        (
            cfg("listen_port = 80\nlisten_port_tls = 80", ""),
            "t.toml: listen_port_tls = 80: listen_port_tls must differ from listen_port",
        ),
        (
            cfg("listen_port = 80\npublic_https_port = 443", ""),
            "t.toml: public_https_port = 443: public_https_port needs listen_port_tls: remove it, or \
             set listen_port_tls",
        ),
        (
            cfg("listen_port = 80\nlisten_port_tls = 8443\npublic_https_port = 443\nhttps_redirection_port = 443", ""),
            "t.toml: https_redirection_port = 443: https_redirection_port is rpxy's old name of \
             public_https_port, which is also set: remove one",
        ),
        (
            cfg("listen_port = 80\nlisten_address_v4 = \"localhost\"", ""),
            "t.toml: listen_address_v4 = \"localhost\": not an IPv4 address (like \"127.0.0.1\")",
        ),
        (
            cfg("listen_port = 80\nlisten_address_v6 = \"fe80::zz\"", ""),
            "t.toml: listen_address_v6 = \"fe80::zz\": not an IPv6 address (like \"::1\" or \"[::1]\")",
        ),
        (
            cfg("listen_port = 80\nlisten_address_v4 = [\"::1\"]", ""),
            "t.toml: listen_address_v4[0] = \"::1\": this is an IPv6 address: put it in listen_address_v6",
        ),
        (
            cfg("listen_port = 80\nlisten_address_v4 = [\"10.0.0.1\", \"0.0.0.0\"]", ""),
            "t.toml: listen_address_v4[1] = \"0.0.0.0\": the wildcard address 0.0.0.0 cannot be \
             combined with other addresses: give it alone, or list only specific addresses",
        ),
        (
            cfg("listen_port = 80\nmax_clients = 0", ""),
            "t.toml: max_clients = 0: must be at least 1: with 0, every connection would be refused",
        ),
        (
            cfg("listen_port = 80\nmax_upstream_connections = 0", ""),
            "t.toml: max_upstream_connections = 0: must be at least 1: with 0, no request could \
             reach an upstream",
        ),
        (
            cfg("listen_port = 80\nmax_upstream_connections_per_client = 0", ""),
            "t.toml: max_upstream_connections_per_client = 0: must be at least 1: with 0, no \
             request could reach an upstream",
        ),
        (
            cfg("listen_port = 80\nrequest_max_body_size = \"10x\"", ""),
            "t.toml: request_max_body_size = \"10x\": not a size: write bytes (1048576), a number \
             with k, m or g (\"10m\" = 10 MiB), or \"unlimited\"",
        ),
        (
            cfg("listen_port = 80\nrequest_max_header_size = \"1m\"", ""),
            "t.toml: request_max_header_size = \"1m\": not a header size: write bytes (65536) or a \
             number with k (\"64k\" = 64 KiB), from 1024 to 262144 bytes",
        ),
        (
            cfg("listen_port = 80\nupgrade_protocols = [\"websocket\", \"h2c\"]", ""),
            "t.toml: upgrade_protocols[1] = \"h2c\": h2c is never tunnelled: every later request on \
             the upgraded connection would skip routing, identity headers and the path checks; \
             remove it",
        ),
        (
            cfg("listen_port = 80\nupgrade_protocols = [\"web socket\"]", ""),
            "t.toml: upgrade_protocols[0] = \"web socket\": not a protocol name: an HTTP token such \
             as \"websocket\" (letters, digits and !#$%&'*+-.^_`|~), without a version",
        ),
        (
            cfg("listen_port = 80", "[metrics]\nlisten = \"9464\""),
            "t.toml: metrics.listen = \"9464\": not an address and port: write \"127.0.0.1:9464\" or \
             \"[::1]:9464\"",
        ),
        (
            cfg("listen_port = 8080", "[metrics]\nlisten = \"127.0.0.1:8080\""),
            "t.toml: metrics.listen = \"127.0.0.1:8080\": this port is also a proxy listen port on an \
             overlapping address: pick another",
        ),
        (
            cfg("listen_port = 80", "[metrics]"),
            "t.toml: metrics.listen is missing: where the Prometheus endpoint listens, e.g. listen = \
             \"127.0.0.1:9464\"; or remove [metrics]",
        ),
        (
            cfg("listen_port = 80\ndefault_app = \"A.example\"", ""),
            "t.toml: default_app = \"A.example\": no app of that name; did you mean \"a\"?",
        ),
        (
            cfg("listen_port = 80\nlisten_port_tls = 443\ndefault_app = \"b\"", "[apps.b]\nserver_name = \"b\"\n\
                 tls = { acme = true }\nreverse_proxy = [{ upstream = [{ location = \"x\" }] }]"),
            "t.toml: default_app = \"b\": that app is not served (see the warning about its ACME certificate)",
        ),
        (
            cfg("listen_port = 80", "[apps.b]\nserver_name = \"A.EXAMPLE\"\nreverse_proxy = [{ upstream = [{ location = \"x\" }] }]"),
            "t.toml: apps.b.server_name = \"a.example\": app a has the same server_name: each server \
             name belongs to one app",
        ),
        (
            cfg("listen_port = 80", "[apps.A]\nserver_name = \"b\"\nreverse_proxy = [{ upstream = [{ location = \"x\" }] }]"),
            "t.toml: apps = \"a\": app names are case-insensitive, and [apps.A] is the same name",
        ),
        (
            "listen_port = 80\n[apps.a]\nserver_name = \"a b\"".into(),
            "t.toml: apps.a.server_name = \"a b\": must not contain whitespace",
        ),
        (
            "listen_port = 80\n[apps.a]\nserver_name = \"\"".into(),
            "t.toml: apps.a.server_name = \"\": must not be empty",
        ),
        (
            "listen_port = 80\n[apps.a]\nreverse_proxy = []".into(),
            "t.toml: apps.a.server_name is missing: the host name this app answers to (Host header \
             and TLS SNI), e.g. server_name = \"example.com\"",
        ),
        (
            "listen_port_tls = 443\n[apps.a]\nserver_name = \"a\"".into(),
            "t.toml: apps.a.tls is missing: only listen_port_tls is set, so every app is served over \
             TLS: give tls = { tls_cert_path = \"...\", tls_cert_key_path = \"...\" }",
        ),
        (
            "listen_port = 80\nlisten_port_tls = 443\n[apps.a]\nserver_name = \"a\"\ntls = { tls_cert_path = \"c\" }".into(),
            "t.toml: apps.a.tls.tls_cert_key_path is missing: listen_port_tls is set and this app has \
             a tls table, so it needs tls_cert_path (PEM chain) and tls_cert_key_path (PEM key); or \
             remove the tls table to serve it over plain HTTP only",
        ),
        (
            "listen_port = 80\n[apps.a]\nserver_name = \"a\"\ntls = { https_redirection = true }".into(),
            "t.toml: apps.a.tls.https_redirection = true: https_redirection needs both listen_port \
             and listen_port_tls: remove it, or set both ports",
        ),
        (
            "listen_port = 80\n[apps.a]\nserver_name = \"a\"".into(),
            "t.toml: apps.a.reverse_proxy is missing: where this app's requests go: \
             [[apps.NAME.reverse_proxy]] with upstream = [{ location = \"host:port\" }]",
        ),
        (
            route("path = \"/\""),
            "t.toml: apps.a.reverse_proxy[0].upstream is missing: where this route sends requests: \
             upstream = [{ location = \"host:port\" }]",
        ),
        (
            route("upstream = [{ tls = true }]"),
            "t.toml: apps.a.reverse_proxy[0].upstream[0].location is missing: the upstream's \
             host[:port], e.g. location = \"127.0.0.1:8081\"",
        ),
        (
            route("path = \"maps\"\nupstream = [{ location = \"x\" }]"),
            "t.toml: apps.a.reverse_proxy[0].path = \"maps\": must start with \"/\"",
        ),
        (
            route("upstream = [{ location = \"x\" }]\n[[apps.a.reverse_proxy]]\npath = \"/\"\nupstream = [{ location = \"y\" }]"),
            "t.toml: apps.a.reverse_proxy[1].path = \"/\": another route of this app has the same \
             path: merge them or change one",
        ),
        (
            route("upstream = [{ location = \"https://x\" }]"),
            "t.toml: apps.a.reverse_proxy[0].upstream[0].location = \"https://x\": write host[:port] \
             without a scheme; https upstreams are chosen with tls = true",
        ),
        (
            route("upstream = [{ location = \"x/base\" }]"),
            "t.toml: apps.a.reverse_proxy[0].upstream[0].location = \"x/base\": an upstream is \
             host[:port] only; rewrite paths with replace_path",
        ),
        (
            route("upstream = [{ location = \"x\" }]\nload_balance = \"round-robin\""),
            "t.toml: apps.a.reverse_proxy[0].load_balance = \"round-robin\": must be one of \"none\", \
             \"round_robin\", \"random\", \"sticky\", \"primary_backup\"; did you mean \"round_robin\"?",
        ),
        (
            route("upstream = [{ location = \"x\" }]\nupstream_options = [\"force_http11_upstream\", \"force_http2_upstream\"]"),
            "t.toml: apps.a.reverse_proxy[0].upstream_options = [\"force_http11_upstream\", \
             \"force_http2_upstream\"]: force_http11_upstream and force_http2_upstream exclude each \
             other: keep one",
        ),
        (
            route("upstream = [{ location = \"x\" }]\nupstream_options = [\"override_host\"]"),
            "t.toml: apps.a.reverse_proxy[0].upstream_options[0] = \"override_host\": must be one of \
             \"keep_original_host\", \"set_upstream_host\", \"force_http11_upstream\", \
             \"force_http2_upstream\", \"forwarded_header\", \"upgrade_insecure_requests\"",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, expected) in &cases {
        match config::parse_str(text, "t.toml") {
            Ok(_) => wrong.push(format!("loaded, expected {expected:?}:\n{text}")),
            Err(e) if e.to_string() != *expected => {
                wrong.push(format!(
                    "got      {:?}\nexpected {expected:?}",
                    e.to_string()
                ));
            }
            Err(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} messages differ:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n\n")
    );
}

#[test]
fn an_unparsable_upstream_keeps_the_uri_error() {
    let err = config::parse_str(&route("upstream = [{ location = \"a b\" }]"), "t.toml")
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.starts_with(
            "t.toml: apps.a.reverse_proxy[0].upstream[0].location = \"a b\": not a host[:port]: "
        ),
        "{message}"
    );
    // The http crate's error is kept, typed, as the problem's cause: a field written into
    // the message, not a `source()` that a chain printer would write a second time.
    assert!(std::error::Error::source(&err).is_none());
    match err {
        ConfigError::Invalid {
            problem: ValueError::UpstreamUri { cause },
            ..
        } => assert!(
            message.ends_with(&format!("not a host[:port]: {cause}")),
            "{message}"
        ),
        other => panic!("expected an invalid upstream uri, got {other}"),
    }
}

#[test]
fn the_command_line_prints_a_cause_once() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trustgate"))
        .args(["--config", "/nonexistent/trustgate.toml", "check"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running trustgate check");
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "trustgate: /nonexistent/trustgate.toml: cannot read the config file: No such file or \
         directory (os error 2)\n"
    );
}

#[test]
fn wrong_toml_types_and_syntax_are_reported_with_the_line() {
    let err =
        config::parse_str("listen_port = \"80\"", "t.toml").expect_err("a string port is refused");
    assert!(matches!(err, ConfigError::Syntax { .. }));
    let message = err.to_string();
    assert!(
        message.starts_with("t.toml: TOML parse error at line 1"),
        "{message}"
    );
    assert!(message.contains("expected u16"), "{message}");
    let err = config::parse_str("listen_port = 80\n[apps", "t.toml").expect_err("bad TOML");
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn a_missing_config_file_names_the_path() {
    let err = config::load("/nonexistent/trustgate.toml").expect_err("no such file");
    assert_eq!(
        err.to_string(),
        "/nonexistent/trustgate.toml: cannot read the config file: No such file or directory (os error 2)"
    );
    // The io::Error is kept, typed, as a field; it is written into the message above, so
    // it is not also a `source()` that a chain printer would write a second time.
    match &err {
        ConfigError::Read { cause, .. } => {
            assert_eq!(cause.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a read error, got {other}"),
    }
    assert!(std::error::Error::source(&err).is_none());
}
