//! The outsider of the `synflood` scenario: trafgen sending TCP SYNs as fast as one CPU
//! allows, from an untrusted address, with source port, sequence number and IP id random
//! per packet. SIGTERM does not stop trafgen and it sends from a forked worker, so the
//! guard stops it with SIGINT to the worker and the parent (then SIGKILL after a bounded
//! wait) on drop; it stays in xtask's process group, so Ctrl-C reaches it too.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::netns::Netns;
use crate::bench::procs::{Scratch, children};
use crate::util::exec;

/// How long trafgen may take to stop after SIGINT before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Bytes of send buffer forced on trafgen's packet socket. With the default (212,992
/// bytes) trafgen aborts ("Flushing TX_RING failed") once native XDP on the veth holds
/// frames in its queue; a 64 MiB buffer keeps it sending. Set per socket, rather than
/// through the global `net.core.wmem_*` sysctls trafgen would otherwise raise.
const SNDBUF_BYTES: u32 = 64 << 20;

/// Wraps `socket()` to force a large send buffer on AF_PACKET sockets.
const SHIM_C: &str = r#"/* LD_PRELOAD shim for trafgen, built by `cargo xtask bench synflood`. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/socket.h>

int socket(int domain, int type, int protocol)
{
    static int (*real_socket)(int, int, int);
    if (!real_socket)
        real_socket = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    if (!real_socket)
        return -1;
    int fd = real_socket(domain, type, protocol);
    if (fd >= 0 && domain == AF_PACKET) {
        int bytes = SNDBUF_BYTES;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes);
    }
    return fd;
}
"#;

/// Compiles the shim into the scratch directory and returns its path.
pub fn build_shim(dir: &Scratch) -> Result<String> {
    let src = dir.write("sndbuf.c", SHIM_C)?;
    let lib = dir.path.join("sndbuf.so");
    exec(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror"])
            .arg(format!("-DSNDBUF_BYTES={SNDBUF_BYTES}"))
            .arg("-o")
            .arg(&lib)
            .arg(&src)
            .arg("-ldl"),
    )
    .context("compiling the trafgen send-buffer shim (apt-get install gcc libc6-dev)")?;
    Ok(lib.to_string_lossy().into_owned())
}

/// trafgen's packet: one IPv4 TCP SYN from `src` to `dst:port`.
pub fn packet(dst_mac: &str, src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> String {
    format!(
        "{{\n  eth(da={dst_mac}),\n  ipv4(sa={src}, da={dst}, id=drnd(), ttl=64, df),\n  \
         tcp(sp=drnd(1024, 65535), dp={port}, seq=drnd(), syn, win=64240)\n}}\n"
    )
}

/// trafgen running in the namespace, stopped on drop.
pub struct Flood {
    child: Child,
    log: std::path::PathBuf,
    /// trafgen's workers as last seen, to stop them should the parent be gone.
    workers: Vec<u32>,
}

impl Flood {
    /// Starts one trafgen worker (it pins itself to CPU 0) sending `packet_file` out of
    /// the namespace end of the pair, with the shim preloaded. `--no-sock-mem` and
    /// `--notouch-irq` keep it from changing system-wide settings.
    pub fn start(net: &Netns, packet_file: &str, shim: &str, dir: &Path) -> Result<Flood> {
        let log = dir.join("trafgen.log");
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log file handle")?;
        let argv = net.exec(&[
            "trafgen",
            "--out",
            &net.ns_if,
            "--cpus",
            "1",
            "--no-sock-mem",
            "--notouch-irq",
            "--conf",
            packet_file,
        ]);
        eprintln!("+ LD_PRELOAD={shim} {}", argv.join(" "));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("LD_PRELOAD", shim)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().context("starting trafgen")?;
        Ok(Flood {
            child,
            log,
            workers: Vec::new(),
        })
    }

    /// Fails with trafgen's output if it is no longer sending.
    pub fn check(&mut self) -> Result<()> {
        let workers = children(self.child.id());
        if !workers.is_empty() {
            self.workers = workers;
        }
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        if let Some(status) = self.child.try_wait().context("polling trafgen")? {
            bail!("trafgen exited with {status}:\n{log}");
        }
        if log.contains("failed") {
            bail!("trafgen reported a failure:\n{log}");
        }
        Ok(())
    }

    /// Sends `signal` to trafgen's workers (those still named trafgen), and to trafgen
    /// itself when `parent` (only while it has not been reaped: its pid could be reused).
    fn signal(&self, signal: &str, parent: bool) {
        let mut pids: Vec<String> = children(self.child.id())
            .into_iter()
            .chain(self.workers.iter().copied())
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "trafgen")
            })
            .map(|pid| pid.to_string())
            .collect();
        if parent {
            pids.push(self.child.id().to_string());
        }
        if pids.is_empty() {
            return;
        }
        let _ = Command::new("kill")
            .arg(signal)
            .args(&pids)
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            // The parent is gone; a worker it left would still be sending.
            self.signal("-KILL", false);
            return;
        }
        self.signal("-INT", true);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("trafgen did not stop within {STOP_GRACE:?}; killing it");
        self.signal("-KILL", true);
        let _ = self.child.wait();
    }
}
