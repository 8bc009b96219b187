//! Real PROXY-protocol senders for the tests (HAProxy, nginx); their certificates come
//! from `certs`. Each peer runs in its own temp dir with its own config, pid and log
//! files, listens on loopback ports picked free, is awaited by polling connect against a
//! deadline, and is killed and reaped when its [`Peer`] is dropped.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a peer may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two connect attempts while a peer starts.
const READY_POLL: Duration = Duration::from_millis(20);

/// A running peer process. Dropping it kills the process and removes its directory.
pub struct Peer {
    name: &'static str,
    child: Child,
    /// Config, pid and log files; removed after the process is reaped (field order).
    dir: TempDir,
}

impl Peer {
    /// The peer's directory, holding its config, pid and log files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the peer wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default()
    }

    /// Starts `command` (whose output goes to `output.log` in `dir`) and waits until
    /// `ready` accepts connections, failing with the peer's log if it exits or the
    /// deadline passes first.
    fn start(name: &'static str, mut command: Command, dir: TempDir, ready: SocketAddr) -> Peer {
        let output =
            fs::File::create(dir.path().join("output.log")).expect("create the peer's log");
        let child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the log handle"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut peer = Peer { name, child, dir };
        peer.wait_ready(ready);
        peer
    }

    fn wait_ready(&mut self, ready: SocketAddr) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&ready, READY_POLL).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before listening:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not listening on {ready} after {READY_TIMEOUT:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(READY_POLL);
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Already gone if it crashed; either way reap it so no zombie outlives the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address (`ip`, e.g. "127.0.0.1" or "::1") whose port nobody listens on
/// right now.
pub fn free_addr(ip: &str) -> SocketAddr {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
}

/// A loopback port nobody listens on right now.
pub fn free_port(ip: &str) -> u16 {
    free_addr(ip).port()
}

/// Starts HAProxy on `config`, a full configuration file's text, in its own directory,
/// and waits for `ready`. `config` may refer to `{dir}`, replaced by that directory.
pub fn haproxy(program: &Path, config: &str, ready: SocketAddr) -> Peer {
    let dir = TempDir::new().expect("temp dir");
    let config = config.replace("{dir}", &dir.path().display().to_string());
    let path = dir.path().join("haproxy.cfg");
    fs::write(&path, config).expect("write haproxy.cfg");
    let mut command = Command::new(program);
    // -db: stay in the foreground, so the child is HAProxy itself.
    command.arg("-db").arg("-f").arg(&path);
    Peer::start("haproxy", command, dir, ready)
}

/// Starts nginx with `stream` as the body of its `stream {}` block, in its own
/// directory, and waits for `ready`.
pub fn nginx(program: &Path, stream: &str, ready: SocketAddr) -> Peer {
    let dir = TempDir::new().expect("temp dir");
    let config = format!(
        "load_module {module};\n\
         daemon off;\n\
         master_process off;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         stream {{\n{stream}\n}}\n",
        module = NGINX_STREAM_MODULE,
        dir = dir.path().display(),
    );
    let path = dir.path().join("nginx.conf");
    fs::write(&path, config).expect("write nginx.conf");
    let mut command = Command::new(program);
    command
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&path);
    Peer::start("nginx", command, dir, ready)
}

/// Runs `curl` with `args` (silent, errors shown, 15 s at most) and returns its output.
pub fn curl(program: &Path, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(["--silent", "--show-error", "--max-time", "15"])
        .args(args)
        .output()
        .expect("run curl")
}

/// Where Debian's `libnginx-mod-stream` installs the stream module.
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
