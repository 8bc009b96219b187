//! Scenario `download`: N clients each downloading one M MiB file at once, through
//! trustgate and nginx (and any `--compare` binaries, other trustgate builds), the same
//! nginx file upstream behind each. Reports aggregate throughput, the RSS peak (VmHWM)
//! and RSS 1 s and `--after` seconds after the last download ended. Each proxy is started
//! fresh per round; rounds alternate the proxies. Clients connect straight to the proxy
//! with a PROXY v1 header, as in `memory`: HAProxy in front would copy every byte a third
//! time on the CPU the clients and the upstream already share (the upstream is pinned,
//! the client threads are not).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::client;
use super::peers::{self, Target};
use super::procs::{self, NGINX, Proc, Scratch, TASKSET};
use super::{Measured, loadavg, median};

const PROXY_CPU: &str = "1";
const REST_CPU: &str = "0";
/// Settling time before the pre-load reading.
const SETTLE: Duration = Duration::from_secs(2);
/// Per-connection I/O bound.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// The downloaded file's path on the upstream.
const FILE: &str = "big.bin";
/// Client threads need little stack: one read buffer each, on the heap.
const CLIENT_STACK_BYTES: usize = 128 << 10;
const READ_BYTES: usize = 64 << 10;

/// One proxy build under test: its name and how it is started.
#[derive(Clone)]
enum Subject {
    Trustgate { label: String, binary: String },
    Nginx,
}

impl Subject {
    fn label(&self) -> &str {
        match self {
            Subject::Trustgate { label, .. } => label,
            Subject::Nginx => "nginx",
        }
    }
}

/// One round's readings for one proxy.
struct Sample {
    before_kib: u64,
    peak_kib: u64,
    right_after_kib: u64,
    after_kib: u64,
    mib_per_s: f64,
}

pub fn run(opts: &super::Options, trustgate: &str) -> Result<Measured> {
    procs::require(&[NGINX, TASKSET])?;
    let load_before = loadavg();
    let scratch = Scratch::new("download")?;
    let cert = peers::certificate(&scratch)?;
    let bytes = opts.mib * (1 << 20);
    let _upstream = peers::start_file_upstream(&scratch, REST_CPU, FILE, bytes)?;
    let mut subjects = vec![Subject::Trustgate {
        label: "trustgate".into(),
        binary: trustgate.into(),
    }];
    for (i, binary) in opts.compare.iter().enumerate() {
        subjects.push(Subject::Trustgate {
            label: format!("trustgate ({})", compare_label(binary, i)),
            binary: binary.clone(),
        });
    }
    subjects.push(Subject::Nginx);
    let mut rows: Vec<(Subject, Vec<Sample>)> =
        subjects.into_iter().map(|s| (s, Vec::new())).collect();
    let mut raw = String::new();
    for round in 0..opts.rounds {
        for (subject, samples) in rows.iter_mut() {
            let (proc, port) = match subject {
                Subject::Trustgate { binary, .. } => (
                    peers::start_trustgate(&scratch, PROXY_CPU, binary, &cert)?,
                    Target::Trustgate.plain_port(),
                ),
                Subject::Nginx => (
                    peers::start_nginx(&scratch, PROXY_CPU, &cert)?,
                    Target::Nginx.plain_port(),
                ),
            };
            let s = measure(&proc, port, opts, bytes).with_context(|| {
                format!(
                    "measuring {}; its log ends:\n{}",
                    subject.label(),
                    proc.log_tail(&scratch.path)
                )
            })?;
            let line = format!(
                "round {round} | {} | {:.0} MiB/s | before {} KiB | peak {} KiB | 1 s after {} KiB | {} s after {} KiB",
                subject.label(),
                s.mib_per_s,
                s.before_kib,
                s.peak_kib,
                s.right_after_kib,
                opts.after,
                s.after_kib
            );
            eprintln!("{line}");
            let _ = writeln!(raw, "{line}");
            samples.push(s);
        }
    }
    let nginx_rate = rows
        .iter()
        .find(|(s, _)| matches!(s, Subject::Nginx))
        .map(|(_, v)| v.iter().map(|s| s.mib_per_s).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} rounds, each proxy started fresh per round; {} HTTP/1.1 clients at once, each \
         downloading one {} MiB file (`GET /{FILE}`, the nginx upstream serving it from the \
         page cache) over its own connection opened straight to the proxy with a PROXY v1 \
         header. RSS: VmRSS (peak: VmHWM) summed over the proxy's processes. Proxy pinned to \
         CPU {PROXY_CPU}; upstream on CPU {REST_CPU}, the client threads unpinned. Throughput ratio against \
         nginx in the same round, median over rounds.\n",
        opts.rounds, opts.downloads, opts.mib
    );
    let _ = writeln!(
        text,
        "| proxy | aggregate MiB/s | vs nginx | RSS before MiB | RSS peak MiB | peak growth per stream KiB | RSS 1 s after MiB | RSS {} s after MiB |",
        opts.after
    );
    let _ = writeln!(
        text,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (subject, samples) in &rows {
        let m = |f: &dyn Fn(&Sample) -> f64| median(&samples.iter().map(f).collect::<Vec<_>>());
        let ratio = median(
            &samples
                .iter()
                .zip(&nginx_rate)
                .map(|(s, n)| s.mib_per_s / n)
                .collect::<Vec<_>>(),
        );
        let _ = writeln!(
            text,
            "| {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} |",
            subject.label(),
            m(&|s| s.mib_per_s),
            ratio,
            m(&|s| s.before_kib as f64) / 1024.0,
            m(&|s| s.peak_kib as f64) / 1024.0,
            m(&|s| (s.peak_kib as f64 - s.before_kib as f64) / opts.downloads as f64),
            m(&|s| s.right_after_kib as f64) / 1024.0,
            m(&|s| s.after_kib as f64) / 1024.0,
        );
    }
    let _ = write!(
        text,
        "\nMedians over the rounds. Every round:\n\n```\n{raw}```\n"
    );
    Ok(Measured { load_before, text })
}

/// A short name for a `--compare` binary: its file name.
fn compare_label(binary: &str, i: usize) -> String {
    std::path::Path::new(binary).file_name().map_or_else(
        || format!("compare {i}"),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// RSS before, then `opts.downloads` concurrent downloads of `bytes` each, then RSS after.
fn measure(proc: &Proc, port: u16, opts: &super::Options, bytes: u64) -> Result<Sample> {
    drop(client::get(port, 0, IO_TIMEOUT)?);
    std::thread::sleep(SETTLE);
    let before_kib = rss(proc, "VmRSS:")?;
    let start = Arc::new(Barrier::new(opts.downloads + 1));
    let mut threads = Vec::with_capacity(opts.downloads);
    for i in 0..opts.downloads {
        let start = Arc::clone(&start);
        let t = std::thread::Builder::new()
            .stack_size(CLIENT_STACK_BYTES)
            .spawn(move || download(port, i, bytes, &start))
            .context("spawning a client thread")?;
        threads.push(t);
    }
    start.wait();
    let began = Instant::now();
    for (i, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(r) => r.with_context(|| format!("download {i}"))?,
            Err(_) => bail!("download {i}'s thread panicked"),
        }
    }
    let elapsed = began.elapsed().as_secs_f64();
    let peak_kib = rss(proc, "VmHWM:")?;
    std::thread::sleep(Duration::from_secs(1));
    let right_after_kib = rss(proc, "VmRSS:")?;
    std::thread::sleep(Duration::from_secs(opts.after.saturating_sub(1)));
    let after_kib = rss(proc, "VmRSS:")?;
    let total_mib = (bytes * opts.downloads as u64) as f64 / f64::from(1 << 20);
    Ok(Sample {
        before_kib,
        peak_kib,
        right_after_kib,
        after_kib,
        mib_per_s: total_mib / elapsed,
    })
}

/// One client: connects once `start` opens, downloads the file, checks its length.
fn download(port: u16, i: usize, bytes: u64, start: &Barrier) -> Result<()> {
    start.wait();
    let request = format!("GET /{FILE} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut s = client::connect(port, i, request.as_bytes(), IO_TIMEOUT)?;
    s.flush()?;
    let mut buf = vec![0u8; READ_BYTES];
    let mut head = Vec::new();
    let body_start = loop {
        let got = s.read(&mut buf)?;
        if got == 0 {
            bail!("closed before the response head ended");
        }
        head.extend_from_slice(&buf[..got]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    if !head.starts_with(b"HTTP/1.1 200") {
        bail!(
            "unexpected response: {:?}",
            String::from_utf8_lossy(&head[..body_start])
        );
    }
    let mut seen = (head.len() - body_start) as u64;
    while seen < bytes {
        let got = s.read(&mut buf)?;
        if got == 0 {
            bail!("closed after {seen} of {bytes} body bytes");
        }
        seen += got as u64;
    }
    Ok(())
}

/// `field` (`VmRSS:` or `VmHWM:`) of the process and its children, in KiB.
fn rss(proc: &Proc, field: &str) -> Result<u64> {
    let mut total = procs::status_kib(proc.pid(), field)?;
    for child in procs::children(proc.pid()) {
        total += procs::status_kib(child, field)?;
    }
    Ok(total)
}
