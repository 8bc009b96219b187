//! A throwaway network for kernel tests: a namespace joined to the host by a veth pair,
//! with IPv4 and IPv6 addresses on both ends, a trusted, an untrusted and a third (for a
//! `direct_sources` client) address in the namespace. Names and subnets are unique per test (pid and a counter), and
//! `Drop` deletes the namespace, which takes the pair with it.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Socket, Type};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    pub ns: String,
    /// The host end of the pair, where XDP attaches.
    pub host_if: String,
    /// The namespace's end of the pair.
    pub ns_if: String,
    pub host4: Ipv4Addr,
    pub trusted4: Ipv4Addr,
    pub untrusted4: Ipv4Addr,
    /// A client address that tests may list as a direct source (or leave untrusted).
    pub direct4: Ipv4Addr,
    pub host6: Ipv6Addr,
    pub trusted6: Ipv6Addr,
    pub untrusted6: Ipv6Addr,
    pub direct6: Ipv6Addr,
}

impl Lab {
    /// Creates the namespace and the pair, or returns why it could not.
    pub fn new() -> Result<Lab, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:04x}{:02x}", pid & 0xffff, n & 0xff);
        // A /29 in 198.18.0.0/15 (RFC 2544 benchmarking space) per lab.
        let block = (pid.wrapping_mul(64) + n) % 16384;
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + block * 8;
        let v6 = |host: u16| {
            Ipv6Addr::new(
                0xfd54,
                0x7267,
                (pid & 0xffff) as u16,
                n as u16,
                0,
                0,
                0,
                host,
            )
        };
        let lab = Lab {
            ns: format!("tg{tag}"),
            host_if: format!("tg{tag}h"),
            ns_if: format!("tg{tag}n"),
            host4: Ipv4Addr::from(base + 1),
            trusted4: Ipv4Addr::from(base + 2),
            untrusted4: Ipv4Addr::from(base + 3),
            direct4: Ipv4Addr::from(base + 4),
            host6: v6(1),
            trusted6: v6(2),
            untrusted6: v6(3),
            direct6: v6(4),
        };
        let ns_if = lab.ns_if.clone();
        let ns = lab.ns.clone();
        ip(&["netns", "add", &ns])?;
        // From here on, Drop cleans up whatever the rest manages to create.
        let steps: Vec<Vec<String>> = vec![
            vec![
                "link",
                "add",
                &lab.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns_if,
                "netns",
                &ns,
            ],
            vec![
                "addr",
                "add",
                &format!("{}/29", lab.host4),
                "dev",
                &lab.host_if,
            ],
            vec![
                "addr",
                "add",
                &format!("{}/64", lab.host6),
                "dev",
                &lab.host_if,
                "nodad",
            ],
            vec!["link", "set", &lab.host_if, "up"],
            vec![
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/29", lab.trusted4),
                "dev",
                &ns_if,
            ],
            vec![
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/29", lab.untrusted4),
                "dev",
                &ns_if,
            ],
            vec![
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/64", lab.trusted6),
                "dev",
                &ns_if,
                "nodad",
            ],
            vec![
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/64", lab.untrusted6),
                "dev",
                &ns_if,
                "nodad",
            ],
            vec![
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/29", lab.direct4),
                "dev",
                &ns_if,
            ],
            vec![
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/64", lab.direct6),
                "dev",
                &ns_if,
                "nodad",
            ],
            vec!["-n", &ns, "link", "set", &ns_if, "up"],
            vec!["-n", &ns, "link", "set", "lo", "up"],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(String::from).collect())
        .collect();
        for step in &steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            ip(&args)?;
        }
        Ok(lab)
    }

    /// Connects from `src` (an address in the namespace) to `dst` on the host.
    pub fn connect(
        &self,
        src: IpAddr,
        dst: SocketAddr,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        let ns_path = self.ns_path();
        std::thread::scope(|s| {
            s.spawn(|| {
                // The socket this thread creates stays in the namespace after it is gone.
                Lab::enter(&ns_path)?;
                let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
                socket.bind(&SocketAddr::new(src, 0).into())?;
                socket.connect_timeout(&dst.into(), timeout)?;
                Ok(TcpStream::from(socket))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("connect thread panicked")))
        })
    }

    /// The namespace's file, for [`Lab::enter`].
    pub fn ns_path(&self) -> String {
        format!("/run/netns/{}", self.ns)
    }

    /// Joins the calling thread to the namespace at `ns_path` for good: call it on a
    /// thread of its own.
    pub fn enter(ns_path: &str) -> io::Result<()> {
        let ns = File::open(ns_path)?;
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
    }

    /// `program`, to be run inside the namespace (by `ip netns exec`).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns]).arg(program);
        command
    }

    /// Whether the host end has an XDP program attached (`ip link` says `xdp`).
    pub fn host_has_xdp(&self) -> bool {
        let out = Command::new("ip")
            .args(["-d", "link", "show", "dev", &self.host_if])
            .output()
            .expect("running ip link");
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("prog/xdp") || text.contains(" xdp") || text.contains("xdpgeneric")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
