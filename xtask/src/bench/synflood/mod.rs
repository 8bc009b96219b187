//! Scenario `synflood`: an outsider floods trustgate's port with SYNs over a veth pair
//! while a trusted load balancer in the same namespace (HAProxy, TCP mode,
//! `send-proxy-v2`) carries wrk's keep-alive requests through trustgate to nginx. One
//! case per place the outsider's SYNs can be stopped: nowhere (SYN cookies), an nftables
//! rule (inet input, netdev ingress), trustgate's XDP program (generic, native) and its
//! socket filter; rounds alternate the cases. The flood has CPU 0, everything else CPU 1.
//! Here: the cases, their setup and the measurement loop; `flood` is the outsider, `nft`
//! the nftables rule, `counters` and `profile` what is read, `report` the markdown.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

mod counters;
mod flood;
mod nft;
mod profile;
mod report;

use counters::{DropCount, Snapshot, Window};
use flood::Flood;
use nft::NftTable;
use profile::Profile;

use super::http::{Sample, parse_wrk, run_bounded};
use super::netns::Netns;
use super::peers;
use super::procs::{
    self, GCC, HAPROXY, IP, NFT, NGINX, PERF, Proc, Scratch, TASKSET, TRAFGEN, WRK,
};
use super::{Measured, loadavg};

/// CPU of trustgate, the front, the upstream and wrk. trafgen pins its one worker to
/// CPU 0 by itself; on veth the receiving side of its frames runs there too.
const SERVICE_CPU: &str = "1";
const PROXY_PORT: u16 = 18300;
const FRONT_PORT: u16 = 18301;
const METRICS_PORT: u16 = 18390;
/// Not peers' upstream port, so this can run beside `bench http`.
const UPSTREAM_PORT: u16 = 18391;
/// wrk's keep-alive connections.
const CONNECTIONS: &str = "16";
/// wrk run after each start, before measuring.
const WARMUP_SECS: u64 = 1;
/// How long the flood may take to reach the filter.
const RAMP_LIMIT: Duration = Duration::from_secs(5);
/// Wait after the first drops before measuring.
const SETTLE: Duration = Duration::from_millis(500);
/// A wrk that overruns its duration by this much is killed.
const OVERRUN: Duration = Duration::from_secs(30);
/// A flood dropped slower than this did not run; the measurement is refused.
const MIN_DROPS_PER_S: f64 = 10_000.0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Unfiltered,
    NftInet,
    NftNetdev,
    XdpGeneric,
    XdpNative,
    Socket,
}

impl Case {
    const ALL: [Case; 6] = [
        Case::Unfiltered,
        Case::NftInet,
        Case::NftNetdev,
        Case::XdpGeneric,
        Case::XdpNative,
        Case::Socket,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Unfiltered => "none",
            Case::NftInet => "nft-inet",
            Case::NftNetdev => "nft-netdev",
            Case::XdpGeneric => "xdp-generic",
            Case::XdpNative => "xdp-native",
            Case::Socket => "socket",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Case::Unfiltered => "nowhere: TCP answers with SYN cookies (`mode = \"off\"`)",
            Case::NftInet => "nftables rule, `inet` input hook (`mode = \"off\"`)",
            Case::NftNetdev => "nftables rule, `netdev` ingress on the veth (`mode = \"off\"`)",
            Case::XdpGeneric => "trustgate XDP, generic, on the veth",
            Case::XdpNative => "trustgate XDP, native, on the veth",
            Case::Socket => "trustgate socket filter (eBPF) on the listener",
        }
    }

    /// The kernel function the outsider's SYN ends in (in the profile, with callees).
    fn drop_point(self) -> &'static str {
        match self {
            Case::Unfiltered | Case::Socket => "tcp_v4_rcv",
            Case::NftInet | Case::NftNetdev => "nf_hook_slow",
            Case::XdpGeneric => "do_xdp_generic",
            Case::XdpNative => "veth_xdp_rcv_skb",
        }
    }

    /// trustgate's `kernel_filter` table for this case.
    fn kernel_filter(self, net: &Netns) -> String {
        let xdp = |mode: &str| {
            format!(
                "mode = \"xdp\"\ninterfaces = [\"{}\"]\nxdp_mode = \"{mode}\"\nrequired = true\n",
                net.host_if
            )
        };
        match self {
            Case::Unfiltered | Case::NftInet | Case::NftNetdev => "mode = \"off\"\n".into(),
            Case::XdpGeneric => xdp("generic"),
            Case::XdpNative => xdp("native"),
            Case::Socket => "mode = \"socket\"\nrequired = true\n".into(),
        }
    }

    /// The metrics line trustgate shows (with value 1) when its filter is where asked.
    fn attached(self, net: &Netns) -> Option<String> {
        let xdp = |mode: &str| {
            format!(
                "trustgate_kernel_filter_attached{{program=\"xdp\",interface=\"{}\",mode=\"{mode}\"}}",
                net.host_if
            )
        };
        match self {
            Case::Unfiltered | Case::NftInet | Case::NftNetdev => None,
            Case::XdpGeneric => Some(xdp("generic")),
            Case::XdpNative => Some(xdp("native")),
            Case::Socket => Some(format!(
                "trustgate_kernel_filter_attached{{program=\"socket\",listener=\"{}:{PROXY_PORT}\",mode=\"ebpf\"}}",
                net.host
            )),
        }
    }
}

/// One case set up: trustgate with the case's filter, and the nft table if any.
struct Setup {
    trustgate: Proc,
    _nft: Option<NftTable>,
    drops: DropCount,
}

fn metrics_addr() -> SocketAddr {
    peers::local(METRICS_PORT)
}

fn set_up(case: Case, net: &Netns, dir: &Scratch, binary: &str) -> Result<Setup> {
    let nft = NftTable::create(case, net, dir)?;
    let conf = format!(
        "listen_port = {PROXY_PORT}\nlisten_address_v4 = \"{host}\"\ndefault_app = \"bench\"\n\
         [apps.bench]\nserver_name = \"localhost\"\n\
         [[apps.bench.reverse_proxy]]\npath = \"/\"\nupstream = [{{ location = \"127.0.0.1:{UPSTREAM_PORT}\" }}]\n\
         [experimental.tcp_recv_proxy_protocol]\ntrusted_proxies = [\"{trusted}/32\"]\ntimeout = 1000\n\
         [experimental.tcp_recv_proxy_protocol.kernel_filter]\n{filter}\
         [metrics]\nlisten = \"{metrics}\"\n",
        host = net.host,
        trusted = net.trusted,
        filter = case.kernel_filter(net),
        metrics = metrics_addr(),
    );
    let name = format!("trustgate-{}", case.name());
    let path = dir.write(&format!("{name}.toml"), &conf)?;
    let mut trustgate = Proc::start(
        &name,
        SERVICE_CPU,
        &[binary, "-c", &path, "--grace-period", "1"],
        &[("RUST_LOG", "warn")],
        &dir.path,
    )?;
    // The metrics listener starts after the proxy's listener and its filter.
    trustgate.wait_ready(metrics_addr(), &dir.path)?;
    if let Some(key) = case.attached(net) {
        let text = counters::scrape(metrics_addr())?;
        if counters::metric(&text, &key).ok() != Some(1) {
            bail!(
                "{}: trustgate's filter is not where asked; wanted `{key} 1` in:\n{text}",
                case.name()
            );
        }
    }
    let drops = match (case, &nft) {
        (Case::Unfiltered, _) => DropCount::Cookies,
        (Case::XdpGeneric | Case::XdpNative, _) => DropCount::Kernel("xdp", metrics_addr()),
        (Case::Socket, _) => DropCount::Kernel("socket", metrics_addr()),
        (_, Some(t)) => DropCount::Nft(t.family, t.name.clone()),
        (_, None) => bail!("{}: no nft table", case.name()),
    };
    Ok(Setup {
        trustgate,
        _nft: nft,
        drops,
    })
}

/// The trusted front: HAProxy in the namespace on the trusted address, TCP mode,
/// `send-proxy-v2` to trustgate on the host end of the pair.
fn start_front(net: &Netns, dir: &Scratch) -> Result<Proc> {
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 1000\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         listen front\n  bind {t}:{FRONT_PORT}\n  server trustgate {h}:{PROXY_PORT} source {t} send-proxy-v2\n",
        t = net.trusted,
        h = net.host,
    );
    let path = dir.write("front.cfg", &conf)?;
    let argv = net.exec(&["haproxy", "-db", "-f", &path]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut proc = Proc::start("front", SERVICE_CPU, &argv, &[], &dir.path)?;
    proc.wait_ready(SocketAddr::from((net.trusted, FRONT_PORT)), &dir.path)?;
    Ok(proc)
}

/// wrk in the namespace through the front for `seconds`.
fn trusted_load(net: &Netns, seconds: u64) -> Result<Sample> {
    let url = format!("http://{}:{FRONT_PORT}/", net.trusted);
    let secs = format!("{seconds}s");
    let argv: Vec<String> = ["taskset", "-c", SERVICE_CPU]
        .iter()
        .map(|s| s.to_string())
        .chain(net.exec(&[
            "wrk",
            "-t1",
            "-c",
            CONNECTIONS,
            "-d",
            &secs,
            "--latency",
            &url,
        ]))
        .collect();
    parse_wrk(&run_bounded(&argv, Duration::from_secs(seconds) + OVERRUN)?)
}

/// Starts the flood and returns once the case's drop counter moves.
fn start_flood(
    net: &Netns,
    setup: &Setup,
    packet: &str,
    shim: &str,
    dir: &Scratch,
) -> Result<Flood> {
    let before = setup.drops.read()?;
    let mut flood = Flood::start(net, packet, shim, &dir.path)?;
    let deadline = Instant::now() + RAMP_LIMIT;
    while setup.drops.read()? == before {
        flood.check()?;
        if Instant::now() > deadline {
            bail!("no SYN was dropped within {RAMP_LIMIT:?} of starting the flood");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(SETTLE);
    flood.check()?;
    Ok(flood)
}

/// One case in one round.
struct Round {
    /// The trusted client without a flood.
    quiet: Sample,
    quiet_win: Window,
    /// The flood alone: what stopping it costs.
    alone: Window,
    /// The trusted client during the flood.
    flooded: Sample,
    flooded_win: Window,
}

impl Round {
    fn rps_ratio(&self) -> f64 {
        self.flooded.rps / self.quiet.rps
    }
    fn p99_ratio(&self) -> f64 {
        self.flooded.p99_ms / self.quiet.p99_ms
    }
    /// Softirq ns per dropped SYN, flood alone.
    fn ns_per_syn(&self) -> f64 {
        self.alone.softirq_total() * 1e9 / self.alone.dropped_per_s
    }
    /// Dropped SYNs per softirq CPU-second, flood alone.
    fn syns_per_cpu_s(&self) -> f64 {
        self.alone.dropped_per_s / self.alone.softirq_total()
    }
}

struct Env<'a> {
    net: &'a Netns,
    dir: &'a Scratch,
    binary: &'a str,
    shim: &'a str,
    packet: &'a str,
}

/// Measures one case: the trusted client without the flood, then (or, when
/// `quiet_last`, after) the flood alone followed by the trusted client under it.
fn measure(env: &Env, case: Case, seconds: u64, quiet_last: bool) -> Result<Round> {
    let setup = set_up(case, env.net, env.dir, env.binary)?;
    let pid = setup.trustgate.pid();
    let snap = || Snapshot::take(env.net, pid, &setup.drops);
    let warm = trusted_load(env.net, WARMUP_SECS)?;
    if warm.errors > 0 {
        bail!(
            "the trusted client got {} errors while warming up",
            warm.errors
        );
    }
    let quiet_window = || -> Result<(Sample, Window)> {
        let a = snap()?;
        let sample = trusted_load(env.net, seconds)?;
        Ok((sample, Window::between(&a, &snap()?)))
    };
    let quiet_first = if quiet_last {
        None
    } else {
        Some(quiet_window()?)
    };
    let mut flood = start_flood(env.net, &setup, env.packet, env.shim, env.dir)?;
    let a = snap()?;
    std::thread::sleep(Duration::from_secs(seconds));
    let b = snap()?;
    flood.check()?;
    let flooded = trusted_load(env.net, seconds)?;
    let c = snap()?;
    flood.check()?;
    drop(flood);
    let (quiet, quiet_win) = match quiet_first {
        Some(q) => q,
        None => quiet_window()?,
    };
    let alone = Window::between(&a, &b);
    if alone.dropped_per_s < MIN_DROPS_PER_S {
        bail!(
            "only {:.0} SYNs dropped per second: the flood did not run",
            alone.dropped_per_s
        );
    }
    Ok(Round {
        quiet,
        quiet_win,
        alone,
        flooded,
        flooded_win: Window::between(&b, &c),
    })
}

/// The flood alone under `perf record -a -g`: the profile, the window's rates, and the
/// SYNs dropped while perf sampled.
fn profile_case(env: &Env, case: Case, seconds: u64) -> Result<(Profile, Window, f64)> {
    let setup = set_up(case, env.net, env.dir, env.binary)?;
    let pid = setup.trustgate.pid();
    let mut flood = start_flood(env.net, &setup, env.packet, env.shim, env.dir)?;
    let a = Snapshot::take(env.net, pid, &setup.drops)?;
    let window = Duration::from_secs(seconds);
    let profile = profile::record(env.dir, case.name(), window)?;
    let b = Snapshot::take(env.net, pid, &setup.drops)?;
    flood.check()?;
    let win = Window::between(&a, &b);
    let syns = win.dropped_per_s * window.as_secs_f64();
    Ok((profile, win, syns))
}

fn require_root() -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1));
    if euid != Some("0") {
        bail!("the synflood scenario needs root (namespaces, veth, nftables, XDP, perf)");
    }
    Ok(())
}

pub fn run(opts: &super::Options, trustgate: &str) -> Result<Measured> {
    require_root()?;
    procs::require(&[WRK, HAPROXY, NGINX, TASKSET, TRAFGEN, NFT, IP, GCC, PERF])?;
    nft::remove_stale();
    let load_before = loadavg();
    let scratch = Scratch::new("synflood")?;
    let net = Netns::new("sf")?;
    let shim = flood::build_shim(&scratch)?;
    let packet = scratch.write(
        "syn.cfg",
        &flood::packet(&net.host_mac()?, net.outsider, net.host, PROXY_PORT),
    )?;
    let _upstream = peers::start_upstream_at(&scratch, SERVICE_CPU, UPSTREAM_PORT)?;
    let _front = start_front(&net, &scratch)?;
    let env = Env {
        net: &net,
        dir: &scratch,
        binary: trustgate,
        shim: &shim,
        packet: &packet,
    };
    let mut rounds: Vec<Vec<Round>> = Case::ALL.iter().map(|_| Vec::new()).collect();
    let mut raw = String::new();
    for round in 0..opts.rounds {
        for (i, &case) in Case::ALL.iter().enumerate() {
            let r = measure(&env, case, opts.seconds, round % 2 == 1)
                .with_context(|| format!("round {round}, case {}", case.name()))?;
            let line = report::raw_line(round, case, &r);
            eprintln!("{line}");
            let _ = writeln!(raw, "{line}");
            rounds[i].push(r);
        }
    }
    let mut profiles = Vec::new();
    for case in Case::ALL {
        profiles.push(
            profile_case(&env, case, opts.seconds)
                .with_context(|| format!("profiling case {}", case.name()))?,
        );
    }
    let text = report::report(opts, &rounds, &profiles, &raw);
    Ok(Measured { load_before, text })
}
