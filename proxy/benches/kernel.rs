//! The eBPF programs' cost per frame, as the kernel measures it: BPF_PROG_TEST_RUN runs
//! the loaded program `REPEAT` times on one crafted frame and reports the mean time per
//! run. Each frame kind is measured `ROUNDS` times; the table gives the median and the
//! spread. Run with `cargo xtask bench kernel` (needs CAP_BPF).

#[path = "../tests/it/common/catalogue.rs"]
#[expect(
    dead_code,
    reason = "the benchmark times the cases; the counters they move are the tests'"
)]
mod catalogue;
#[path = "../tests/it/common/frames.rs"]
#[expect(
    dead_code,
    reason = "the benchmark uses only some of the frame builders"
)]
mod frames;

use std::time::Duration;

use catalogue::{Case, PORT, TRUSTED_PREFIXES, Verdict};
use proxy::kernel::{Kernel, Plan, Program, XdpMode};
use proxy::trust::TrustList;

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;

fn measure(kernel: &Kernel, program: Program, frame: &[u8]) -> (u32, Vec<Duration>) {
    let mut verdict = 0;
    let mut times: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let (v, t) = kernel
                .test_run(program, frame, REPEAT)
                .expect("BPF_PROG_TEST_RUN");
            verdict = v;
            t
        })
        .collect();
    times.sort();
    (verdict, times)
}

fn row(name: &str, program: &str, verdict: Verdict, times: &[Duration]) {
    let ns = |d: &Duration| d.as_nanos();
    let verdict = match verdict {
        Verdict::Pass => "pass",
        Verdict::Drop => "drop",
    };
    println!(
        "| {name} | {program} | {verdict} | {} | {}–{} |",
        ns(&times[times.len() / 2]),
        ns(&times[0]),
        ns(&times[times.len() - 1])
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects nothing here.
    let trust = TrustList::new(TRUSTED_PREFIXES.map(|s| s.parse().expect("prefix")));
    let xdp_plan = Plan::Xdp {
        interfaces: Vec::new(),
        attach: XdpMode::Auto,
    };
    let xdp = match Kernel::start(xdp_plan, &trust, &[PORT], false) {
        Ok(k) => k,
        Err(err) => {
            eprintln!("kernel bench skipped: {err}");
            return;
        }
    };
    let socket =
        Kernel::start(Plan::Socket, &trust, &[PORT], false).expect("loading the socket filter");
    println!(
        "BPF_PROG_TEST_RUN, {REPEAT} runs per round, {ROUNDS} rounds; ns per frame as the kernel reports it.\n"
    );
    println!("| frame | program | verdict | median ns | min–max ns |");
    println!("| --- | --- | --- | ---: | ---: |");
    let cases = catalogue::all();
    for case in &cases {
        let (verdict, times) = measure(&xdp, Program::Xdp, &case.frame);
        let got = match verdict {
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            other => panic!("{}: XDP returned {other}", case.name),
        };
        check(case, got, "XDP");
        row(case.name, "XDP", got, &times);
    }
    for case in cases.iter().filter(|c| c.socket) {
        let (verdict, times) = measure(&socket, Program::Socket, &case.frame);
        let got = if verdict == 0 {
            Verdict::Drop
        } else {
            Verdict::Pass
        };
        check(case, got, "the socket filter");
        row(case.name, "socket filter", got, &times);
    }
}

/// A frame timed on the wrong path would measure something else: the verdict must be
/// the catalogue's (which the kernel tests assert).
fn check(case: &Case, got: Verdict, program: &str) {
    assert_eq!(
        got, case.verdict,
        "{}: {program} gave another verdict than the catalogue's",
        case.name
    );
}
