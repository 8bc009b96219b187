//! Scenario `bulk`: what the socket filter costs on established connections. In socket
//! mode an accepted socket inherits the listener's filter, and the program then runs on
//! every packet the connection receives; `kernel_filter.detach_accepted` takes it off
//! each accepted socket instead, for one `setsockopt` per connection. One trustgate
//! build is measured both ways in the same run, started fresh per measurement, in
//! alternating order (kept, detached; then detached, kept): `--downloads` connections at
//! once each downloading `--mib` MiB (an nginx sendfile upstream), then as many each
//! uploading `--mib` MiB (`PUT`, to demo-upstream, which counts the body and drops it),
//! then as many clients each opening connections in turn for one small request (where
//! the setsockopt weighs most). Reports the rate and the CPU time per GiB (or per 1,000
//! connections) of the proxy process and of the whole machine: on loopback, the
//! receiving socket's work (its filter included) runs on the sending side's CPU, so
//! the proxy's own time does not hold all of it. Its ports (`Target::TrustgateBulk` and
//! two beside it) are its own, so another scenario running on the same machine is
//! never measured in its place.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::client;
use super::peers::{self, Extra, Limits, Target};
use super::procs::{self, NGINX, Proc, Scratch, TASKSET, USER_HZ};
use super::{Measured, loadavg, median};
use crate::util::{exec, output};

const PROXY_CPU: &str = "1";
/// The upstreams, and this process's client threads (pinned while the scenario runs).
const REST_CPU: &str = "0";
/// The proxy's ports are [`Target::TrustgateBulk`]'s; the upstreams' are next to them,
/// apart from the other scenarios', which another worktree may be running.
const PROXY: Target = Target::TrustgateBulk;
/// Where the nginx file upstream serves the downloads.
const FILE_PORT: u16 = 18161;
/// Where demo-upstream takes the uploads.
const SINK_PORT: u16 = 18163;
const FILE: &str = "big.bin";
const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
const CLIENT_STACK_BYTES: usize = 128 << 10;
const CHUNK_BYTES: usize = 64 << 10;

/// The two ways an accepted socket is left.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// The inherited filter stays (`detach_accepted = false`).
    Kept,
    /// Detached after accept (`detach_accepted = true`).
    Detached,
}

impl Filter {
    fn label(self) -> &'static str {
        match self {
            Filter::Kept => "filter inherited",
            Filter::Detached => "filter detached",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Filter::Kept => "detach_accepted = false\n",
            Filter::Detached => "detach_accepted = true\n",
        }
    }
}

/// What one measurement does, on `--downloads` connections at once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Each downloads `--mib` MiB.
    Download,
    /// Each uploads `--mib` MiB.
    Upload,
    /// Each opens [`CONNECTIONS_PER_CLIENT`] connections in turn, one `GET /` on each:
    /// what detaching costs where connections are short.
    Connections,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::Download, Phase::Upload, Phase::Connections];

    fn label(self) -> &'static str {
        match self {
            Phase::Download => "download",
            Phase::Upload => "upload",
            Phase::Connections => "connection per request",
        }
    }

    /// What the rate and the CPU time are counted in.
    fn units(self) -> (&'static str, &'static str) {
        match self {
            Phase::Download | Phase::Upload => ("MiB/s", "CPU s/GiB"),
            Phase::Connections => ("conn/s", "CPU ms/1k conn"),
        }
    }
}

/// Connections each client opens in [`Phase::Connections`].
const CONNECTIONS_PER_CLIENT: usize = 1500;

/// One phase's readings.
#[derive(Clone, Copy)]
struct Sample {
    /// MiB/s, or connections/s.
    rate: f64,
    /// CPU time of the proxy process (user + system): seconds per GiB moved, or
    /// milliseconds per 1,000 connections.
    proxy_cpu: f64,
    /// Busy CPU time of the whole machine, in the same unit.
    machine_cpu: f64,
}

pub fn run(opts: &super::Options, trustgate: &str, demo_upstream: &str) -> Result<Measured> {
    procs::require(&[NGINX, TASKSET])?;
    let load_before = loadavg();
    let scratch = Scratch::new("bulk")?;
    let cert = peers::certificate(&scratch)?;
    let bytes = opts.mib * (1 << 20);
    let _upstream = peers::start_file_upstream_at(&scratch, REST_CPU, FILE, bytes, FILE_PORT)?;
    let sink_addr = peers::local(SINK_PORT).to_string();
    let mut sink = Proc::start(
        "sink",
        REST_CPU,
        &[demo_upstream, "--listen", &sink_addr],
        &[("RUST_LOG", "warn")],
        &scratch.path,
    )?;
    sink.wait_ready(peers::local(SINK_PORT), &scratch.path)?;
    let routes = format!(
        "[[apps.bench.reverse_proxy]]\npath = \"/upload\"\nupstream = [{{ location = \"{sink_addr}\" }}]\n"
    );
    let mut configs = Vec::new();
    for filter in [Filter::Kept, Filter::Detached] {
        let extra = Extra {
            // Uploads of any `--mib`.
            top: "request_max_body_size = \"unlimited\"\n",
            upstream: Some(FILE_PORT),
            routes: &routes,
            kernel_filter: filter.key(),
        };
        let text = peers::trustgate_config_text(&scratch, &cert, Limits::Raised, PROXY, &extra);
        let name = format!("trustgate-{}.toml", filter.label().replace(' ', "-"));
        configs.push((filter, scratch.write(&name, &text)?));
    }
    let _pinned = Pinned::to(REST_CPU)?;
    // (filter, phase) -> one sample per round.
    let mut samples: Vec<(Filter, Phase, Vec<Sample>)> = Vec::new();
    let mut raw = String::new();
    for round in 0..opts.rounds {
        let mut order = configs.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for (filter, config) in &order {
            let proc = peers::start_trustgate_on(&scratch, PROXY_CPU, trustgate, config, PROXY)?;
            drop(client::get(PROXY.plain_port(), 0, IO_TIMEOUT)?);
            for phase in Phase::ALL {
                let s = measure(&proc, phase, opts, bytes).with_context(|| {
                    format!(
                        "{} with the {}; trustgate's log ends:\n{}",
                        phase.label(),
                        filter.label(),
                        proc.log_tail(&scratch.path)
                    )
                })?;
                let (rate, cpu) = phase.units();
                let line = format!(
                    "round {round} | {} | {} | {:.0} {rate} | proxy {:.3} {cpu} | machine {:.3} {cpu}",
                    filter.label(),
                    phase.label(),
                    s.rate,
                    s.proxy_cpu,
                    s.machine_cpu
                );
                eprintln!("{line}");
                let _ = writeln!(raw, "{line}");
                match samples
                    .iter_mut()
                    .find(|(f, d, _)| f == filter && *d == phase)
                {
                    Some((_, _, v)) => v.push(s),
                    None => samples.push((*filter, phase, vec![s])),
                }
            }
        }
    }
    Ok(Measured {
        load_before,
        text: table(opts, &samples, &raw),
    })
}

fn table(opts: &super::Options, samples: &[(Filter, Phase, Vec<Sample>)], raw: &str) -> String {
    let of = |filter: Filter, phase: Phase| -> &[Sample] {
        samples
            .iter()
            .find(|(f, d, _)| *f == filter && *d == phase)
            .map_or(&[], |(_, _, v)| v.as_slice())
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} rounds; per round trustgate (socket mode, eBPF filter) is started fresh once with \
         the accepted sockets' inherited filter kept and once with it detached \
         (`kernel_filter.detach_accepted`), in alternating order. Each start: {} connections \
         at once each downloading one {} MiB file (nginx upstream, sendfile), then {} at once \
         each uploading {} MiB (`PUT`, demo-upstream counting the body), then {} clients each \
         opening {CONNECTIONS_PER_CLIENT} connections in turn with one `GET /` (`200 ok`) on \
         each; HTTP/1.1 straight to the proxy with a PROXY v1 header. Proxy on CPU {PROXY_CPU}; upstreams and clients on \
         CPU {REST_CPU}. Ratios: detached / kept in the same round, median over rounds (below 1: \
         detaching is cheaper or, for throughput, slower).\n",
        opts.rounds, opts.downloads, opts.mib, opts.downloads, opts.mib, opts.downloads
    );
    let _ = writeln!(
        text,
        "| phase | proxy CPU, detached / kept | machine CPU, detached / kept | rate, detached / kept |"
    );
    let _ = writeln!(text, "| --- | ---: | ---: | ---: |");
    for phase in Phase::ALL {
        let (kept, detached) = (of(Filter::Kept, phase), of(Filter::Detached, phase));
        let ratio = |f: &dyn Fn(&Sample) -> f64| {
            median(
                &detached
                    .iter()
                    .zip(kept)
                    .map(|(d, k)| f(d) / f(k))
                    .collect::<Vec<_>>(),
            )
        };
        let _ = writeln!(
            text,
            "| {} | {:.3} | {:.3} | {:.3} |",
            phase.label(),
            ratio(&|s| s.proxy_cpu),
            ratio(&|s| s.machine_cpu),
            ratio(&|s| s.rate),
        );
    }
    let _ = writeln!(
        text,
        "\n| filter | phase | rate | proxy CPU | machine CPU |\n| --- | --- | ---: | ---: | ---: |"
    );
    for phase in Phase::ALL {
        for filter in [Filter::Kept, Filter::Detached] {
            let v = of(filter, phase);
            let m = |f: &dyn Fn(&Sample) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
            let (rate, cpu) = phase.units();
            let _ = writeln!(
                text,
                "| {} | {} | {:.0} {rate} | {:.3} {cpu} | {:.3} {cpu} |",
                filter.label(),
                phase.label(),
                m(&|s| s.rate),
                m(&|s| s.proxy_cpu),
                m(&|s| s.machine_cpu),
            );
        }
    }
    let _ = write!(
        text,
        "\nMedians over the rounds. Every round:\n\n```\n{raw}```\n"
    );
    text
}

/// `opts.downloads` transfers of `bytes` each in `phase` at once, with the proxy's
/// and the machine's CPU time over them.
fn measure(proc: &Proc, phase: Phase, opts: &super::Options, bytes: u64) -> Result<Sample> {
    let port = PROXY.plain_port();
    let start = Arc::new(Barrier::new(opts.downloads + 1));
    let mut threads = Vec::with_capacity(opts.downloads);
    for i in 0..opts.downloads {
        let start = Arc::clone(&start);
        let t = std::thread::Builder::new()
            .stack_size(CLIENT_STACK_BYTES)
            .spawn(move || {
                start.wait();
                match phase {
                    Phase::Download => download(port, i, bytes),
                    Phase::Upload => upload(port, i, bytes),
                    Phase::Connections => (0..CONNECTIONS_PER_CLIENT)
                        .try_for_each(|_| client::get(port, i, IO_TIMEOUT).map(drop)),
                }
            })
            .context("spawning a client thread")?;
        threads.push(t);
    }
    let proxy_before = procs::cpu_ticks(proc.pid())?;
    let machine_before = machine_busy()?;
    start.wait();
    let began = Instant::now();
    for (i, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(r) => r.with_context(|| format!("transfer {i}"))?,
            Err(_) => bail!("transfer {i}'s thread panicked"),
        }
    }
    let elapsed = began.elapsed().as_secs_f64();
    let proxy = (procs::cpu_ticks(proc.pid())? - proxy_before) as f64 / USER_HZ;
    let machine = (machine_busy()? - machine_before) as f64 / USER_HZ;
    Ok(match phase {
        Phase::Download | Phase::Upload => {
            let total = (bytes * opts.downloads as u64) as f64;
            let gib = total / f64::from(1 << 30);
            Sample {
                rate: total / f64::from(1 << 20) / elapsed,
                proxy_cpu: proxy / gib,
                machine_cpu: machine / gib,
            }
        }
        Phase::Connections => {
            let thousands = (opts.downloads * CONNECTIONS_PER_CLIENT) as f64 / 1000.0;
            Sample {
                rate: thousands * 1000.0 / elapsed,
                proxy_cpu: proxy * 1000.0 / thousands,
                machine_cpu: machine * 1000.0 / thousands,
            }
        }
    })
}

/// Busy ticks of every CPU together.
fn machine_busy() -> Result<u64> {
    Ok(procs::cpu_times()?.iter().map(|t| t.busy).sum())
}

/// One download of `GET /FILE`, its length checked.
fn download(port: u16, i: usize, bytes: u64) -> Result<()> {
    let request = format!("GET /{FILE} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut s = client::connect(port, i, request.as_bytes(), IO_TIMEOUT)?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let (head, mut seen) = read_head(&mut s, &mut buf)?;
    if !head.starts_with(b"HTTP/1.1 200") {
        bail!("unexpected response: {:?}", String::from_utf8_lossy(&head));
    }
    while seen < bytes {
        let got = s.read(&mut buf)?;
        if got == 0 {
            bail!("closed after {seen} of {bytes} body bytes");
        }
        seen += got as u64;
    }
    Ok(())
}

/// One `PUT /upload` of `bytes` zeros; the answer must be 200.
fn upload(port: u16, i: usize, bytes: u64) -> Result<()> {
    let request = format!(
        "PUT /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {bytes}\r\nConnection: close\r\n\r\n"
    );
    let mut s = client::connect(port, i, request.as_bytes(), IO_TIMEOUT)?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut sent = 0u64;
    while sent < bytes {
        let n = usize::try_from(bytes - sent).map_or(CHUNK_BYTES, |left| left.min(CHUNK_BYTES));
        s.write_all(&buf[..n])?;
        sent += n as u64;
    }
    let (head, _) = read_head(&mut s, &mut buf)?;
    if !head.starts_with(b"HTTP/1.1 200") {
        bail!("unexpected response: {:?}", String::from_utf8_lossy(&head));
    }
    Ok(())
}

/// Reads up to the end of a response head; returns the head and how many body bytes
/// came with it.
fn read_head(s: &mut std::net::TcpStream, buf: &mut [u8]) -> Result<(Vec<u8>, u64)> {
    let mut head = Vec::new();
    loop {
        let got = s.read(buf)?;
        if got == 0 {
            bail!("closed before the response head ended");
        }
        head.extend_from_slice(&buf[..got]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = (head.len() - end - 4) as u64;
            head.truncate(end);
            return Ok((head, body));
        }
    }
}

/// This process's threads pinned to some CPUs until dropped, then given back the mask
/// they had: the client threads must not run on the proxy's CPU.
struct Pinned {
    pid: String,
    mask: String,
}

impl Pinned {
    fn to(cpus: &str) -> Result<Pinned> {
        let pid = std::process::id().to_string();
        // "pid 123's current affinity mask: 3"
        let mask = output(std::process::Command::new("taskset").args(["-p", &pid]))
            .and_then(|out| out.rsplit(':').next().map(|m| m.trim().to_string()))
            .context("reading this process's CPU affinity with taskset")?;
        exec(std::process::Command::new("taskset").args(["-a", "-p", "-c", cpus, &pid]))
            .context("pinning this process's threads")?;
        Ok(Pinned { pid, mask })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = std::process::Command::new("taskset")
            .args(["-a", "-p", &self.mask, &self.pid])
            .stdout(std::process::Stdio::null())
            .status();
    }
}
