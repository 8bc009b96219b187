//! The programs the scenarios measure and the ones around them, each configured for the
//! same job: the upstream (nginx, `return 200 'ok'`), the PROXY-speaking front (HAProxy,
//! TCP mode, `send-proxy-v2`), and the three receiving proxies. Only config text and
//! ports live here; starting and stopping is `procs`.

use std::net::SocketAddr;

use anyhow::{Context, Result};

use super::certs;
use super::procs::{Proc, Scratch};

/// The upstream every proxy forwards to.
pub const UPSTREAM_PORT: u16 = 18081;

/// A receiving proxy under test.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Access log off (`[access_log] off = true`).
    Trustgate,
    /// Access log off.
    Nginx,
    Haproxy,
    /// Access log on, `combined`, to a file.
    TrustgateLogged,
    /// Access log on, nginx's `combined`, to a file (unbuffered, nginx's default).
    NginxLogged,
    /// trustgate in `bulk`, on ports of its own (so that it never meets another
    /// scenario's proxy on a shared machine); access log off.
    TrustgateBulk,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Trustgate, Target::Nginx, Target::Haproxy];
    /// The access-log variants, measured beside their unlogged twins.
    pub const LOGGED: [Target; 2] = [Target::TrustgateLogged, Target::NginxLogged];

    pub fn name(self) -> &'static str {
        match self {
            Target::Trustgate => "trustgate",
            Target::Nginx => "nginx",
            Target::Haproxy => "haproxy",
            Target::TrustgateLogged => "trustgate, access log on",
            Target::NginxLogged => "nginx, access log on",
            Target::TrustgateBulk => "trustgate (bulk)",
        }
    }

    /// The stem of its files in the scratch directory (config, log, pid).
    fn stem(self) -> &'static str {
        match self {
            Target::TrustgateLogged => "trustgate-logged",
            Target::NginxLogged => "nginx-logged",
            Target::TrustgateBulk => "trustgate-bulk",
            other => other.name(),
        }
    }

    /// The same proxy with its access log off.
    pub fn unlogged(self) -> Target {
        match self {
            Target::TrustgateLogged => Target::Trustgate,
            Target::NginxLogged => Target::Nginx,
            other => other,
        }
    }

    fn index(self) -> u16 {
        match self {
            Target::Trustgate => 0,
            Target::Nginx => 1,
            Target::Haproxy => 2,
            Target::TrustgateLogged => 3,
            Target::NginxLogged => 4,
            Target::TrustgateBulk => 5,
        }
    }

    /// Where the proxy takes PROXY-prefixed plain HTTP/1.1.
    pub fn plain_port(self) -> u16 {
        18100 + 10 * self.index()
    }

    /// Where it takes PROXY-prefixed h2 with prior knowledge. nginx 1.22 cannot serve
    /// both HTTP/1.1 and h2c on one port, so it gets a port of its own.
    pub fn h2c_port(self) -> u16 {
        match self {
            Target::Nginx | Target::NginxLogged => self.plain_port() + 1,
            _ => self.plain_port(),
        }
    }

    /// Where it takes PROXY-prefixed TLS.
    pub fn tls_port(self) -> u16 {
        self.plain_port() + 2
    }
}

/// The front's ports for one target's traffic: `(plain, h2c, tls)`.
pub fn front_ports(target: Target) -> (u16, u16, u16) {
    let base = 18000 + 10 * target.index();
    (base, base + 1, base + 2)
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A self-signed certificate for `localhost`, made by the tests' helper: returns
/// `(cert, key, cert+key)` paths.
pub fn certificate(dir: &Scratch) -> Result<(String, String, String)> {
    let certified =
        certs::self_signed("localhost").context("making a certificate for localhost")?;
    let (cert, key) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    Ok((
        dir.write("cert.pem", &cert)?,
        dir.write("key.pem", &key)?,
        dir.write("both.pem", &format!("{cert}{key}"))?,
    ))
}

/// nginx answering `200 ok` on [`UPSTREAM_PORT`], one worker.
pub fn start_upstream(dir: &Scratch, cpus: &str) -> Result<Proc> {
    start_upstream_at(dir, cpus, UPSTREAM_PORT)
}

/// nginx answering `200 ok` on loopback port `port`, one worker.
pub fn start_upstream_at(dir: &Scratch, cpus: &str, port: u16) -> Result<Proc> {
    let d = dir.path.display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/upstream.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  {temps}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ return 200 'ok'; }} }}\n}}\n",
        temps = temp_paths(dir, "upstream"),
    );
    let path = dir.write("upstream.conf", &conf)?;
    let mut proc = Proc::start(
        "upstream",
        cpus,
        &["nginx", "-e", "stderr", "-c", &path],
        &[],
        &dir.path,
    )?;
    proc.wait_ready(local(port), &dir.path)?;
    Ok(proc)
}

/// nginx serving one file of `bytes` bytes, `name` under its root, on [`UPSTREAM_PORT`],
/// one worker, with `sendfile`; `/` is `ok`.
pub fn start_file_upstream(dir: &Scratch, cpus: &str, name: &str, bytes: u64) -> Result<Proc> {
    start_file_upstream_at(dir, cpus, name, bytes, UPSTREAM_PORT)
}

/// [`start_file_upstream`] on loopback port `port`.
pub fn start_file_upstream_at(
    dir: &Scratch,
    cpus: &str,
    name: &str,
    bytes: u64,
    port: u16,
) -> Result<Proc> {
    let root = dir.path.join("www");
    std::fs::create_dir_all(&root)?;
    let file = std::fs::File::create(root.join(name))?;
    file.set_len(bytes)?;
    // `GET /` answers `200 ok`, as the other upstream does, for the scenarios' warm-up.
    std::fs::write(root.join("index.html"), "ok")?;
    let d = dir.path.display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/upstream.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  keepalive_requests 1000000;\n  {temps}\n\
         server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
        temps = temp_paths(dir, "upstream"),
        root = root.display(),
    );
    let path = dir.write("upstream.conf", &conf)?;
    let mut proc = Proc::start(
        "upstream",
        cpus,
        &["nginx", "-e", "stderr", "-c", &path],
        &[],
        &dir.path,
    )?;
    proc.wait_ready(local(port), &dir.path)?;
    Ok(proc)
}

/// HAProxy in TCP mode with `send-proxy-v2`, one thread (`maxconn` 9000: HAProxy needs two
/// descriptors per connection and the open-file limit here is 20,000): for each target, its plain,
/// h2c and TLS ports in front of the target's.
pub fn start_front(dir: &Scratch, cpus: &str, targets: &[Target]) -> Result<Proc> {
    let mut conf = String::from(
        "global\n  nbthread 1\n  maxconn 9000\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  maxconn 9000\n",
    );
    for &t in targets {
        let (plain, h2c, tls) = front_ports(t);
        for (name, from, to) in [
            ("plain", plain, t.plain_port()),
            ("h2c", h2c, t.h2c_port()),
            ("tls", tls, t.tls_port()),
        ] {
            conf.push_str(&format!(
                "listen t{}_{name}\n  bind 127.0.0.1:{from}\n  server s 127.0.0.1:{to} send-proxy-v2\n",
                t.index()
            ));
        }
    }
    let path = dir.write("front.cfg", &conf)?;
    let mut proc = Proc::start(
        "front",
        cpus,
        &["haproxy", "-db", "-f", &path],
        &[],
        &dir.path,
    )?;
    for &t in targets {
        proc.wait_ready(local(front_ports(t).0), &dir.path)?;
    }
    Ok(proc)
}

/// How a scenario limits trustgate.
#[derive(Clone, Copy)]
pub enum Limits {
    /// Raised for throughput and memory: `max_clients` 20,000, PROXY header timeout 1 s.
    Raised,
    /// trustgate's own defaults: no connection-limit or timeout key is set.
    Defaults,
}

/// trustgate's config for the scenarios, written to `dir/trustgate.toml`; returns its path.
/// The kernel filter runs in socket mode and is required (the run fails rather than
/// measure without it).
pub fn trustgate_config(
    dir: &Scratch,
    cert: &(String, String, String),
    limits: Limits,
) -> Result<String> {
    trustgate_config_for(dir, cert, limits, Target::Trustgate)
}

/// [`trustgate_config`] for `t`: [`Target::Trustgate`] with its access log off,
/// [`Target::TrustgateLogged`] logging `combined` to `dir/trustgate-access.log`.
pub fn trustgate_config_for(
    dir: &Scratch,
    cert: &(String, String, String),
    limits: Limits,
    t: Target,
) -> Result<String> {
    let conf = trustgate_config_text(dir, cert, limits, t, &Extra::default());
    dir.write(&format!("{}.toml", t.stem()), &conf)
}

/// What a scenario adds to [`trustgate_config_text`]'s config.
#[derive(Default)]
pub struct Extra<'a> {
    /// More top-level keys.
    pub top: &'a str,
    /// The upstream of `/`, when not [`UPSTREAM_PORT`].
    pub upstream: Option<u16>,
    /// More `[[apps.bench.reverse_proxy]]` tables, after the one for `/`.
    pub routes: &'a str,
    /// More keys of the `kernel_filter` table.
    pub kernel_filter: &'a str,
}

/// The text of [`trustgate_config_for`]'s config, with `extra` in it.
pub fn trustgate_config_text(
    dir: &Scratch,
    cert: &(String, String, String),
    limits: Limits,
    t: Target,
    extra: &Extra<'_>,
) -> String {
    let access_log = match t {
        Target::TrustgateLogged => format!(
            "[access_log]\npath = \"{}\"\nformat = \"combined\"\n",
            dir.path.join("trustgate-access.log").display()
        ),
        _ => "[access_log]\noff = true\n".to_string(),
    };
    let (clients, header_timeout) = match limits {
        Limits::Raised => ("max_clients = 20000\n", "timeout = 1000\n"),
        Limits::Defaults => ("", ""),
    };
    format!(
        "listen_port = {plain}\nlisten_port_tls = {tls}\nlisten_address_v4 = \"127.0.0.1\"\n\
         {clients}{top}max_concurrent_streams = 128\ndefault_app = \"bench\"\n\
         [apps.bench]\nserver_name = \"localhost\"\n\
         tls = {{ tls_cert_path = \"{c}\", tls_cert_key_path = \"{k}\", https_redirection = false }}\n\
         [[apps.bench.reverse_proxy]]\npath = \"/\"\nupstream = [{{ location = \"127.0.0.1:{upstream}\" }}]\n{routes}\
         [experimental.tcp_recv_proxy_protocol]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{header_timeout}\
         [experimental.tcp_recv_proxy_protocol.kernel_filter]\nmode = \"socket\"\nrequired = true\n{kernel_filter}\
         {access_log}",
        plain = t.plain_port(),
        tls = t.tls_port(),
        c = cert.0,
        k = cert.1,
        top = extra.top,
        upstream = extra.upstream.unwrap_or(UPSTREAM_PORT),
        routes = extra.routes,
        kernel_filter = extra.kernel_filter,
    )
}

/// trustgate, release build, logging at warn, access log off, [`Limits::Raised`].
pub fn start_trustgate(
    dir: &Scratch,
    cpus: &str,
    binary: &str,
    cert: &(String, String, String),
) -> Result<Proc> {
    start_trustgate_as(dir, cpus, binary, cert, Target::Trustgate)
}

/// [`start_trustgate`] as `t` (its ports and access log, see [`trustgate_config_for`]).
pub fn start_trustgate_as(
    dir: &Scratch,
    cpus: &str,
    binary: &str,
    cert: &(String, String, String),
    t: Target,
) -> Result<Proc> {
    let config = trustgate_config_for(dir, cert, Limits::Raised, t)?;
    start_trustgate_on(dir, cpus, binary, &config, t)
}

/// trustgate, release build, logging at warn, on the config at `config`.
pub fn start_trustgate_with(dir: &Scratch, cpus: &str, binary: &str, config: &str) -> Result<Proc> {
    start_trustgate_on(dir, cpus, binary, config, Target::Trustgate)
}

/// trustgate, release build, logging at warn, on the config at `config`, listening on
/// `t`'s ports.
pub fn start_trustgate_on(
    dir: &Scratch,
    cpus: &str,
    binary: &str,
    config: &str,
    t: Target,
) -> Result<Proc> {
    let mut proc = Proc::start(
        t.stem(),
        cpus,
        &[binary, "-c", config, "--grace-period", "1"],
        &[("RUST_LOG", "warn")],
        &dir.path,
    )?;
    proc.wait_ready(local(t.plain_port()), &dir.path)?;
    proc.wait_ready(local(t.tls_port()), &dir.path)?;
    Ok(proc)
}

/// nginx for the same job: PROXY on every listener, the client address from the header,
/// `X-Forwarded-For` set, a keep-alive upstream pool; one worker with 18,000
/// connections, access log off. Responses stream through its memory buffers
/// (`proxy_max_temp_file_size 0`), as trustgate's do, rather than spill to temporary files.
pub fn start_nginx(dir: &Scratch, cpus: &str, cert: &(String, String, String)) -> Result<Proc> {
    start_nginx_with(dir, cpus, cert, 18_000)
}

/// [`start_nginx`] as `t`: [`Target::NginxLogged`] writes `access_log FILE` (the
/// `combined` format, unbuffered: nginx's defaults) to `dir/nginx-access.log`.
pub fn start_nginx_as(
    dir: &Scratch,
    cpus: &str,
    cert: &(String, String, String),
    t: Target,
) -> Result<Proc> {
    start_nginx_on(dir, cpus, cert, 18_000, t)
}

/// The upstream connections nginx keeps idle (`keepalive`), counted in its
/// `worker_connections`.
pub const NGINX_UPSTREAM_KEEPALIVE: usize = 64;
/// nginx's listening sockets, each of which takes one of its `worker_connections`.
pub const NGINX_LISTENERS: usize = 3;

/// [`start_nginx`] with `worker_connections` set (clients, upstream connections and the
/// listeners all count against it); every timeout at nginx's default.
pub fn start_nginx_with(
    dir: &Scratch,
    cpus: &str,
    cert: &(String, String, String),
    worker_connections: usize,
) -> Result<Proc> {
    start_nginx_on(dir, cpus, cert, worker_connections, Target::Nginx)
}

fn start_nginx_on(
    dir: &Scratch,
    cpus: &str,
    cert: &(String, String, String),
    worker_connections: usize,
    t: Target,
) -> Result<Proc> {
    let d = dir.path.display();
    let n = t.stem();
    let access_log = match t {
        Target::NginxLogged => format!("access_log {d}/nginx-access.log"),
        _ => "access_log off".to_string(),
    };
    let conf = format!(
        "worker_processes 1;\nworker_rlimit_nofile 19000;\ndaemon off;\npid {d}/{n}.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections {worker_connections}; }}\n\
         http {{\n  {access_log};\n  keepalive_requests 1000000;\n  {temps}\n\
         upstream up {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive {NGINX_UPSTREAM_KEEPALIVE}; }}\n\
         server {{\n\
           listen 127.0.0.1:{plain} proxy_protocol;\n\
           listen 127.0.0.1:{h2c} proxy_protocol http2;\n\
           listen 127.0.0.1:{tls} ssl proxy_protocol;\n\
           ssl_certificate {c};\n  ssl_certificate_key {k};\n\
           set_real_ip_from 127.0.0.1/32;\n  real_ip_header proxy_protocol;\n\
           location / {{\n\
             proxy_pass http://up;\n  proxy_max_temp_file_size 0;\n  proxy_http_version 1.1;\n  proxy_set_header Connection \"\";\n\
             proxy_set_header Host $host;\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             proxy_set_header X-Real-IP $remote_addr;\n\
             proxy_set_header X-Forwarded-Proto $scheme;\n\
           }}\n\
         }}\n}}\n",
        temps = temp_paths(dir, n),
        plain = t.plain_port(),
        h2c = t.h2c_port(),
        tls = t.tls_port(),
        c = cert.0,
        k = cert.1,
    );
    let path = dir.write(&format!("{n}.conf"), &conf)?;
    let mut proc = Proc::start(
        n,
        cpus,
        &["nginx", "-e", "stderr", "-c", &path],
        &[],
        &dir.path,
    )?;
    proc.wait_ready(local(t.plain_port()), &dir.path)?;
    Ok(proc)
}

/// HAProxy in HTTP mode with `accept-proxy` and `option forwardfor`, one thread.
pub fn start_haproxy(dir: &Scratch, cpus: &str, cert: &(String, String, String)) -> Result<Proc> {
    let t = Target::Haproxy;
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 9000\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  \
         timeout http-keep-alive 60s\n  maxconn 9000\n  option forwardfor\n  http-reuse always\n\
         frontend fe\n  bind 127.0.0.1:{plain} accept-proxy\n  bind 127.0.0.1:{tls} accept-proxy ssl crt {pem}\n  \
         default_backend be\n\
         backend be\n  server up 127.0.0.1:{UPSTREAM_PORT}\n",
        plain = t.plain_port(),
        tls = t.tls_port(),
        pem = cert.2,
    );
    let path = dir.write("haproxy.cfg", &conf)?;
    let mut proc = Proc::start(
        "haproxy",
        cpus,
        &["haproxy", "-db", "-f", &path],
        &[],
        &dir.path,
    )?;
    proc.wait_ready(local(t.plain_port()), &dir.path)?;
    Ok(proc)
}

/// nginx's temporary paths inside the scratch directory, so it writes nothing elsewhere.
fn temp_paths(dir: &Scratch, name: &str) -> String {
    let d = dir.path.display();
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|k| format!("{k}_temp_path {d}/{name}-{k};"))
        .collect::<Vec<_>>()
        .join(" ")
}
