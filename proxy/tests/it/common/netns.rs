//! Throwaway networks for kernel tests. [`Lab`]: a namespace joined to the host by a
//! veth pair, with IPv4 and IPv6 addresses on both ends, a trusted, an untrusted and a
//! third (for a `direct_sources` client) address in the namespace. [`TunLab`]: a
//! namespace holding a tun device whose other end the test holds. Names and subnets are
//! unique per test (pid and a counter), and `Drop` deletes the namespace, which takes its
//! devices with it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
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
        in_namespace(&self.ns, || {
            let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
            socket.bind(&SocketAddr::new(src, 0).into())?;
            socket.connect_timeout(&dst.into(), timeout)?;
            Ok(TcpStream::from(socket))
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

/// Runs `f` on a thread that has joined the network namespace `ns`, so that the
/// sockets and devices it creates live there (and stay there after the thread is gone:
/// the thread joins for good and ends with `f`).
pub fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns_path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = File::open(&ns_path)?;
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

/// A namespace with a tun device in it: a device without a link-layer header, whose
/// frames start at the IP header. The test holds the device's other end: a packet
/// written to [`TunLab::send`] arrives on the device as if received from the wire, and
/// what the namespace routes out of the device is read back with [`TunLab::recv`].
pub struct TunLab {
    ns: Namespace,
    pub tun_if: String,
    tun: File,
    /// The device's own address (a /24 on the device), where a server listens.
    pub local4: Ipv4Addr,
    /// Two more addresses of that /24, as sources of crafted packets.
    pub trusted4: Ipv4Addr,
    pub untrusted4: Ipv4Addr,
}

impl TunLab {
    /// A namespace with `lo` up and a tun device up with its /24.
    pub fn new() -> Result<TunLab, String> {
        let lab = TunLab::create(None)?;
        ip(&[
            "-n",
            lab.ns(),
            "addr",
            "add",
            &format!("{}/24", lab.local4),
            "dev",
            &lab.tun_if,
        ])?;
        ip(&["-n", lab.ns(), "link", "set", &lab.tun_if, "up"])?;
        ip(&["-n", lab.ns(), "link", "set", "lo", "up"])?;
        Ok(lab)
    }

    /// A namespace with a tun device whose link type (ARPHRD number) is set to
    /// `link_type` with TUNSETLINK, left down and unaddressed: a device of a type the
    /// kernel has no driver for here, for tests of what XDP refuses.
    pub fn with_link_type(link_type: u16) -> Result<TunLab, String> {
        TunLab::create(Some(link_type))
    }

    fn create(link_type: Option<u16>) -> Result<TunLab, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:04x}{:02x}", pid & 0xffff, n & 0xff);
        let tun_if = format!("tgt{tag}t");
        // From here on, dropping `ns` deletes the namespace, whatever fails next.
        let ns = Namespace::add(format!("tgt{tag}"))?;
        let tun = in_namespace(&ns.0, || open_tun(&tun_if, link_type))
            .map_err(|e| format!("creating tun device {tun_if}: {e}"))?;
        // Inside its own namespace the subnet cannot clash with anything.
        let subnet = |host: u8| Ipv4Addr::new(10, 77, 0, host);
        Ok(TunLab {
            ns,
            tun_if,
            tun,
            local4: subnet(1),
            trusted4: subnet(2),
            untrusted4: subnet(3),
        })
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn ns(&self) -> &str {
        &self.ns.0
    }

    /// Writes one IP packet into the device, as received from the wire.
    pub fn send(&self, packet: &[u8]) {
        let n = (&self.tun)
            .write(packet)
            .expect("writing to the tun device");
        assert_eq!(n, packet.len(), "short write to the tun device");
    }

    /// Reads packets leaving the device until one that `wanted` accepts, or `timeout`
    /// has passed with none (`None`). Other packets are skipped.
    pub fn recv(&self, timeout: Duration, wanted: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let wait = PollTimeout::try_from(left).expect("a timeout under 24 days");
            let mut fds = [PollFd::new(
                std::os::fd::AsFd::as_fd(&self.tun),
                PollFlags::POLLIN,
            )];
            if poll(&mut fds, wait).expect("polling the tun device") == 0 {
                return None;
            }
            let n = (&self.tun).read(&mut buf).expect("reading the tun device");
            if wanted(&buf[..n]) {
                return Some(buf[..n].to_vec());
            }
        }
    }
}

/// A network namespace this test added; dropping it deletes the namespace.
struct Namespace(String);

impl Namespace {
    fn add(name: String) -> Result<Namespace, String> {
        ip(&["netns", "add", &name])?;
        Ok(Namespace(name))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Opens `/dev/net/tun` and creates (in the calling thread's namespace) the tun device
/// `name`, without packet-information headers, with the link type `link_type` if given.
fn open_tun(name: &str, link_type: Option<u16>) -> io::Result<File> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain old data, for which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads an `ifreq` through the pointer, which points at `req`,
    // alive and initialised (name NUL-terminated: it is shorter than the array, which
    // was zeroed), for the duration of the call on an fd we own.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &raw mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(link_type) = link_type {
        // SAFETY: TUNSETLINK takes its argument by value (an ARPHRD number), on the tun
        // fd we own, whose device is down as TUNSETLINK requires.
        let set = unsafe {
            libc::ioctl(
                tun.as_raw_fd(),
                libc::TUNSETLINK,
                libc::c_ulong::from(link_type),
            )
        };
        if set < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(tun)
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
