//! The `trustgate` binary: reads the command line, sets up logging and hands over to
//! `service::run` until SIGTERM or SIGINT (a second one cuts the drain short).
//! `check` validates a config and prints the plan; `stats` prints a running one's counters.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use proxy::{admin, config, kernel, service, tls};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::warn;

#[derive(Parser)]
#[command(
    version,
    about = "A reverse proxy that trusts only its load balancers, enforced in the kernel"
)]
struct Cli {
    /// The config file, in rpxy's format.
    #[arg(short, long, global = true, default_value = "config.toml")]
    config: PathBuf,
    /// Reload when the config file, or a certificate it names, changes (SIGHUP always
    /// reloads).
    #[arg(short, long)]
    watch: bool,
    /// Seconds in-flight requests may run on after SIGTERM or SIGINT.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    grace_period: u64,
    /// Log format.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and print what would run; exit 0 when it would start.
    Check,
    /// Print the counters of the instance running on this config (its `[metrics] listen`).
    Stats,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// jemalloc, built to purge freed pages after a second from a background thread
/// (`.cargo/config.toml`): after a burst of downloads the process returns to its idle
/// size, which glibc's allocator did not do (it kept about twice the idle RSS).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rustls warns about what a client sent (an IP address as SNI, for one): any client
    // could set the log's volume, so only its errors get through by default.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        Some(Command::Check) => check(&cli),
        Some(Command::Stats) => stats(&cli),
        None => serve(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The error and its causes, joined by ": "; each error writes its cause
            // once, in its message or as its `source()`.
            eprintln!("trustgate: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(cli: &Cli) -> Result<()> {
    let (config, warnings) = config::load(&cli.config)?;
    for w in &warnings {
        println!("warning: {w}");
    }
    // What start reads too: certificates, keys, CAs and the ticket key file.
    let tls = tls::Tls::new(&config, None)?;
    print!("{}", config.summary());
    if let Some(keys) = tls.ticket_keys() {
        println!("  ticket key file: {keys} key(s) read; the first encrypts");
    }
    check_xdp_interfaces(&config)
}

/// Per XDP interface, what it gets on this host (link type and walk) or why it is
/// refused; a refusal fails the check when the filter is required, as it fails the start.
fn check_xdp_interfaces(config: &config::Config) -> Result<()> {
    let Some(pp) = &config.proxy_protocol else {
        return Ok(());
    };
    let config::KernelFilterMode::Xdp {
        interfaces,
        xdp_mode,
    } = &pp.kernel_filter.mode
    else {
        return Ok(());
    };
    println!("XDP interfaces on this host:");
    let mut refused = None;
    for interface in interfaces {
        match kernel::xdp_interface(interface, *xdp_mode) {
            Ok(plan) => println!("  {interface}: {plan}"),
            Err(err) => {
                println!("  {interface}: refused: {err}");
                refused.get_or_insert(err);
            }
        }
    }
    match refused {
        Some(err) if pp.kernel_filter.required => Err(err)
            .context("the XDP filter would not start on this host (kernel_filter.required = true)"),
        _ => Ok(()),
    }
}

#[tokio::main]
async fn stats(cli: &Cli) -> Result<()> {
    let (config, _) = config::load_with(&cli.config, config::LoadOptions { check_files: false })?;
    let addr = config.metrics_listen.context(
        "the config has no [metrics] listen, so the running instance exposes no counters",
    )?;
    let text = admin::fetch(addr)
        .await
        .with_context(|| format!("fetching http://{addr}/metrics"))?;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        println!("{line}");
    }
    Ok(())
}

#[tokio::main]
async fn serve(cli: &Cli) -> Result<()> {
    let options = service::Options {
        config: cli.config.clone(),
        watch: cli.watch,
        grace: std::time::Duration::from_secs(cli.grace_period),
    };
    let signals = signal_count();
    service::run(
        options,
        nth_signal(signals.clone(), 1),
        nth_signal(signals, 2),
    )
    .await?;
    Ok(())
}

/// Counts SIGTERM and SIGINT as they arrive.
fn signal_count() -> watch::Receiver<u32> {
    let (tx, rx) = watch::channel(0);
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            warn!("cannot listen for signals; stop with SIGKILL");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    rx
}

/// Completes once `n` signals have arrived.
async fn nth_signal(mut count: watch::Receiver<u32>, n: u32) {
    if count.wait_for(|c| *c >= n).await.is_err() {
        std::future::pending::<()>().await;
    }
}
