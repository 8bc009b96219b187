//! The kernel trust filter: loads the eBPF object, fills its maps from the
//! [`TrustList`], attaches an XDP program to interfaces (the Ethernet or the L3 walk,
//! by each interface's link type: see `link`) or the socket filter to
//! listening sockets (falling back to classic BPF when eBPF cannot be loaded), updates
//! the maps in place on reload, reads the counters, and detaches on drop.
//!
//! [`Kernel`] owns every attachment: dropping it detaches the programs (XDP links go
//! with the `Ebpf` value; socket filters are detached from the listeners explicitly).
//! A socket accepted from a filtered listener inherits its filter; the listener takes
//! it off with [`detach_inherited`] (`kernel_filter.detach_accepted`, the default), or
//! the socket keeps it until it closes.

mod classic;
mod link;
mod load;
mod maps;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use aya::Ebpf;
use aya::programs::{
    Program as AyaProgram, ProgramError, SocketFilter, TestRun, TestRunOptions, Xdp,
    XdpMode as AyaXdpMode,
};
use proxy_common::{
    SOCKET_COUNTERS_MAP, SOCKET_PROGRAM, XDP_COUNTERS_MAP, XDP_L3_PROGRAM, XDP_PROGRAM,
};
use tracing::{error, info, warn};

pub(crate) use classic::TooLong;
pub use link::{LinkType, XdpInterface, XdpWalk, xdp_interface};
pub use maps::ProgramCounters;

use crate::chain::Chain;
pub use crate::config::XdpMode;
use crate::config::{Config, KernelFilterMode};
use crate::trust::TrustList;

/// Where the filter is enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// No kernel filter: user space alone checks peers.
    Off,
    /// A socket filter on each listening socket (eBPF, else classic BPF).
    Socket,
    /// The classic-BPF socket filter only: what `Socket` falls back to, chosen
    /// directly (no privilege needed, no counters).
    ClassicSocket,
    /// XDP on these interfaces, judging SYNs to the protected ports.
    Xdp {
        interfaces: Vec<String>,
        attach: XdpMode,
    },
}

/// The mode an interface got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttached {
    Native,
    Generic,
}

/// The kind of filter a listening socket got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketFilterKind {
    Ebpf,
    Classic,
}

/// What is attached where, for logs, `trustgate check` and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attachment {
    Xdp {
        interface: String,
        mode: XdpAttached,
        walk: XdpWalk,
    },
    Socket {
        local: Option<SocketAddr>,
        kind: SocketFilterKind,
    },
}

/// Which program a test run or a counter read is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// XDP walked from the Ethernet header.
    Xdp,
    /// XDP walked from the IP header (L3 devices). It shares [`Program::Xdp`]'s
    /// counters: reading either reads both.
    XdpL3,
    Socket,
}

impl Program {
    /// The program's name in the eBPF object.
    fn name(self) -> &'static str {
        match self {
            Program::Xdp => XDP_PROGRAM,
            Program::XdpL3 => XDP_L3_PROGRAM,
            Program::Socket => SOCKET_PROGRAM,
        }
    }
}

/// Why the kernel filter could not be set up or updated.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "this binary carries no eBPF object: run `cargo xtask build-ebpf`, then rebuild trustgate"
    )]
    ObjectMissing,
    #[error(
        "permission denied while {action}: the eBPF modes need CAP_BPF and CAP_NET_ADMIN (run as root or grant them, e.g. AmbientCapabilities= in the systemd unit); with CAP_NET_ADMIN alone, mode = \"socket\" falls back to classic BPF; with neither, use mode = \"off\" or required = false"
    )]
    Permission {
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the kernel refused the classic BPF socket filter on {local:?} (SO_ATTACH_FILTER needs CAP_NET_ADMIN on this kernel): grant CAP_NET_ADMIN, or set kernel_filter.required = false to run with the user-space check only"
    )]
    ClassicPermission {
        local: Option<SocketAddr>,
        #[source]
        source: io::Error,
    },
    #[error("the kernel's verifier rejected program `{program}`; its log:\n{log}")]
    Verifier { program: &'static str, log: String },
    #[error(
        "`{name}` is missing from the eBPF object: it does not match this binary; rebuild with `cargo xtask build-ebpf`"
    )]
    MissingInObject { name: &'static str },
    #[error("loading the eBPF object")]
    Object(#[source] aya::EbpfError),
    #[error("{action} program `{program}`")]
    Program {
        program: &'static str,
        action: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "interface `{interface}` (kernel_filter.interfaces) does not exist on this host: check `ip link`"
    )]
    InterfaceNotFound { interface: String },
    #[error(
        "cannot read the link type of interface `{interface}` (kernel_filter.interfaces) from {}: XDP mode needs it to know where the IP header starts; check that /sys is mounted, or use mode = \"socket\"",
        path.display()
    )]
    LinkTypeUnreadable {
        interface: String,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "interface `{interface}` (kernel_filter.interfaces) has link type {link_type}, whose frames XDP cannot judge: trustgate's XDP walks Ethernet-framed devices and L3 devices (tun, WireGuard, IP-in-IP, SIT, GRE, PPP, raw IP) only; use mode = \"socket\", which filters on the listening sockets whatever the device"
    )]
    UnsupportedLinkType {
        interface: String,
        link_type: LinkType,
    },
    #[error(
        "interface `{interface}` (kernel_filter.interfaces) has no link-layer header (link type {link_type}) and is judged in generic XDP only, the mode in which its frames are known to start at the IP header (a tun device refuses native XDP anyway); set xdp_mode = \"auto\" or \"generic\""
    )]
    NativeOnL3 {
        interface: String,
        link_type: LinkType,
    },
    #[error("attaching XDP to `{interface}` in {mode} mode")]
    AttachXdp {
        interface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching the socket filter to the listener on {local:?}")]
    AttachSocket {
        local: Option<SocketAddr>,
        #[source]
        source: io::Error,
    },
    #[error("map `{map}`")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "trusted_proxies and direct_sources hold {count} {family} prefixes together; the kernel maps hold at most {max}: merge adjacent networks"
    )]
    TooManyPrefixes {
        family: &'static str,
        count: usize,
        max: usize,
    },
    #[error(transparent)]
    ClassicTooLong(#[from] TooLong),
    #[error("the {0:?} program is not loaded in this mode")]
    NotLoaded(Program),
}

/// A listener the socket filter was attached to; its duplicate fd lets us detach.
struct ProtectedSocket {
    fd: OwnedFd,
    local: Option<SocketAddr>,
    kind: SocketFilterKind,
}

/// The loaded and attached filter.
pub struct Kernel {
    plan: Plan,
    /// The eBPF object; `None` in `Off` mode and when socket mode fell back to classic.
    ebpf: Option<Ebpf>,
    trust: TrustList,
    xdp: Vec<(String, XdpAttached, XdpWalk)>,
    /// The ports the XDP programs protect.
    ports: Vec<u16>,
    /// Whether the L3 XDP program is loaded (only when an interface needs it).
    xdp_l3: bool,
    sockets: Vec<ProtectedSocket>,
}

impl Kernel {
    /// Loads what `plan` needs and, for XDP, attaches to every interface with `ports`
    /// protected. Socket filters are attached later, per listener, by
    /// [`Kernel::protect_listener`]. In socket mode an eBPF load failure falls back to
    /// classic BPF with a warning; in XDP mode every failure is an error.
    pub fn start(
        plan: Plan,
        trust: &TrustList,
        ports: &[u16],
        observe_only: bool,
    ) -> Result<Kernel, KernelError> {
        let mut kernel = Kernel {
            plan: plan.clone(),
            ebpf: None,
            trust: trust.clone(),
            xdp: Vec::new(),
            ports: ports.to_vec(),
            xdp_l3: false,
            sockets: Vec::new(),
        };
        match &plan {
            Plan::Off => {}
            Plan::ClassicSocket => {
                classic::program(trust)?;
            }
            Plan::Socket => match load_socket(trust, observe_only) {
                Ok(ebpf) => kernel.ebpf = Some(ebpf),
                Err(err) => {
                    warn!(error = %Chain(&err), "eBPF socket filter unavailable; falling back to classic BPF (no kernel counters)");
                    classic::program(trust)?;
                }
            },
            Plan::Xdp { interfaces, attach } => {
                // Every interface is classified before anything is loaded, so a refused
                // one leaves nothing behind.
                let planned = interfaces
                    .iter()
                    .map(|interface| xdp_interface(interface, *attach))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut ebpf = load::object()?;
                maps::sync_trust(&mut ebpf, trust)?;
                maps::set_ports(&mut ebpf, &[], ports)?;
                maps::set_config(&mut ebpf, observe_only)?;
                load_xdp(&mut ebpf, Program::Xdp)?;
                if planned.iter().any(|p| p.walk == XdpWalk::Ip) {
                    load_xdp(&mut ebpf, Program::XdpL3)?;
                    kernel.xdp_l3 = true;
                }
                for (
                    interface,
                    XdpInterface {
                        walk,
                        attach,
                        native_limit,
                        ..
                    },
                ) in interfaces.iter().zip(planned)
                {
                    let program = match walk {
                        XdpWalk::Ethernet => Program::Xdp,
                        XdpWalk::Ip => Program::XdpL3,
                    };
                    let xdp: &mut Xdp = program_mut(&mut ebpf, program.name())?;
                    let mode = attach_xdp(xdp, interface, attach)?;
                    match native_limit {
                        Some(limit) if mode == XdpAttached::Generic => {
                            info!(interface = %interface, mode = ?mode, walk = ?walk, why = %limit, "XDP trust filter attached");
                        }
                        _ => {
                            info!(interface = %interface, mode = ?mode, walk = ?walk, "XDP trust filter attached");
                        }
                    }
                    kernel.xdp.push((interface.clone(), mode, walk));
                }
                kernel.ebpf = Some(ebpf);
            }
        }
        Ok(kernel)
    }

    /// Attaches the socket filter to a listening socket (socket mode only; a no-op
    /// otherwise, returning `None`). Attach before the socket accepts anything.
    pub fn protect_listener(
        &mut self,
        socket: impl AsFd,
    ) -> Result<Option<SocketFilterKind>, KernelError> {
        if !matches!(self.plan, Plan::Socket | Plan::ClassicSocket) {
            return Ok(None);
        }
        let sock = socket2::SockRef::from(&socket);
        let local = sock.local_addr().ok().and_then(|a| a.as_socket());
        let attach_err = |source| KernelError::AttachSocket { local, source };
        let kind = match &self.ebpf {
            Some(ebpf) => {
                let prog: &SocketFilter = program_of(ebpf, SOCKET_PROGRAM)?;
                prog.attach(socket.as_fd())
                    .map_err(|source| KernelError::Program {
                        program: SOCKET_PROGRAM,
                        action: "attaching",
                        source,
                    })?;
                SocketFilterKind::Ebpf
            }
            None => {
                sock.attach_filter(&classic::program(&self.trust)?)
                    .map_err(|source| match source.raw_os_error() {
                        Some(libc::EPERM) => KernelError::ClassicPermission { local, source },
                        _ => attach_err(source),
                    })?;
                SocketFilterKind::Classic
            }
        };
        let fd = socket.as_fd().try_clone_to_owned().map_err(attach_err)?;
        info!(listener = ?local, kind = ?kind, "socket trust filter attached");
        self.sockets.push(ProtectedSocket { fd, local, kind });
        Ok(Some(kind))
    }

    /// Forgets the listener bound to `local` (closed by a reload): its duplicate
    /// descriptor is closed, and a later sync no longer touches it.
    pub(crate) fn forget_listener(&mut self, local: SocketAddr) {
        self.sockets.retain(|s| s.local != Some(local));
    }

    /// Replaces the trusted list in the kernel, in place: the eBPF tries are updated
    /// (new prefixes added before stale ones are removed), classic filters regenerated
    /// and swapped on each listener. Nothing is detached; established connections are
    /// untouched.
    pub fn sync(&mut self, trust: &TrustList) -> Result<(), KernelError> {
        match (&self.plan, &mut self.ebpf) {
            (Plan::Off, _) => {}
            (_, Some(ebpf)) => maps::sync_trust(ebpf, trust)?,
            (Plan::Socket | Plan::ClassicSocket, None) => {
                let program = classic::program(trust)?;
                for s in &self.sockets {
                    socket2::SockRef::from(&s.fd)
                        .attach_filter(&program)
                        .map_err(|source| KernelError::AttachSocket {
                            local: s.local,
                            source,
                        })?;
                }
            }
            (Plan::Xdp { .. }, None) => {}
        }
        self.trust = trust.clone();
        Ok(())
    }

    /// Makes the XDP program protect exactly `ports` (the listeners' actual ports, known
    /// once bound; or new ones after a reload): new ports are added before stale ones are
    /// cleared. The caller decides when a port may leave (only once nothing listens on
    /// it). On failure the map may hold some of both sets: both are remembered, so the
    /// next call clears what should not stay. A no-op in the socket modes, where each
    /// listener carries its own filter.
    pub(crate) fn set_ports(&mut self, ports: &[u16]) -> Result<(), KernelError> {
        if let (Plan::Xdp { .. }, Some(ebpf)) = (&self.plan, &mut self.ebpf) {
            if let Err(err) = maps::set_ports(ebpf, &self.ports, ports) {
                for port in ports {
                    if !self.ports.contains(port) {
                        self.ports.push(*port);
                    }
                }
                return Err(err);
            }
            self.ports = ports.to_vec();
        }
        Ok(())
    }

    /// What is attached where.
    pub fn attachments(&self) -> Vec<Attachment> {
        let xdp = self
            .xdp
            .iter()
            .map(|(interface, mode, walk)| Attachment::Xdp {
                interface: interface.clone(),
                mode: *mode,
                walk: *walk,
            });
        let sockets = self.sockets.iter().map(|s| Attachment::Socket {
            local: s.local,
            kind: s.kind,
        });
        xdp.chain(sockets).collect()
    }

    /// A program's counters, summed over CPUs; `None` when that program is not loaded
    /// (other mode, or classic fallback, which keeps no counters).
    pub fn counters(&self, program: Program) -> Result<Option<ProgramCounters>, KernelError> {
        let Some(ebpf) = &self.ebpf else {
            return Ok(None);
        };
        if !self.loaded(program) {
            return Ok(None);
        }
        let map = match program {
            Program::Xdp | Program::XdpL3 => XDP_COUNTERS_MAP,
            Program::Socket => SOCKET_COUNTERS_MAP,
        };
        maps::counters(ebpf, map).map(Some)
    }

    /// Whether `program` is loaded in this filter.
    fn loaded(&self, program: Program) -> bool {
        match (program, &self.plan) {
            (Program::Xdp, Plan::Xdp { .. }) | (Program::Socket, Plan::Socket) => true,
            (Program::XdpL3, Plan::Xdp { .. }) => self.xdp_l3,
            _ => false,
        }
    }

    /// Loads the L3 XDP program without attaching it, so [`Kernel::test_run`] can run
    /// it (`start` loads it only when an interface needs it). XDP mode only; a no-op
    /// when it is loaded already. For tests and benchmarks.
    pub fn load_xdp_l3(&mut self) -> Result<(), KernelError> {
        if self.loaded(Program::XdpL3) {
            return Ok(());
        }
        match (&self.plan, &mut self.ebpf) {
            (Plan::Xdp { .. }, Some(ebpf)) => {
                load_xdp(ebpf, Program::XdpL3)?;
                self.xdp_l3 = true;
                Ok(())
            }
            _ => Err(KernelError::NotLoaded(Program::XdpL3)),
        }
    }

    /// Runs the loaded program on a crafted frame with BPF_PROG_TEST_RUN, `repeat`
    /// times, and returns its verdict (XDP action, or bytes kept by the socket filter)
    /// and the kernel's mean time per run. For tests and benchmarks. [`Program::Xdp`]
    /// frames start at Ethernet, [`Program::XdpL3`] frames at the IP header;
    /// socket-filter frames at Ethernet (the kernel strips the Ethernet header).
    pub fn test_run(
        &self,
        program: Program,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration), KernelError> {
        let ebpf = match &self.ebpf {
            Some(ebpf) if self.loaded(program) => ebpf,
            _ => return Err(KernelError::NotLoaded(program)),
        };
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat.max(1);
        let result = match program {
            Program::Xdp | Program::XdpL3 => {
                program_of::<Xdp>(ebpf, program.name())?.test_run(opts)
            }
            Program::Socket => program_of::<SocketFilter>(ebpf, SOCKET_PROGRAM)?.test_run(opts),
        }
        .map_err(|source| KernelError::Program {
            program: program.name(),
            action: "test-running",
            source,
        })?;
        Ok((result.return_value, result.duration))
    }
}

/// Takes the socket filter (eBPF or classic) that `socket`, just accepted, inherited from
/// its listener off it: the filter judges SYNs only, and on an established connection
/// it would run on every packet it receives and pass it. `Ok(false)` when the socket
/// carried no filter. The listener's own filter is not touched.
pub fn detach_inherited(socket: impl AsFd) -> io::Result<bool> {
    match socket2::SockRef::from(&socket).detach_filter() {
        Ok(()) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(err) => Err(err),
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        for s in &self.sockets {
            // ENOENT: the filter is gone already (the socket was shut down).
            if let Err(err) = socket2::SockRef::from(&s.fd).detach_filter()
                && err.raw_os_error() != Some(libc::ENOENT)
            {
                warn!(listener = ?s.local, error = %err, "detaching the socket filter failed");
            }
        }
        // XDP links are detached when `ebpf` drops.
    }
}

fn load_socket(trust: &TrustList, observe_only: bool) -> Result<Ebpf, KernelError> {
    let mut ebpf = load::object()?;
    maps::sync_trust(&mut ebpf, trust)?;
    maps::set_config(&mut ebpf, observe_only)?;
    let prog: &mut SocketFilter = program_mut(&mut ebpf, SOCKET_PROGRAM)?;
    prog.load()
        .map_err(|e| load::from_program_load(SOCKET_PROGRAM, e))?;
    Ok(ebpf)
}

/// The object's program `name`, as the program type `P`.
fn program_of<'a, P>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a P, KernelError>
where
    &'a P: TryFrom<&'a AyaProgram, Error = ProgramError>,
{
    let found = ebpf
        .program(name)
        .ok_or(KernelError::MissingInObject { name })?;
    <&P>::try_from(found).map_err(|source| KernelError::Program {
        program: name,
        action: "finding",
        source,
    })
}

/// [`program_of`], mutable (to load or attach it).
fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, KernelError>
where
    &'a mut P: TryFrom<&'a mut AyaProgram, Error = ProgramError>,
{
    let found = ebpf
        .program_mut(name)
        .ok_or(KernelError::MissingInObject { name })?;
    <&mut P>::try_from(found).map_err(|source| KernelError::Program {
        program: name,
        action: "finding",
        source,
    })
}

/// Loads one of the XDP programs into the object.
fn load_xdp(ebpf: &mut Ebpf, program: Program) -> Result<(), KernelError> {
    let name = program.name();
    let xdp: &mut Xdp = program_mut(ebpf, name)?;
    xdp.load().map_err(|e| load::from_program_load(name, e))
}

fn attach_xdp(xdp: &mut Xdp, interface: &str, attach: XdpMode) -> Result<XdpAttached, KernelError> {
    let try_mode = |xdp: &mut Xdp, mode: AyaXdpMode, name: &'static str| {
        xdp.attach(interface, mode)
            .map(|_| ())
            .map_err(|source| match source {
                ProgramError::UnknownInterface { .. } => KernelError::InterfaceNotFound {
                    interface: interface.to_string(),
                },
                source => KernelError::AttachXdp {
                    interface: interface.to_string(),
                    mode: name,
                    source,
                },
            })
    };
    match attach {
        XdpMode::Native => {
            try_mode(xdp, AyaXdpMode::Driver, "native").map(|()| XdpAttached::Native)
        }
        XdpMode::Generic => {
            try_mode(xdp, AyaXdpMode::Skb, "generic").map(|()| XdpAttached::Generic)
        }
        XdpMode::Auto => match try_mode(xdp, AyaXdpMode::Driver, "native") {
            Ok(()) => Ok(XdpAttached::Native),
            Err(KernelError::InterfaceNotFound { interface }) => {
                Err(KernelError::InterfaceNotFound { interface })
            }
            Err(err) => {
                info!(interface = %interface, error = %Chain(&err), "native XDP unavailable; trying generic");
                try_mode(xdp, AyaXdpMode::Skb, "generic").map(|()| XdpAttached::Generic)
            }
        },
    }
}

impl From<&KernelFilterMode> for Plan {
    fn from(mode: &KernelFilterMode) -> Plan {
        match mode {
            KernelFilterMode::Off => Plan::Off,
            KernelFilterMode::Socket => Plan::Socket,
            KernelFilterMode::Xdp {
                interfaces,
                xdp_mode,
            } => Plan::Xdp {
                interfaces: interfaces.clone(),
                attach: *xdp_mode,
            },
        }
    }
}

/// Starts the filter a config asks for, applying its `required` setting: `Ok(None)`
/// when there is no PROXY section or the mode is `off`, and when the filter failed to
/// load but is not required (logged at error, user space still checks every peer).
pub(crate) fn start_for(config: &Config) -> Result<Option<Kernel>, KernelError> {
    let Some(proxy) = &config.proxy_protocol else {
        return Ok(None);
    };
    let filter = &proxy.kernel_filter;
    let plan = Plan::from(&filter.mode);
    if plan == Plan::Off {
        return Ok(None);
    }
    match Kernel::start(
        plan,
        &proxy.trust,
        &config.listeners.ports(),
        filter.observe_only,
    ) {
        Ok(kernel) => Ok(Some(kernel)),
        Err(err) if !filter.required => {
            error!(error = %Chain(&err), "kernel filter not loaded (kernel_filter.required = false): only user space checks peers");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}
