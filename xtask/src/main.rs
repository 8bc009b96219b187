//! trustgate's developer entry points (`cargo xtask <command>`): building the eBPF
//! object with the toolchain it needs, running the proxy, running every test, and the
//! benchmarks. Each command prints what it runs; failures say which step and why.

mod bench;
mod build_ebpf;
mod fuzz;
mod run;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "trustgate's developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF object (provisions rust-src and bpf-linker when missing).
    BuildEbpf(build_ebpf::Options),
    /// Build everything, then run `trustgate -c config.toml` with the demo upstream.
    Run(run::Options),
    /// Run the whole test suite: fmt, clippy, host tests and the kernel tests.
    Test(test::Options),
    /// Run the benchmarks and write the table.
    Bench(bench::Options),
    /// Fuzz the PROXY parser for a bounded time.
    Fuzz(fuzz::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::BuildEbpf(opts) => build_ebpf::build(&opts).map(|_| ()),
        Command::Run(opts) => run::run(&opts),
        Command::Test(opts) => test::test(&opts),
        Command::Bench(opts) => bench::bench(&opts),
        Command::Fuzz(opts) => fuzz::fuzz(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
