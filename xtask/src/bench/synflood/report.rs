//! The markdown of the `synflood` scenario: the cases side by side (medians over the
//! rounds), the trusted client, the goals checked against the figures, the profile of
//! each case, and every round's raw figures.

use std::fmt::Write as _;

use super::counters::Window;
use super::profile::Profile;
use super::{CONNECTIONS, Case, Round, SERVICE_CPU};
use crate::bench::median;

/// One case in one round, every figure measured.
pub fn raw_line(round: usize, case: Case, r: &Round) -> String {
    let cpus = |w: &Window| {
        w.softirq
            .iter()
            .enumerate()
            .map(|(i, v)| format!("cpu{i} {v:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "round {round} | {} | flood alone: sent {:.0}/s dropped {:.0}/s lost {:.0}/s, softirq {}, \
         trustgate {:.3} CPUs | trusted without flood: {:.0} req/s p99 {:.2} ms errors {}, softirq {}, \
         trustgate {:.3} CPUs | with flood: {:.0} req/s p99 {:.2} ms errors {}, dropped {:.0}/s \
         lost {:.0}/s, softirq {}, trustgate {:.3} CPUs",
        case.name(),
        r.alone.sent_per_s,
        r.alone.dropped_per_s,
        r.alone.lost_per_s,
        cpus(&r.alone),
        r.alone.proxy,
        r.quiet.rps,
        r.quiet.p99_ms,
        r.quiet.errors,
        cpus(&r.quiet_win),
        r.quiet_win.proxy,
        r.flooded.rps,
        r.flooded.p99_ms,
        r.flooded.errors,
        r.flooded_win.dropped_per_s,
        r.flooded_win.lost_per_s,
        cpus(&r.flooded_win),
        r.flooded_win.proxy,
    )
}

/// `median (min–max)` of `values`, formatted with `digits` decimals.
fn spread(values: &[f64], digits: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.digits$} ({:.digits$}–{:.digits$})",
        median(values),
        min,
        max
    )
}

pub fn report(
    opts: &crate::bench::Options,
    rounds: &[Vec<Round>],
    profiles: &[(Profile, Window, f64)],
    raw: &str,
) -> String {
    let col = |rs: &[Round], f: &dyn Fn(&Round) -> f64| -> Vec<f64> { rs.iter().map(f).collect() };
    let of = |c: Case| &rounds[Case::ALL.iter().position(|&x| x == c).unwrap_or(0)];
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} rounds, the cases in this order in each round. Per case and round: trustgate started \
         with the case's filter, a 1 s warm-up, then three {} s windows: the trusted client \
         alone, the flood alone, the trusted client under the flood (in rounds 1, 3, ... \
         the trusted client alone comes last). Flood: trafgen, one worker on CPU 0, IPv4 SYNs from \
         an untrusted address to trustgate's port, source port, sequence and IP id random per \
         packet; the address is not assigned in the namespace, which drops the SYN-ACKs sent \
         to it (case `none`) without a RST, as for a spoofed source. Trusted client: wrk -t1 -c{CONNECTIONS} keep-alive through HAProxy (TCP, \
         `send-proxy-v2`) in the same namespace; trustgate, HAProxy, the nginx upstream and wrk \
         on CPU {SERVICE_CPU}. Softirq time from /proc/stat deltas, all CPUs; trustgate's CPU from \
         /proc/PID/stat. `none` counts the SYN cookies TCP sent, as it drops nothing.\n",
        opts.rounds, opts.seconds
    );
    let _ = writeln!(
        t,
        "| where the outsider's SYNs are dropped | SYNs offered/s (lost before the filter) | \
         SYNs dropped/s | softirq, CPUs | softirq ns per dropped SYN | dropped SYNs per softirq \
         CPU-second | trustgate CPU, ms/s | trusted req/s, with ÷ without flood | trusted p99, \
         with ÷ without flood |"
    );
    let _ = writeln!(
        t,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (case, rs) in Case::ALL.iter().zip(rounds) {
        let _ = writeln!(
            t,
            "| `{}`: {} | {:.0} ({:.0}) | {:.0} | {:.2} | {} | {:.0} | {:.1} | {} | {} |",
            case.name(),
            case.describe(),
            median(&col(rs, &|r| r.alone.sent_per_s)),
            median(&col(rs, &|r| r.alone.lost_per_s)),
            median(&col(rs, &|r| r.alone.dropped_per_s)),
            median(&col(rs, &|r| r.alone.softirq_total())),
            spread(&col(rs, &Round::ns_per_syn), 0),
            median(&col(rs, &Round::syns_per_cpu_s)),
            median(&col(rs, &|r| r.alone.proxy * 1000.0)),
            spread(&col(rs, &Round::rps_ratio), 2),
            spread(&col(rs, &Round::p99_ratio), 2),
        );
    }
    let _ = writeln!(
        t,
        "\nMedians over the rounds, (min–max) where given; ratios are taken per round. All but \
         the last two columns are the flood alone. The trusted client itself, with the softirq \
         time on its CPU and the frames lost on the way (backlog or veth queue full):\n"
    );
    let _ = writeln!(
        t,
        "| case | req/s without flood | req/s with flood | p99 ms without | p99 ms with | \
         errors with flood | CPU {SERVICE_CPU} softirq without / with flood | lost/s with flood |"
    );
    let _ = writeln!(
        t,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let cpu: usize = SERVICE_CPU.parse().unwrap_or(1);
    let on_cpu = |w: &Window| w.softirq.get(cpu).copied().unwrap_or(0.0);
    for (case, rs) in Case::ALL.iter().zip(rounds) {
        let _ = writeln!(
            t,
            "| `{}` | {:.0} | {:.0} | {:.2} | {:.2} | {} | {:.2} / {:.2} | {:.0} |",
            case.name(),
            median(&col(rs, &|r| r.quiet.rps)),
            median(&col(rs, &|r| r.flooded.rps)),
            median(&col(rs, &|r| r.quiet.p99_ms)),
            median(&col(rs, &|r| r.flooded.p99_ms)),
            rs.iter().map(|r| r.flooded.errors).sum::<u64>(),
            median(&col(rs, &|r| on_cpu(&r.quiet_win))),
            median(&col(rs, &|r| on_cpu(&r.flooded_win))),
            median(&col(rs, &|r| r.flooded_win.lost_per_s)),
        );
    }
    let _ = writeln!(t, "\nGoals:\n");
    for case in [Case::XdpGeneric, Case::XdpNative] {
        let ratio = median(&col(of(case), &Round::rps_ratio));
        let _ = writeln!(
            t,
            "- `{}` keeps at least 90% of the trusted client's req/s under the flood: {:.2}, {}",
            case.name(),
            ratio,
            if ratio >= 0.9 { "met" } else { "**not met**" }
        );
    }
    for xdp in [Case::XdpGeneric, Case::XdpNative] {
        for nft in [Case::NftInet, Case::NftNetdev] {
            let ratio = median(&col(of(xdp), &Round::syns_per_cpu_s))
                / median(&col(of(nft), &Round::syns_per_cpu_s));
            let _ = writeln!(
                t,
                "- `{}` drops at least twice as many SYNs per softirq CPU-second as `{}`: {:.2}×, {}",
                xdp.name(),
                nft.name(),
                ratio,
                if ratio >= 2.0 { "met" } else { "**not met**" }
            );
        }
    }
    let _ = writeln!(
        t,
        "\nProfile of the flood alone, after the rounds, one {} s window per case: `perf record -a \
         -g -e cpu-clock -F 999`, per symbol with its callees (incl.) or alone (own), read as \
         nanoseconds per SYN dropped while perf ran. `net_rx_action` holds all receive \
         processing in softirq; the drop point is the function the outsider's SYN ends in; the \
         filter's own code is the JIT-ed BPF program, or netfilter's hook walk and rules \
         (`nf_hook_slow`, `nft_*`). The last column: kernel symbols by their own share of all \
         samples (both CPUs), sender side (trafgen's `packet_sendmsg`, `veth_xmit`) included.\n",
        opts.seconds
    );
    let _ = writeln!(
        t,
        "| case | SYNs dropped/s | softirq ns per SYN (/proc/stat) | `net_rx_action` incl., ns per SYN | \
         drop point incl., ns per SYN | filter's own code, ns per SYN | costliest kernel symbols (own %) |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for (case, (p, w, syns)) in Case::ALL.iter().zip(profiles) {
        let ns = |percent: f64| percent / 100.0 * p.sampled_ns / syns;
        let top: Vec<String> = p
            .top_kernel(6)
            .iter()
            .map(|s| format!("`{}` {:.1}", s.name, s.own))
            .collect();
        let filter = if *case == Case::Unfiltered {
            "—".to_string()
        } else {
            format!("{:.0}", ns(p.filter_code()))
        };
        let _ = writeln!(
            t,
            "| `{}` | {:.0} | {:.0} | {:.0} | `{}` {:.0} | {filter} | {} |",
            case.name(),
            w.dropped_per_s,
            w.softirq_total() * 1e9 / w.dropped_per_s,
            ns(p.children("net_rx_action")),
            case.drop_point(),
            ns(p.children(case.drop_point())),
            top.join(", ")
        );
    }
    let _ = write!(t, "\nEvery round:\n\n```\n{raw}```\n");
    t
}
