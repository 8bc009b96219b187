//! Scenario `bulk`: what the socket filter costs on established connections. In socket
//! mode an accepted socket inherits the listener's filter, and the program then runs on
//! every packet the connection receives; `kernel_filter.detach_accepted` takes it off
//! each accepted socket instead. One trustgate build is measured both ways in the same
//! run, started fresh per measurement, in alternating order (kept, detached; then
//! detached, kept): `--downloads` connections at once each downloading `--mib` MiB (the
//! nginx sendfile upstream), then as many each uploading `--mib` MiB (`PUT`, to
//! demo-upstream, which counts the body and drops it). Reports throughput and CPU time
//! per GiB moved, of the proxy process and of the whole machine: on loopback, the
//! receiving socket's work (its filter included) runs on the sending side's CPU, so
//! the proxy's own time does not hold all of it.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::client;
use super::peers::{self, Extra, Limits, Target};
use super::procs::{self, NGINX, OPENSSL, Proc, Scratch, TASKSET, USER_HZ};
use super::{Measured, loadavg, median};
use crate::util::{exec, output};

const PROXY_CPU: &str = "1";
/// The upstreams, and this process's client threads (pinned while the scenario runs).
const REST_CPU: &str = "0";
/// Where demo-upstream takes the uploads.
const SINK_PORT: u16 = 18082;
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Download,
    Upload,
}

impl Direction {
    const BOTH: [Direction; 2] = [Direction::Download, Direction::Upload];

    fn label(self) -> &'static str {
        match self {
            Direction::Download => "download",
            Direction::Upload => "upload",
        }
    }
}

/// One phase's readings.
#[derive(Clone, Copy)]
struct Sample {
    mib_per_s: f64,
    /// CPU seconds of the proxy process (user + system) per GiB moved.
    proxy_s_per_gib: f64,
    /// Busy CPU seconds of the whole machine per GiB moved.
    machine_s_per_gib: f64,
}

pub fn run(opts: &super::Options, trustgate: &str, demo_upstream: &str) -> Result<Measured> {
    procs::require(&[NGINX, OPENSSL, TASKSET])?;
    let load_before = loadavg();
    let scratch = Scratch::new("bulk")?;
    let cert = peers::certificate(&scratch)?;
    let bytes = opts.mib * (1 << 20);
    let _upstream = peers::start_file_upstream(&scratch, REST_CPU, FILE, bytes)?;
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
            routes: &routes,
            kernel_filter: filter.key(),
        };
        let text = peers::trustgate_config_text(
            &scratch,
            &cert,
            Limits::Raised,
            Target::Trustgate,
            &extra,
        );
        let name = format!("trustgate-{}.toml", filter.label().replace(' ', "-"));
        configs.push((filter, scratch.write(&name, &text)?));
    }
    let _pinned = Pinned::to(REST_CPU)?;
    // (filter, direction) -> one sample per round.
    let mut samples: Vec<(Filter, Direction, Vec<Sample>)> = Vec::new();
    let mut raw = String::new();
    for round in 0..opts.rounds {
        let mut order = configs.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for (filter, config) in &order {
            let proc = peers::start_trustgate_with(&scratch, PROXY_CPU, trustgate, config)?;
            drop(client::get(Target::Trustgate.plain_port(), 0, IO_TIMEOUT)?);
            for direction in Direction::BOTH {
                let s = measure(&proc, direction, opts, bytes).with_context(|| {
                    format!(
                        "{} with the {}; trustgate's log ends:\n{}",
                        direction.label(),
                        filter.label(),
                        proc.log_tail(&scratch.path)
                    )
                })?;
                let line = format!(
                    "round {round} | {} | {} | {:.0} MiB/s | proxy {:.3} CPU s/GiB | machine {:.3} CPU s/GiB",
                    filter.label(),
                    direction.label(),
                    s.mib_per_s,
                    s.proxy_s_per_gib,
                    s.machine_s_per_gib
                );
                eprintln!("{line}");
                let _ = writeln!(raw, "{line}");
                match samples
                    .iter_mut()
                    .find(|(f, d, _)| f == filter && *d == direction)
                {
                    Some((_, _, v)) => v.push(s),
                    None => samples.push((*filter, direction, vec![s])),
                }
            }
        }
    }
    Ok(Measured {
        load_before,
        text: table(opts, &samples, &raw),
    })
}

fn table(opts: &super::Options, samples: &[(Filter, Direction, Vec<Sample>)], raw: &str) -> String {
    let of = |filter: Filter, direction: Direction| -> &[Sample] {
        samples
            .iter()
            .find(|(f, d, _)| *f == filter && *d == direction)
            .map_or(&[], |(_, _, v)| v.as_slice())
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} rounds; per round trustgate (socket mode, eBPF filter) is started fresh once with \
         the accepted sockets' inherited filter kept and once with it detached \
         (`kernel_filter.detach_accepted`), in alternating order. Each start: {} connections \
         at once each downloading one {} MiB file (nginx upstream, sendfile), then {} at once \
         each uploading {} MiB (`PUT`, demo-upstream counting the body), HTTP/1.1 straight to \
         the proxy with a PROXY v1 header. Proxy on CPU {PROXY_CPU}; upstreams and clients on \
         CPU {REST_CPU}. Ratios: detached / kept in the same round, median over rounds (below 1: \
         detaching is cheaper or, for throughput, slower).\n",
        opts.rounds, opts.downloads, opts.mib, opts.downloads, opts.mib
    );
    let _ = writeln!(
        text,
        "| transfer | proxy CPU per GiB, detached / kept | machine CPU per GiB, detached / kept | throughput, detached / kept |"
    );
    let _ = writeln!(text, "| --- | ---: | ---: | ---: |");
    for direction in Direction::BOTH {
        let (kept, detached) = (of(Filter::Kept, direction), of(Filter::Detached, direction));
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
            direction.label(),
            ratio(&|s| s.proxy_s_per_gib),
            ratio(&|s| s.machine_s_per_gib),
            ratio(&|s| s.mib_per_s),
        );
    }
    let _ = writeln!(
        text,
        "\n| filter | transfer | MiB/s | proxy CPU s/GiB | machine CPU s/GiB |\n| --- | --- | ---: | ---: | ---: |"
    );
    for direction in Direction::BOTH {
        for filter in [Filter::Kept, Filter::Detached] {
            let v = of(filter, direction);
            let m = |f: &dyn Fn(&Sample) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
            let _ = writeln!(
                text,
                "| {} | {} | {:.0} | {:.3} | {:.3} |",
                filter.label(),
                direction.label(),
                m(&|s| s.mib_per_s),
                m(&|s| s.proxy_s_per_gib),
                m(&|s| s.machine_s_per_gib),
            );
        }
    }
    let _ = write!(
        text,
        "\nMedians over the rounds. Every round:\n\n```\n{raw}```\n"
    );
    text
}

/// `opts.downloads` transfers of `bytes` each in `direction` at once, with the proxy's
/// and the machine's CPU time over them.
fn measure(proc: &Proc, direction: Direction, opts: &super::Options, bytes: u64) -> Result<Sample> {
    let port = Target::Trustgate.plain_port();
    let start = Arc::new(Barrier::new(opts.downloads + 1));
    let mut threads = Vec::with_capacity(opts.downloads);
    for i in 0..opts.downloads {
        let start = Arc::clone(&start);
        let t = std::thread::Builder::new()
            .stack_size(CLIENT_STACK_BYTES)
            .spawn(move || {
                start.wait();
                match direction {
                    Direction::Download => download(port, i, bytes),
                    Direction::Upload => upload(port, i, bytes),
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
    let total = (bytes * opts.downloads as u64) as f64;
    let gib = total / f64::from(1 << 30);
    Ok(Sample {
        mib_per_s: total / f64::from(1 << 20) / elapsed,
        proxy_s_per_gib: proxy / gib,
        machine_s_per_gib: machine / gib,
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
