//! The `trustgate` binary: reads the command line, sets up logging, loads the config,
//! starts the kernel filter, binds the listeners and serves until SIGTERM or SIGINT,
//! then drains and detaches. `trustgate check` validates a config and prints the plan.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use proxy::kernel;
use proxy::listener::{self, Runtime, Server};
use proxy::metrics::Metrics;
use proxy::{admin, config, reload};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{info, warn};

/// How long in-flight requests may run on after SIGTERM.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    version,
    about = "A reverse proxy that trusts only its load balancers, enforced in the kernel"
)]
struct Cli {
    /// The config file, in rpxy's format.
    #[arg(short, long, global = true, default_value = "config.toml")]
    config: PathBuf,
    /// Watch the config file and reload it when it changes (SIGHUP always reloads).
    #[arg(short, long)]
    watch: bool,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
    print!("{}", config.summary());
    Ok(())
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
    let (config, warnings) = config::load(&cli.config)?;
    for w in &warnings {
        warn!(warning = %w, "config");
    }
    info!(config = %cli.config.display(), "config loaded");
    let mut kernel = kernel::start_for(&config).context("starting the kernel filter")?;
    let listeners =
        listener::bind_all(&config, kernel.as_mut()).context("binding the listeners")?;
    let runtime = Runtime::new(&config, None).context("preparing TLS and the upstreams")?;
    let server = Server::new(runtime, kernel, Arc::new(Metrics::default()));
    let admin = match config.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener {addr}"))?;
            Some(tokio::spawn(admin::serve(listener, Arc::clone(&server))))
        }
        None => None,
    };
    let reloads = tokio::spawn(reload::run(
        Arc::clone(&server),
        cli.config.clone(),
        cli.watch,
    ));
    let signals = signal_count();
    tokio::select! {
        _ = Arc::clone(&server).run(listeners, nth_signal(signals.clone(), 1), DRAIN_GRACE) => {}
        _ = nth_signal(signals, 2) => warn!("second signal: stopping without waiting for the drain"),
    }
    reloads.abort();
    if let Some(admin) = admin {
        admin.abort();
    }
    drop(server.take_kernel());
    info!("stopped; kernel filter detached");
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
