//! Runs the real `trustgate` binary on a config written to a temporary directory, with
//! JSON logs on stderr collected by a thread, so tests can wait for a log event (such as
//! "listening") instead of sleeping, and assert on the access log afterwards (a config
//! without `[access_log]` gets `format = "json"`, so that stderr stays JSON; see
//! [`is_access`]). `Drop` kills the process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// How long to wait for trustgate to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Gateway {
    child: Child,
    lines: Receiver<Value>,
    /// Every log event seen so far, in order.
    pub seen: Vec<Value>,
    /// The listeners' addresses, from the "listening" events.
    pub listeners: Vec<SocketAddr>,
    /// The config file trustgate runs on (rewrite it and send SIGHUP to reload).
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts trustgate on `config` and waits until it has logged `listeners` "listening"
    /// events. Panics with the log when it exits or does not get there in time.
    pub fn start(config: &str, listeners: usize) -> Gateway {
        Gateway::start_under(&[], config, listeners)
    }

    /// [`Gateway::start`] with extra command-line arguments for trustgate.
    pub fn start_with_args(args: &[&str], config: &str, listeners: usize) -> Gateway {
        Gateway::launch(&[], args, config, listeners)
    }

    /// [`Gateway::start`] with the open-file limits set at exec to `soft` and, when
    /// given, `hard` (by util-linux's `prlimit`, which execs trustgate in its own place:
    /// the pid is trustgate's).
    pub fn start_with_nofile(
        config: &str,
        listeners: usize,
        soft: u64,
        hard: Option<u64>,
    ) -> Gateway {
        let hard = hard.map(|h| h.to_string()).unwrap_or_default();
        let limit = format!("--nofile={soft}:{hard}");
        Gateway::start_under(&["prlimit", &limit, "--"], config, listeners)
    }

    /// [`Gateway::start`] with trustgate run under `wrapper` (such as `setpriv …` to drop
    /// privileges); the config is readable by any user.
    pub fn start_under(wrapper: &[&str], config: &str, listeners: usize) -> Gateway {
        Gateway::launch(wrapper, &[], config, listeners)
    }

    fn launch(wrapper: &[&str], args: &[&str], config: &str, listeners: usize) -> Gateway {
        let config = if config.contains("[access_log]") {
            config.to_owned()
        } else {
            format!("{config}\n[access_log]\nformat = \"json\"\n")
        };
        let (dir, path) = write_config(&config);
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_trustgate"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_trustgate")),
        };
        let mut child = command
            .arg("-c")
            .arg(&path)
            .args(["--log-format", "json"])
            .args(args)
            .env("RUST_LOG", "debug,hyper=info,h2=info,rustls=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting trustgate");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut gw = Gateway {
            child,
            lines,
            seen: Vec::new(),
            listeners: Vec::new(),
            config_path: path,
            _dir: dir,
        };
        for _ in 0..listeners {
            let event = gw
                .wait_for(|e| message(e) == Some("listening"), START_TIMEOUT)
                .unwrap_or_else(|| {
                    panic!("trustgate did not start listening; its log:\n{}", gw.log())
                });
            let addr = field(&event, "listener")
                .and_then(|a| a.parse().ok())
                .expect("listening event names its address");
            gw.listeners.push(addr);
        }
        gw
    }

    /// Waits for the first event (after those already seen) that `pred` accepts.
    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if pred(&event) {
                        return Some(event);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Events seen so far whose message is `msg`.
    pub fn events(&self, msg: &str) -> Vec<&Value> {
        self.seen
            .iter()
            .filter(|e| message(e) == Some(msg))
            .collect()
    }

    /// The log so far, for failure messages.
    pub fn log(&self) -> String {
        self.seen.iter().map(|e| format!("{e}\n")).collect()
    }

    /// The address of the metrics listener, from its "metrics listening" event (so a
    /// config may ask for port 0).
    pub fn metrics_listener(&mut self) -> SocketAddr {
        let seen = self
            .events("metrics listening")
            .first()
            .map(|e| (*e).clone());
        let event = seen
            .or_else(|| self.wait_for(|e| message(e) == Some("metrics listening"), START_TIMEOUT))
            .unwrap_or_else(|| panic!("no metrics listener; log:\n{}", self.log()));
        field(&event, "listener")
            .and_then(|a| a.parse().ok())
            .expect("the metrics listening event names its address")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Events seen so far at WARN or ERROR, and lines that are not JSON events at all
    /// (a panic's message is one).
    pub fn alarms(&self) -> Vec<&Value> {
        self.seen
            .iter()
            .filter(|e| match e {
                Value::String(_) => true,
                e => matches!(
                    e.get("level").and_then(Value::as_str),
                    Some("WARN" | "ERROR")
                ),
            })
            .collect()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signalling trustgate");
    }

    /// Waits for the process to exit (bounded), returning whether it exited cleanly.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            // Drain the log as it comes, which is also what paces this loop.
            let _ = self.wait_for(|_| false, Duration::from_millis(50));
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.success());
            }
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `config` into a new temporary directory that any user may read.
pub fn write_config(config: &str) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("writing the config");
    let readable = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(dir.path(), readable).expect("chmod the config dir");
    (dir, path)
}

/// Runs `trustgate -c CONFIG` under `wrapper` to completion (it must exit by itself within
/// `START_TIMEOUT`), returning its exit success and its stderr.
pub fn run_to_exit(wrapper: &[&str], config: &str) -> (bool, String) {
    let (_dir, path) = write_config(config);
    let (program, args) = wrapper.split_first().expect("a wrapper command");
    let child = Command::new(program)
        .args(args)
        .arg(env!("CARGO_BIN_EXE_trustgate"))
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting trustgate");
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(out)) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(err)) => panic!("waiting for trustgate: {err}"),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            panic!("trustgate did not exit within {START_TIMEOUT:?}");
        }
    }
}

/// The `message` field of a tracing JSON event.
pub fn message(event: &Value) -> Option<&str> {
    event.get("fields")?.get("message")?.as_str()
}

/// A field of a tracing JSON event, as a string.
pub fn field(event: &Value, name: &str) -> Option<String> {
    let v = event.get("fields")?.get(name)?;
    Some(match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Whether a stderr line is an access record in the `json` format (a flat object with
/// the client and the status, where events nest their fields).
pub fn is_access(event: &Value) -> bool {
    event.get("client").is_some() && event.get("status").is_some()
}
