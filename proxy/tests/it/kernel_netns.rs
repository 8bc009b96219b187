//! The kernel filter end to end on a real kernel: a namespace joined to the host by a
//! veth pair, a listener on the host end, clients in the namespace at a trusted and an
//! untrusted address, IPv4 and IPv6. For XDP (generic and native) and the socket filter
//! (eBPF and classic): the untrusted client's connect times out (no SYN-ACK, no RST),
//! the trusted one connects, counters move, reloads apply in place, and dropping the
//! filter detaches it; a filter detached from an accepted socket stays on its listener.
//! Reloads moving a port under an outsider's SYN flood never answer
//! it. XDP on a tun device (no link-layer header) through the binary: crafted SYNs
//! written into the device, SYN-ACKs read back out. Needs root (namespaces) and
//! CAP_BPF; skips loudly without.

use crate::common;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use common::frames::{ACK, SYN, Tcp4};
use common::netns::{Lab, TunLab, in_namespace};
use common::scrape::Scrape;
use common::testconfig::{App, KernelFilter, ProxyProtocol, TestConfig, Tls};
use common::wire::{inject_and_count_syn_acks, syn_fragments, syn4_checksummed};
use ipnet::IpNet;
use proxy::kernel::{
    Kernel, KernelError, Plan, Program, SocketFilterKind, XdpAttached, XdpMode, detach_inherited,
};
use proxy::trust::{Class, TrustList};
use proxy_common::Counter;

/// Long enough for a SYN-ACK over veth, short enough to keep the suite quick. A SYN
/// dropped by the filter gets no answer at all, so this is what the untrusted client
/// sees.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

fn lab() -> Option<Lab> {
    match Lab::new() {
        Ok(lab) => Some(lab),
        Err(why) => {
            common::skip(&format!("cannot build a network namespace: {why}"));
            None
        }
    }
}

fn start(plan: Plan, trust: &TrustList, ports: &[u16]) -> Option<Kernel> {
    match Kernel::start(plan, trust, ports, false) {
        Ok(kernel) => Some(kernel),
        Err(err @ (KernelError::Permission { .. } | KernelError::ObjectMissing)) => {
            common::skip(&format!("cannot load the eBPF object: {err}"));
            None
        }
        Err(err) => panic!("starting the kernel filter: {err:#?}"),
    }
}

fn host(addr: impl Into<IpAddr>) -> IpNet {
    IpNet::from(addr.into())
}

fn trust(nets: &[IpNet]) -> TrustList {
    TrustList::new(nets.iter().copied())
}

/// A listener that echoes what it reads, on its own threads; Drop stops it.
struct Echo {
    listener: TcpListener,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl Echo {
    fn bind(addr: SocketAddr) -> Echo {
        let listener = TcpListener::bind(addr).expect("binding the echo listener");
        let addr = listener.local_addr().expect("local addr");
        Echo {
            listener,
            addr,
            accept: None,
        }
    }

    /// Starts accepting (after any filter has been attached).
    fn serve(mut self) -> Echo {
        let listener = self.listener.try_clone().expect("cloning the listener");
        self.accept = Some(std::thread::spawn(move || {
            while let Ok((mut conn, _)) = listener.accept() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 512];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        if conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }));
        self
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        // Shutting a listening socket down wakes the blocked accept() with an error.
        let _ = socket2::SockRef::from(&self.listener).shutdown(std::net::Shutdown::Both);
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

fn roundtrip(stream: &mut TcpStream, msg: &[u8]) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    stream.write_all(msg).expect("write");
    let mut got = vec![0u8; msg.len()];
    stream.read_exact(&mut got).expect("echo");
    assert_eq!(got, msg);
}

fn assert_connects(lab: &Lab, src: IpAddr, dst: SocketAddr, case: &str) -> TcpStream {
    let mut stream = lab
        .connect(src, dst, CONNECT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{case}: {src} -> {dst} should connect: {e}"));
    roundtrip(&mut stream, case.as_bytes());
    stream
}

fn assert_times_out(lab: &Lab, src: IpAddr, dst: SocketAddr, case: &str) {
    match lab.connect(src, dst, CONNECT_TIMEOUT) {
        Ok(_) => panic!("{case}: {src} -> {dst} connected; its SYN should have been dropped"),
        // A RST would be ConnectionRefused: the filter must answer nothing at all.
        Err(e) => assert_eq!(
            e.kind(),
            io::ErrorKind::TimedOut,
            "{case}: {src} -> {dst}: {e}"
        ),
    }
}

fn counter(kernel: &Kernel, program: Program, c: Counter) -> u64 {
    kernel
        .counters(program)
        .expect("reading counters")
        .expect("the eBPF program is loaded")
        .get(c)
}

/// Socket mode on v4 and v6 listeners, then detach by drop.
fn socket_mode(plan: Plan, expect: SocketFilterKind) {
    let Some(lab) = lab() else { return };
    let list = trust(&[host(lab.trusted4), host(lab.trusted6)]);
    let Some(mut kernel) = start(plan, &list, &[]) else {
        return;
    };
    let s4 = Echo::bind(SocketAddr::new(lab.host4.into(), 0));
    let s6 = Echo::bind(SocketAddr::new(lab.host6.into(), 0));
    for s in [&s4, &s6] {
        let kind = kernel.protect_listener(&s.listener).expect("attaching");
        if kind != Some(expect) {
            return common::skip(&format!(
                "wanted a {expect:?} socket filter, got {kind:?} (no CAP_BPF?)"
            ));
        }
    }
    let (s4, s6) = (s4.serve(), s6.serve());
    assert_connects(&lab, lab.trusted4.into(), s4.addr, "trusted v4");
    assert_times_out(&lab, lab.untrusted4.into(), s4.addr, "untrusted v4");
    assert_connects(&lab, lab.trusted6.into(), s6.addr, "trusted v6");
    assert_times_out(&lab, lab.untrusted6.into(), s6.addr, "untrusted v6");
    if expect == SocketFilterKind::Ebpf {
        for c in [
            Counter::SynPassedV4,
            Counter::SynDroppedV4,
            Counter::SynPassedV6,
            Counter::SynDroppedV6,
        ] {
            assert!(
                counter(&kernel, Program::Socket, c) >= 1,
                "{c:?} should have moved"
            );
        }
    }
    // Dropping the filter detaches it: the untrusted client now gets in.
    drop(kernel);
    assert_connects(
        &lab,
        lab.untrusted4.into(),
        s4.addr,
        "untrusted v4 after detach",
    );
    assert_connects(
        &lab,
        lab.untrusted6.into(),
        s6.addr,
        "untrusted v6 after detach",
    );
}

#[test]
fn socket_filter_ebpf_drops_untrusted_syns_v4_and_v6() {
    socket_mode(Plan::Socket, SocketFilterKind::Ebpf);
}

#[test]
fn socket_filter_classic_drops_untrusted_syns_v4_and_v6() {
    socket_mode(Plan::ClassicSocket, SocketFilterKind::Classic);
}

/// An accepted socket inherits its listener's filter; `kernel::detach_inherited` (what
/// the accept loop calls with `detach_accepted`) takes it off that socket alone: a
/// second detach finds none and the connection still carries data, while the listener
/// keeps its filter (the next connection inherits it again, and the untrusted client
/// still times out). A socket accepted from an unfiltered listener carries none.
fn detaching_from_accepted_sockets(plan: Plan, expect: SocketFilterKind) {
    let Some(lab) = lab() else { return };
    let list = trust(&[host(lab.trusted4)]);
    let Some(mut kernel) = start(plan, &list, &[]) else {
        return;
    };
    let listener = TcpListener::bind(SocketAddr::new(lab.host4.into(), 0)).expect("binding");
    let addr = listener.local_addr().expect("local addr");
    let kind = kernel.protect_listener(&listener).expect("attaching");
    if kind != Some(expect) {
        return common::skip(&format!(
            "wanted a {expect:?} socket filter, got {kind:?} (no CAP_BPF?)"
        ));
    }
    let accept = |case: &str| {
        let client = lab
            .connect(lab.trusted4.into(), addr, CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{case}: the trusted client should connect: {e}"));
        let (accepted, _) = listener.accept().expect("accepting");
        (client, accepted)
    };
    let (mut client, mut first) = accept("first");
    assert!(
        detach_inherited(&first).expect("detaching from the accepted socket"),
        "the accepted socket should have inherited the {expect:?} filter"
    );
    assert!(
        !detach_inherited(&first).expect("detaching again"),
        "the filter should be gone from the accepted socket"
    );
    client.write_all(b"after detach").expect("client write");
    let mut got = [0u8; 12];
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    first
        .read_exact(&mut got)
        .expect("reading on the detached socket");
    assert_eq!(&got, b"after detach");
    let (_client, second) = accept("second");
    assert!(
        detach_inherited(&second).expect("detaching from the second socket"),
        "the listener should still carry its filter, for the next socket to inherit"
    );
    assert_times_out(
        &lab,
        lab.untrusted4.into(),
        addr,
        "untrusted v4 after detaches",
    );
    drop(kernel);
    let (_client, unfiltered) = accept("after the kernel filter is gone");
    assert!(
        !detach_inherited(&unfiltered).expect("detaching from an unfiltered socket"),
        "a socket accepted from an unfiltered listener carries no filter"
    );
}

#[test]
fn detaching_the_ebpf_filter_from_accepted_sockets_leaves_the_listener_filtered() {
    detaching_from_accepted_sockets(Plan::Socket, SocketFilterKind::Ebpf);
}

#[test]
fn detaching_the_classic_filter_from_accepted_sockets_leaves_the_listener_filtered() {
    detaching_from_accepted_sockets(Plan::ClassicSocket, SocketFilterKind::Classic);
}

fn xdp_mode(attach: XdpMode, expect: XdpAttached) {
    let Some(lab) = lab() else { return };
    let s4 = Echo::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
    let s6 = Echo::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0));
    let unprotected = Echo::bind(SocketAddr::new(lab.host4.into(), 0)).serve();
    let list = trust(&[host(lab.trusted4), host(lab.trusted6)]);
    let plan = Plan::Xdp {
        interfaces: vec![lab.host_if.clone()],
        attach,
    };
    let Some(kernel) = start(plan, &list, &[s4.addr.port(), s6.addr.port()]) else {
        return;
    };
    let (s4, s6) = (s4.serve(), s6.serve());
    assert_eq!(
        kernel.attachments(),
        vec![proxy::kernel::Attachment::Xdp {
            interface: lab.host_if.clone(),
            mode: expect,
            walk: proxy::kernel::XdpWalk::Ethernet,
        }]
    );
    assert!(lab.host_has_xdp(), "ip link should show the program");
    let d4 = SocketAddr::new(lab.host4.into(), s4.addr.port());
    let d6 = SocketAddr::new(lab.host6.into(), s6.addr.port());
    assert_connects(&lab, lab.trusted4.into(), d4, "trusted v4");
    assert_times_out(&lab, lab.untrusted4.into(), d4, "untrusted v4");
    assert_connects(&lab, lab.trusted6.into(), d6, "trusted v6");
    assert_times_out(&lab, lab.untrusted6.into(), d6, "untrusted v6");
    assert_connects(
        &lab,
        lab.untrusted4.into(),
        unprotected.addr,
        "untrusted v4 to an unprotected port",
    );
    for c in [
        Counter::SynPassedV4,
        Counter::SynDroppedV4,
        Counter::SynPassedV6,
        Counter::SynDroppedV6,
    ] {
        assert!(
            counter(&kernel, Program::Xdp, c) >= 1,
            "{c:?} should have moved"
        );
    }
    drop(kernel);
    assert!(!lab.host_has_xdp(), "dropping the filter must detach XDP");
    assert_connects(&lab, lab.untrusted4.into(), d4, "untrusted v4 after detach");
}

#[test]
fn xdp_generic_on_veth_drops_untrusted_syns_v4_and_v6() {
    xdp_mode(XdpMode::Generic, XdpAttached::Generic);
}

#[test]
fn xdp_native_on_veth_drops_untrusted_syns_v4_and_v6() {
    xdp_mode(XdpMode::Native, XdpAttached::Native);
}

/// Adding a prefix lets a refused client in; removing it refuses new connections
/// again while the connection made in between stays up.
/// RFC 1858's tiny fragment, padded as every NIC pads a 42-byte frame: a first
/// fragment with only 8 bytes of TCP (no flags), then the rest. The kernel trims the
/// pad, reassembles a SYN and would answer it; the filter must judge the first
/// fragment by its datagram (too short for a TCP header: dropped unless trusted).
fn padded_tiny_fragments(attach: XdpMode, expect: XdpAttached) {
    let Some(lab) = lab() else { return };
    let server = Echo::bind(SocketAddr::new(lab.host4.into(), 0));
    let port = server.addr.port();
    let list = trust(&[host(lab.trusted4)]);
    let plan = Plan::Xdp {
        interfaces: vec![lab.host_if.clone()],
        attach,
    };
    let Some(kernel) = start(plan, &list, &[port]) else {
        return;
    };
    let _server = server.serve();
    assert_eq!(
        kernel.attachments(),
        vec![proxy::kernel::Attachment::Xdp {
            interface: lab.host_if.clone(),
            mode: expect,
            walk: proxy::kernel::XdpWalk::Ethernet,
        }]
    );
    let wait = Duration::from_millis(1500);
    // The control: the same fragments from the trusted source make a SYN the kernel
    // answers, so a silence below means the filter, not a broken frame.
    let trusted = syn_fragments(lab.trusted4, lab.host4, 41000, port, 1, &[8]);
    let answered = inject_and_count_syn_acks(&lab, &trusted, lab.trusted4, port, wait, true)
        .expect("injecting the trusted fragments");
    assert_eq!(answered, 1, "the trusted fragment pair must be answered");
    let malformed_before = counter(&kernel, Program::Xdp, Counter::DroppedMalformed);
    let untrusted =
        |sport, id, cuts: &[usize]| syn_fragments(lab.untrusted4, lab.host4, sport, port, id, cuts);
    let in_order = untrusted(41001, 2, &[8]);
    let out_of_order: Vec<Vec<u8>> = untrusted(41002, 3, &[8]).into_iter().rev().collect();
    let three = untrusted(41003, 4, &[8, 16]);
    let pair = untrusted(41004, 5, &[8]);
    let duplicate = vec![pair[0].clone(), pair[0].clone(), pair[1].clone()];
    let variants = [
        ("in order", in_order),
        ("out of order", out_of_order),
        ("three fragments", three),
        ("a duplicate first fragment", duplicate),
    ];
    let mut first_fragments = 0;
    for (name, frames) in &variants {
        first_fragments += frames.iter().filter(|f| is_first_fragment(f)).count();
        let answered = inject_and_count_syn_acks(&lab, frames, lab.untrusted4, port, wait, false)
            .expect("injecting the untrusted fragments");
        assert_eq!(answered, 0, "{name}: the untrusted source got a SYN-ACK");
    }
    let malformed = counter(&kernel, Program::Xdp, Counter::DroppedMalformed) - malformed_before;
    assert_eq!(
        malformed, first_fragments as u64,
        "every untrusted tiny first fragment is counted as malformed"
    );
}

#[test]
fn xdp_generic_drops_padded_tiny_first_fragments() {
    padded_tiny_fragments(XdpMode::Generic, XdpAttached::Generic);
}

#[test]
fn xdp_native_drops_padded_tiny_first_fragments() {
    padded_tiny_fragments(XdpMode::Native, XdpAttached::Native);
}

fn reload(plan: Plan) {
    let Some(lab) = lab() else { return };
    let echo = Echo::bind(SocketAddr::new(lab.host4.into(), 0));
    let before = trust(&[host(lab.trusted4)]);
    let Some(mut kernel) = start(plan, &before, &[echo.addr.port()]) else {
        return;
    };
    kernel.protect_listener(&echo.listener).expect("attaching");
    let echo = echo.serve();
    assert_times_out(&lab, lab.untrusted4.into(), echo.addr, "before the reload");
    kernel
        .sync(&trust(&[host(lab.trusted4), host(lab.untrusted4)]))
        .expect("adding a prefix");
    let mut established =
        assert_connects(&lab, lab.untrusted4.into(), echo.addr, "after adding it");
    kernel.sync(&before).expect("removing the prefix");
    assert_times_out(&lab, lab.untrusted4.into(), echo.addr, "after removing it");
    roundtrip(&mut established, b"still up after the prefix was removed");
    assert_connects(&lab, lab.trusted4.into(), echo.addr, "trusted throughout");
}

#[test]
fn reload_in_place_with_the_ebpf_socket_filter() {
    reload(Plan::Socket);
}

#[test]
fn reload_in_place_with_the_classic_socket_filter() {
    reload(Plan::ClassicSocket);
}

#[test]
fn reload_in_place_with_xdp() {
    let Some(lab) = lab() else { return };
    let echo = Echo::bind(SocketAddr::new(lab.host4.into(), 0));
    let before = trust(&[host(lab.trusted4)]);
    let plan = Plan::Xdp {
        interfaces: vec![lab.host_if.clone()],
        attach: XdpMode::Generic,
    };
    let Some(mut kernel) = start(plan, &before, &[echo.addr.port()]) else {
        return;
    };
    let echo = echo.serve();
    assert_times_out(&lab, lab.untrusted4.into(), echo.addr, "before the reload");
    kernel
        .sync(&trust(&[host(lab.trusted4), host(lab.untrusted4)]))
        .expect("adding a prefix");
    let mut established =
        assert_connects(&lab, lab.untrusted4.into(), echo.addr, "after adding it");
    kernel.sync(&before).expect("removing the prefix");
    assert_times_out(&lab, lab.untrusted4.into(), echo.addr, "after removing it");
    roundtrip(&mut established, b"still up after the prefix was removed");
}

#[test]
fn unknown_interface_is_named_in_the_error() {
    let plan = Plan::Xdp {
        interfaces: vec!["tgnosuchif0".into()],
        attach: XdpMode::Auto,
    };
    match Kernel::start(plan, &trust(&[host(Ipv4Addr::LOCALHOST)]), &[80], false) {
        Err(KernelError::InterfaceNotFound { interface }) => assert_eq!(interface, "tgnosuchif0"),
        Err(err @ (KernelError::Permission { .. } | KernelError::ObjectMissing)) => {
            common::skip(&format!("cannot load the eBPF object: {err}"))
        }
        Err(other) => panic!("expected InterfaceNotFound, got {other:#?}"),
        Ok(_) => panic!("attaching to a missing interface succeeded"),
    }
}

/// A trustgate process in XDP mode on the lab's host end, listening on the host address.
fn xdp_gateway(lab: &Lab) -> common::gateway::Gateway {
    let config = TestConfig::new()
        .listen_port(0)
        .listen_v4(lab.host4)
        .default_app("app")
        .app("app", App::new("app.test").upstream("127.0.0.1:9"))
        .proxy_protocol(
            ProxyProtocol::trusting([format!("{}/32", lab.trusted4)]).kernel_filter(
                KernelFilter::mode("xdp")
                    .interfaces([&lab.host_if])
                    .xdp_mode("generic"),
            ),
        )
        .render();
    common::gateway::Gateway::start(&config, 1)
}

fn process_exit_detaches(signal: nix::sys::signal::Signal) {
    let Some(lab) = lab() else { return };
    let mut gw = xdp_gateway(&lab);
    let addr = gw.listeners[0];
    assert!(lab.host_has_xdp(), "trustgate should have attached XDP");
    assert_times_out(
        &lab,
        lab.untrusted4.into(),
        addr,
        "untrusted while trustgate runs",
    );
    gw.signal(signal);
    let exited = gw.wait_exit(Duration::from_secs(10));
    assert!(
        exited.is_some(),
        "trustgate did not exit on {signal}; log:\n{}",
        gw.log()
    );
    assert!(!lab.host_has_xdp(), "XDP still attached after {signal}");
    // Nothing listens any more, and nothing drops: the host answers with a RST.
    let err = lab
        .connect(lab.untrusted4.into(), addr, CONNECT_TIMEOUT)
        .expect_err("nothing listens");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn killed_process_leaves_no_program_attached() {
    process_exit_detaches(nix::sys::signal::Signal::SIGKILL);
}

#[test]
fn sigterm_drains_and_detaches() {
    process_exit_detaches(nix::sys::signal::Signal::SIGTERM);
}

/// Runs trustgate as `nobody` with no capabilities at all.
const UNPRIVILEGED: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
];

fn unprivileged_config(filter: KernelFilter) -> String {
    TestConfig::new()
        .listen_port(0)
        .listen_v4("127.0.0.1")
        .default_app("app")
        .app("app", App::new("app.test").upstream("127.0.0.1:9"))
        .proxy_protocol(ProxyProtocol::trusting(["127.0.0.1/32"]).kernel_filter(filter))
        .render()
}

fn can_drop_privileges() -> bool {
    if common::find_tool("setpriv").is_none() || !is_root() {
        common::skip("dropping privileges needs root and setpriv (util-linux)");
        return false;
    }
    true
}

/// Runs trustgate as root with CAP_NET_ADMIN alone (no CAP_BPF, no CAP_SYS_ADMIN): the
/// case of a container allowed to manage its network but not to load eBPF.
const NET_ADMIN_ONLY: &[&str] = &[
    "setpriv",
    "--bounding-set=-all,+net_admin",
    "--inh-caps=-all",
];

#[test]
fn with_net_admin_alone_socket_mode_falls_back_to_classic_bpf_and_still_drops() {
    if !can_drop_privileges() {
        return;
    }
    let mut gw = common::gateway::Gateway::start_under(
        NET_ADMIN_ONLY,
        &unprivileged_config(KernelFilter::mode("socket")),
        1,
    );
    let addr = gw.listeners[0];
    let kind = gw
        .events("socket trust filter attached")
        .first()
        .and_then(|e| common::gateway::field(e, "kind"));
    assert_eq!(kind.as_deref(), Some("Classic"), "log:\n{}", gw.log());
    // 127.0.0.2 is not trusted: its SYN is dropped by the classic filter.
    let err = common::connect_from(Ipv4Addr::new(127, 0, 0, 2).into(), addr, CONNECT_TIMEOUT)
        .expect_err("dropped");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).expect("127.0.0.1 is trusted");
    let _ = gw.wait_for(|_| false, Duration::from_millis(100));
    assert!(
        gw.events("refused: peer is not a trusted proxy").is_empty(),
        "the kernel, not user space, refused it"
    );
}

#[test]
fn without_any_capability_socket_mode_refuses_to_start_unless_not_required() {
    if !can_drop_privileges() {
        return;
    }
    // This kernel wants CAP_NET_ADMIN even for SO_ATTACH_FILTER.
    let (ok, stderr) = common::gateway::run_to_exit(
        UNPRIVILEGED,
        &unprivileged_config(KernelFilter::mode("socket")),
    );
    assert!(
        !ok,
        "started with no filter at all although it is required: {stderr}"
    );
    assert!(
        stderr.contains("CAP_NET_ADMIN") && stderr.contains("required = false"),
        "{stderr}"
    );
    // required = false: it serves, and user space alone refuses outsiders.
    let mut gw = common::gateway::Gateway::start_under(
        UNPRIVILEGED,
        &unprivileged_config(KernelFilter::mode("socket").required(false)),
        1,
    );
    let addr = gw.listeners[0];
    common::connect_from(Ipv4Addr::new(127, 0, 0, 2).into(), addr, CONNECT_TIMEOUT)
        .expect("no kernel filter: the SYN is answered");
    gw.wait_for(
        |e| common::gateway::message(e) == Some("refused: peer is not a trusted proxy"),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|| panic!("user space did not refuse it:\n{}", gw.log()));
}

#[test]
fn without_privileges_xdp_mode_refuses_to_start_and_names_the_capability() {
    if !can_drop_privileges() {
        return;
    }
    let filter = KernelFilter::mode("xdp")
        .interfaces(["lo"])
        .xdp_mode("generic");
    let (ok, stderr) =
        common::gateway::run_to_exit(UNPRIVILEGED, &unprivileged_config(filter.clone()));
    assert!(!ok, "started without CAP_BPF: {stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_NET_ADMIN"),
        "{stderr}"
    );
    // required = false: it runs, with the user-space check only.
    let gw = common::gateway::Gateway::start_under(
        UNPRIVILEGED,
        &unprivileged_config(filter.required(false)),
        1,
    );
    assert!(
        gw.seen.iter().any(|e| common::gateway::message(e)
            .is_some_and(|m| m.starts_with("kernel filter not loaded"))),
        "log:\n{}",
        gw.log()
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|u| u.split_whitespace().nth(1) == Some("0"))
            })
        })
        .unwrap_or(false)
}

/// An IPv4 packet with MF set and offset 0.
fn is_first_fragment(packet: &[u8]) -> bool {
    let field = u16::from_be_bytes([packet[6], packet[7]]);
    field & 0x2000 != 0 && field & 0x1fff == 0
}

/// Reloads moving `listen_port_tls` between two ports under the flood.
const MOVES: usize = 20;
/// The outsider's SYNs per second, both ports together: enough to land in any window
/// of a few hundred microseconds, bounded so the test stays a test on a shared machine.
const FLOOD_RATE: u32 = 20_000;
/// The flood stops by itself after this long, whatever happens to the test.
const FLOOD_LIMIT: Duration = Duration::from_secs(120);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// trustgate in XDP mode (`attach`) on the lab's host end: plain HTTP on a port of its
/// choosing, TLS on `tls_port`, `/metrics` on loopback, the namespace's trusted address
/// trusted and its untrusted one not.
fn moving_tls_config(
    lab: &Lab,
    upstream: SocketAddr,
    (cert, key): &(std::path::PathBuf, std::path::PathBuf),
    tls_port: u16,
    attach: &str,
) -> String {
    TestConfig::new()
        .listen_port(0)
        .listen_port_tls(tls_port)
        .listen_v4(lab.host4)
        .default_app("app")
        .app(
            "app",
            App::new("app.test")
                .tls(Tls::files(cert, key).https_redirection(false))
                .upstream(upstream),
        )
        .metrics("127.0.0.1:0")
        .proxy_protocol(
            ProxyProtocol::trusting([format!("{}/32", lab.trusted4)]).kernel_filter(
                KernelFilter::mode("xdp")
                    .interfaces([&lab.host_if])
                    .xdp_mode(attach),
            ),
        )
        .render()
}

/// Waits until the events logged since `mark` say the reload was applied and the
/// listener on `closed` has closed (in either order); panics on a failed reload.
fn await_reload(gw: &mut common::gateway::Gateway, mark: usize, closed: SocketAddr) {
    use common::gateway::{field, message};
    let deadline = std::time::Instant::now() + RELOAD_TIMEOUT;
    loop {
        let since = &gw.seen[mark..];
        if let Some(failed) = since
            .iter()
            .find(|e| message(e).is_some_and(|m| m.starts_with("reload ")))
        {
            panic!("the reload was not applied: {failed}\nlog:\n{}", gw.log());
        }
        let reloaded = since.iter().any(|e| message(e) == Some("config reloaded"));
        let gone = since.iter().any(|e| {
            message(e) == Some("listener closed")
                && field(e, "listener") == Some(closed.to_string())
        });
        if reloaded && gone {
            return;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "no reload outcome (or {closed} never closed) within {RELOAD_TIMEOUT:?}; log:\n{}",
            gw.log()
        );
        gw.wait_for(|_| true, left);
    }
}

/// `trustgate_kernel_syns_total{program="xdp",family="ipv4",outcome="dropped"}`.
fn xdp_dropped_v4(scrape: &common::scrape::Scrape) -> u64 {
    scrape
        .starting_with("trustgate_kernel_syns_total")
        .iter()
        .filter(|(series, _)| {
            ["program=\"xdp\"", "family=\"ipv4\"", "outcome=\"dropped\""]
                .iter()
                .all(|label| series.contains(label))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Moves `listen_port_tls` back and forth [`MOVES`] times under an outsider's SYN flood
/// to both ports, then tries a move to a port another socket holds: no SYN-ACK may ever
/// reach the outsider (a port listens only while protected), the trusted load balancer
/// is served on the new port after each move, and the failed move leaves no stray port
/// protected.
fn reload_moving_a_port_under_a_syn_flood(attach: &str, expect: &str) {
    let (Some(lab), Some(curl)) = (lab(), common::tool("curl")) else {
        return;
    };
    let (_upstream_rt, upstream) = common::upstream::demo_in_background();
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = common::certs::write_self_signed(dir.path(), "app.test");
    // Held by another socket throughout: a reload moving the port there must fail.
    let taken = Echo::bind(SocketAddr::new(lab.host4.into(), 0)).serve();
    let host = lab.host4.to_string();
    let ports = [
        common::peers::free_port(&host),
        common::peers::free_port(&host),
    ];
    assert_ne!(ports[0], ports[1], "two distinct free ports");
    let config = |port| moving_tls_config(&lab, upstream, &cert, port, attach);
    let mut gw = common::gateway::Gateway::start(&config(ports[0]), 2);
    let attached = gw
        .events("XDP trust filter attached")
        .first()
        .and_then(|e| common::gateway::field(e, "mode"));
    assert_eq!(attached.as_deref(), Some(expect), "log:\n{}", gw.log());
    let metrics = gw.metrics_listener();
    let scraper = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for scraping");
    let scrape = || scraper.block_on(common::scrape::scrape(metrics));
    let dropped_before = xdp_dropped_v4(&scrape());
    let served = |port: u16| {
        let resolve = format!("app.test:{port}:{}", lab.host4);
        let url = format!("https://app.test:{port}/");
        let out = lab
            .command(&curl)
            .args(["-sS", "-k", "--max-time", "10", "--haproxy-protocol"])
            .args([
                "--interface",
                &lab.trusted4.to_string(),
                "--resolve",
                &resolve,
            ])
            .args(["-o", "/dev/null", "-w", "%{http_code}", &url])
            .output()
            .expect("running curl in the namespace");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    assert_eq!(served(ports[0]), "200", "before any reload");
    let flood = common::synflood::Flood::start(
        &lab,
        common::synflood::Target {
            src: lab.untrusted4,
            dst: lab.host4,
            ports: ports.to_vec(),
            rate: FLOOD_RATE,
            limit: FLOOD_LIMIT,
        },
    );
    for i in 0..MOVES {
        let (old, new) = (ports[i % 2], ports[(i + 1) % 2]);
        let mark = gw.seen.len();
        std::fs::write(&gw.config_path, config(new)).expect("rewriting the config");
        gw.signal(nix::sys::signal::Signal::SIGHUP);
        await_reload(&mut gw, mark, SocketAddr::new(lab.host4.into(), old));
        assert_eq!(served(new), "200", "{attach}: after move {i} to port {new}");
    }
    // A move that cannot bind changes nothing: the current port stays protected (the
    // flood goes on), and the port it tried is not left protected (the outsider still
    // reaches the socket that holds it).
    std::fs::write(&gw.config_path, config(taken.addr.port())).expect("rewriting the config");
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    let failed = gw
        .wait_for(
            |e| {
                common::gateway::message(e).is_some_and(|m| {
                    m.starts_with("reload failed") || m.starts_with("config reloaded")
                })
            },
            RELOAD_TIMEOUT,
        )
        .and_then(|e| common::gateway::message(&e).map(String::from));
    assert!(
        failed
            .as_deref()
            .is_some_and(|m| m.starts_with("reload failed")),
        "{attach}: moving to a taken port: {failed:?}; log:\n{}",
        gw.log()
    );
    assert_connects(
        &lab,
        lab.untrusted4.into(),
        taken.addr,
        "untrusted to the port a failed reload tried",
    );
    assert_eq!(served(ports[0]), "200", "{attach}: after the failed reload");
    let outcome = flood.stop();
    let dropped = xdp_dropped_v4(&scrape()) - dropped_before;
    eprintln!(
        "{attach}: {MOVES} moves between ports {ports:?}: {} SYNs sent, {dropped} dropped by XDP, SYN-ACKs to the outsider by port: {:?}",
        outcome.sent, outcome.syn_acks
    );
    assert!(
        outcome.sent >= 2_000,
        "{attach}: the flood barely ran ({} SYNs)",
        outcome.sent
    );
    assert!(
        dropped >= outcome.sent / 4,
        "{attach}: XDP dropped only {dropped} of {} SYNs: the flood did not reach the filter",
        outcome.sent
    );
    assert_eq!(
        outcome.total_syn_acks(),
        0,
        "{attach}: the outsider got SYN-ACKs (by port: {:?}) across {MOVES} reloads",
        outcome.syn_acks
    );
}

#[test]
fn reload_moving_a_port_never_answers_an_outsider_with_generic_xdp() {
    reload_moving_a_port_under_a_syn_flood("generic", "Generic");
}

#[test]
fn reload_moving_a_port_never_answers_an_outsider_with_native_xdp() {
    reload_moving_a_port_under_a_syn_flood("native", "Native");
}

fn tun_lab() -> Option<TunLab> {
    match TunLab::new() {
        Ok(lab) => Some(lab),
        Err(why) => {
            common::skip(&format!(
                "cannot build a namespace with a tun device: {why}"
            ));
            None
        }
    }
}

/// How long a SYN that should get no answer is given to get one anyway. The namespace
/// answers a SYN it accepts within microseconds.
const NO_ANSWER_WAIT: Duration = Duration::from_millis(1500);
/// How long the control SYN may take to be answered.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// trustgate in XDP mode on the lab's tun device, run inside the lab's namespace,
/// listening on the device's address; only `trusted4` is trusted, not the device's /24.
fn tun_config(lab: &TunLab, xdp_mode: &str) -> String {
    tun_config_on(lab, &[&lab.tun_if], xdp_mode)
}

/// [`tun_config`] with the filter on `interfaces`.
fn tun_config_on(lab: &TunLab, interfaces: &[&str], xdp_mode: &str) -> String {
    TestConfig::new()
        .listen_port(0)
        .listen_v4(lab.local4)
        .default_app("app")
        .app("app", App::new("app.test").upstream("127.0.0.1:9"))
        .metrics("127.0.0.1:0")
        .proxy_protocol(
            ProxyProtocol::trusting([format!("{}/32", lab.trusted4)]).kernel_filter(
                KernelFilter::mode("xdp")
                    .interfaces(interfaces)
                    .xdp_mode(xdp_mode),
            ),
        )
        .render()
}

/// Runs trustgate (`args` before `-c CONFIG`) inside `ns` to completion, returning its
/// exit success, stdout and stderr.
fn run_in(ns: &str, args: &[&str], config: &str) -> (bool, String, String) {
    let (_dir, path) = common::gateway::write_config(config);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(env!("CARGO_BIN_EXE_trustgate"))
        .args(args)
        .arg("-c")
        .arg(&path)
        .output()
        .expect("running trustgate under ip netns exec");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether `packet` is the listener's answer (any TCP segment) to `src:sport`.
fn answer_to(lab: &TunLab, port: u16, src: Ipv4Addr, sport: u16) -> impl Fn(&[u8]) -> bool {
    let local = lab.local4;
    move |packet| {
        Tcp4::parse(packet)
            .is_some_and(|t| (t.src, t.sport, t.dst, t.dport) == (local, port, src, sport))
    }
}

/// The scrape of trustgate's `/metrics`, which listens on the namespace's loopback.
fn scrape_in(ns: &str, metrics: SocketAddr) -> Scrape {
    let text = in_namespace(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(proxy::admin::fetch(metrics))
            .map_err(io::Error::other)
    })
    .unwrap_or_else(|e| panic!("scraping http://{metrics}/metrics in {ns}: {e}"));
    Scrape::parse(&text)
}

#[test]
fn xdp_on_a_tun_device_walks_from_the_ip_header_and_drops_untrusted_syns() {
    let Some(lab) = tun_lab() else { return };
    let config = tun_config(&lab, "auto");
    let (ok, stdout, stderr) = run_in(lab.ns(), &["check"], &config);
    assert!(ok, "check: {stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "{}: link type 65534 (none: tun or WireGuard), walked from the IP header",
            lab.tun_if
        )),
        "check should say the tun device is walked from the IP header:\n{stdout}"
    );
    let mut gw =
        common::gateway::Gateway::start_under(&["ip", "netns", "exec", lab.ns()], &config, 1);
    let port = gw.listeners[0].port();
    let metrics = gw.metrics_listener();
    let attached = gw.events("XDP trust filter attached");
    let fields = attached.first().map(|e| {
        (
            common::gateway::field(e, "mode"),
            common::gateway::field(e, "walk"),
        )
    });
    assert_eq!(
        fields,
        Some((Some("Generic".into()), Some("Ip".into()))),
        "auto on a tun device means generic XDP with the IP walk; log:\n{}",
        gw.log()
    );

    // An untrusted source in the device's own subnet: dropped before the stack sees it,
    // so nothing at all comes back (no SYN-ACK, no RST).
    lab.send(&syn4_checksummed(lab.untrusted4, 40001, lab.local4, port));
    let answer = lab.recv(NO_ANSWER_WAIT, answer_to(&lab, port, lab.untrusted4, 40001));
    assert_eq!(
        answer.as_deref().and_then(Tcp4::parse),
        None,
        "the untrusted SYN was answered"
    );
    // The control: the same SYN from the trusted address is answered with a SYN-ACK, so
    // the checksums, the addressing and the route back out of the device are right.
    lab.send(&syn4_checksummed(lab.trusted4, 40002, lab.local4, port));
    let answer = lab
        .recv(ANSWER_WAIT, answer_to(&lab, port, lab.trusted4, 40002))
        .and_then(|p| Tcp4::parse(&p));
    assert_eq!(
        answer.map(|t| t.flags & (SYN | ACK)),
        Some(SYN | ACK),
        "the trusted SYN should get a SYN-ACK; log:\n{}",
        gw.log()
    );

    let counters = scrape_in(lab.ns(), metrics);
    let syns = |outcome: &str| {
        counters.get(&format!(
            "trustgate_kernel_syns_total{{program=\"xdp\",family=\"ipv4\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(
        (syns("dropped"), syns("passed")),
        (1, 1),
        "XDP counters: {:?}",
        counters.starting_with("trustgate_kernel")
    );
    let series = format!(
        "trustgate_kernel_filter_attached{{program=\"xdp\",interface=\"{}\",mode=\"generic\",walk=\"ip\"}}",
        lab.tun_if
    );
    assert_eq!(
        counters.get(&series),
        1,
        "{:?}",
        counters.starting_with("trustgate_kernel_filter_attached")
    );
}

#[test]
fn xdp_refuses_native_mode_on_a_tun_device() {
    let Some(lab) = tun_lab() else { return };
    let (ok, _, stderr) = run_in(lab.ns(), &[], &tun_config(&lab, "native"));
    assert!(!ok, "started native XDP on a tun device: {stderr}");
    assert!(
        stderr.contains(&format!("`{}`", lab.tun_if))
            && stderr.contains("xdp_mode = \"auto\" or \"generic\""),
        "{stderr}"
    );
}

#[test]
fn xdp_refuses_a_device_of_an_unsupported_link_type_and_check_says_why() {
    // ARPHRD_CAN: a tun device relabelled with TUNSETLINK, as no CAN driver is here.
    let lab = match TunLab::with_link_type(280) {
        Ok(lab) => lab,
        Err(why) => return common::skip(&format!("cannot build a relabelled tun device: {why}")),
    };
    let config = tun_config_on(&lab, &["lo", &lab.tun_if], "auto");
    let (ok, stdout, stderr) = run_in(lab.ns(), &["check"], &config);
    assert!(!ok, "check passed a CAN device:\n{stdout}");
    assert!(
        stdout.contains("lo: link type 772 (loopback), walked from the Ethernet header"),
        "{stdout}"
    );
    let refused = stdout
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with(&format!("{}: refused:", lab.tun_if))
        })
        .unwrap_or_else(|| panic!("no refusal line for {}:\n{stdout}", lab.tun_if));
    for part in [
        format!("`{}`", lab.tun_if),
        "280 (can)".into(),
        "mode = \"socket\"".into(),
    ] {
        assert!(refused.contains(&part), "{part:?} missing from: {refused}");
    }
    assert!(stderr.contains("would not start"), "{stderr}");
    // Starting for real is refused the same way, before anything is attached to `lo`.
    let (ok, _, stderr) = run_in(lab.ns(), &[], &config);
    assert!(!ok, "started XDP on a CAN device: {stderr}");
    assert!(
        stderr.contains(&format!("`{}`", lab.tun_if)) && stderr.contains("280 (can)"),
        "{stderr}"
    );
}

#[test]
fn crafted_syns_carry_checksums_that_verify() {
    let p = syn4_checksummed(
        Ipv4Addr::new(10, 0, 0, 2),
        40001,
        Ipv4Addr::new(10, 0, 0, 1),
        80,
    );
    // Summed with its checksum in place, a header sums to 0xffff: a checksum of 0.
    assert_eq!(common::frames::checksum(&p[..20], 0), 0, "IP header");
    let mut pseudo = p[12..20].to_vec();
    pseudo.extend_from_slice(&[0, common::frames::TCP, 0, 20]);
    assert_eq!(
        common::frames::checksum(&[pseudo, p[20..].to_vec()].concat(), 0),
        0,
        "TCP segment"
    );
    let parsed = Tcp4::parse(&p).expect("an IPv4 TCP segment");
    assert_eq!((parsed.sport, parsed.dport, parsed.flags), (40001, 80, SYN));
}

/// `proxy` as PROXY-class hosts, `direct` as DIRECT-class ones.
fn classed(proxy: &[IpAddr], direct: &[IpAddr]) -> TrustList {
    let p = proxy.iter().map(|a| (host(*a), Class::Proxy));
    let d = direct.iter().map(|a| (host(*a), Class::Direct));
    TrustList::with_classes(p.chain(d)).expect("no address in both classes")
}

/// The program whose counters `plan` keeps (none for classic BPF).
fn counted(plan: &Plan) -> Option<Program> {
    match plan {
        Plan::Xdp { .. } => Some(Program::Xdp),
        Plan::Socket => Some(Program::Socket),
        Plan::ClassicSocket | Plan::Off => None,
    }
}

/// The per-class counters of `program` (0 when it keeps none).
fn by_class(kernel: &Kernel, program: Option<Program>) -> (u64, u64) {
    match program {
        Some(p) => (
            counter(kernel, p, Counter::SynPassedProxy),
            counter(kernel, p, Counter::SynPassedDirect),
        ),
        None => (0, 0),
    }
}

/// Echo listeners on the host's v4 and v6 addresses behind `plan` with `list`; `None`
/// after a skip.
fn echo_pair(lab: &Lab, plan: &Plan, list: &TrustList) -> Option<(Kernel, Echo, Echo)> {
    let s4 = Echo::bind(SocketAddr::new(lab.host4.into(), 0));
    let s6 = Echo::bind(SocketAddr::new(lab.host6.into(), 0));
    let ports = match plan {
        Plan::Xdp { .. } => vec![s4.addr.port(), s6.addr.port()],
        _ => Vec::new(),
    };
    let mut kernel = start(plan.clone(), list, &ports)?;
    for s in [&s4, &s6] {
        let kind = kernel.protect_listener(&s.listener).expect("attaching");
        let want = match plan {
            Plan::Socket => Some(SocketFilterKind::Ebpf),
            Plan::ClassicSocket => Some(SocketFilterKind::Classic),
            _ => None,
        };
        if kind != want {
            common::skip(&format!(
                "wanted a {want:?} socket filter, got {kind:?} (no CAP_BPF?)"
            ));
            return None;
        }
    }
    Some((kernel, s4.serve(), s6.serve()))
}

/// PROXY-class and DIRECT-class sources both get through, each moving only its class's
/// counter; a source of neither class gets no SYN-ACK. IPv4 and IPv6.
fn both_classes_pass_the_filter(plan: impl Fn(&Lab) -> Plan) {
    let Some(lab) = lab() else { return };
    let plan = plan(&lab);
    let list = classed(
        &[lab.trusted4.into(), lab.trusted6.into()],
        &[lab.direct4.into(), lab.direct6.into()],
    );
    let Some((kernel, s4, s6)) = echo_pair(&lab, &plan, &list) else {
        return;
    };
    let program = counted(&plan);
    for (proxy, direct, untrusted, dst) in [
        (
            IpAddr::from(lab.trusted4),
            IpAddr::from(lab.direct4),
            IpAddr::from(lab.untrusted4),
            s4.addr,
        ),
        (
            lab.trusted6.into(),
            lab.direct6.into(),
            lab.untrusted6.into(),
            s6.addr,
        ),
    ] {
        let before = by_class(&kernel, program);
        assert_connects(&lab, proxy, dst, "proxy class");
        let after_proxy = by_class(&kernel, program);
        assert_connects(&lab, direct, dst, "direct class");
        let after_direct = by_class(&kernel, program);
        assert_times_out(&lab, untrusted, dst, "neither class");
        if program.is_some() {
            assert!(
                after_proxy.0 > before.0 && after_proxy.1 == before.1,
                "{proxy}: only the proxy counter moves: {before:?} -> {after_proxy:?}"
            );
            assert!(
                after_direct.1 > after_proxy.1 && after_direct.0 == after_proxy.0,
                "{direct}: only the direct counter moves: {after_proxy:?} -> {after_direct:?}"
            );
        }
        assert_eq!(
            by_class(&kernel, program),
            after_direct,
            "a dropped SYN is of no class"
        );
    }
}

#[test]
fn both_classes_pass_the_ebpf_socket_filter() {
    both_classes_pass_the_filter(|_| Plan::Socket);
}

#[test]
fn both_classes_pass_the_classic_socket_filter() {
    both_classes_pass_the_filter(|_| Plan::ClassicSocket);
}

#[test]
fn both_classes_pass_generic_xdp() {
    both_classes_pass_the_filter(|lab| Plan::Xdp {
        interfaces: vec![lab.host_if.clone()],
        attach: XdpMode::Generic,
    });
}

/// A reload moves `direct4` from PROXY to DIRECT and back, in place: its SYNs pass
/// throughout, counted under the class of the moment, and a connection made before each
/// move stays up.
fn reload_moves_a_host_between_classes(plan: impl Fn(&Lab) -> Plan) {
    let Some(lab) = lab() else { return };
    let plan = plan(&lab);
    let as_proxy = classed(&[lab.trusted4.into(), lab.direct4.into()], &[]);
    let as_direct = classed(&[lab.trusted4.into()], &[lab.direct4.into()]);
    let Some((mut kernel, s4, _s6)) = echo_pair(&lab, &plan, &as_proxy) else {
        return;
    };
    let program = counted(&plan);
    let src = IpAddr::from(lab.direct4);
    let mut established = assert_connects(&lab, src, s4.addr, "as a proxy");
    let (proxy0, direct0) = by_class(&kernel, program);
    kernel.sync(&as_direct).expect("moving it to direct");
    roundtrip(&mut established, b"still up after the move to direct");
    let mut second = assert_connects(&lab, src, s4.addr, "as a direct source");
    let (proxy1, direct1) = by_class(&kernel, program);
    assert_eq!(
        (proxy1, direct1 - direct0),
        (proxy0, 1),
        "counted as direct after the move"
    );
    kernel.sync(&as_proxy).expect("moving it back to proxy");
    roundtrip(&mut established, b"still up after the move back");
    roundtrip(&mut second, b"the direct-time connection too");
    assert_connects(&lab, src, s4.addr, "a proxy again");
    let (proxy2, direct2) = by_class(&kernel, program);
    assert_eq!(
        (proxy2 - proxy1, direct2),
        (1, direct1),
        "counted as proxy after the move back"
    );
    assert_times_out(
        &lab,
        lab.untrusted4.into(),
        s4.addr,
        "an outsider throughout",
    );
}

#[test]
fn reload_moves_a_host_between_classes_with_the_ebpf_socket_filter() {
    reload_moves_a_host_between_classes(|_| Plan::Socket);
}

#[test]
fn reload_moves_a_host_between_classes_with_generic_xdp() {
    reload_moves_a_host_between_classes(|lab| Plan::Xdp {
        interfaces: vec![lab.host_if.clone()],
        attach: XdpMode::Generic,
    });
}

/// trustgate on the lab's host end, v4 and v6 listeners, the demo upstream (which echoes
/// the request's headers), `/metrics` on loopback: `proxy` must send PROXY headers,
/// `direct` connect as themselves; `kernel_filter` is that table's body.
fn classes_config(
    lab: &Lab,
    upstream: SocketAddr,
    proxy: &[IpAddr],
    direct: &[IpAddr],
    kernel_filter: KernelFilter,
) -> String {
    TestConfig::new()
        .listen_port(0)
        .listen_v4(lab.host4)
        .listen_v6(lab.host6)
        .default_app("app")
        .app("app", App::new("app.test").upstream(upstream))
        .metrics("127.0.0.1:0")
        .proxy_protocol(
            ProxyProtocol::trusting(proxy)
                .direct_sources(direct)
                // Generous: these tests are about classes, not timing, on a shared machine.
                .timeout(1000)
                .kernel_filter(kernel_filter),
        )
        .render()
}

fn socket_filter_table(_lab: &Lab) -> KernelFilter {
    KernelFilter::mode("socket")
}

fn generic_xdp_table(lab: &Lab) -> KernelFilter {
    KernelFilter::mode("xdp")
        .interfaces([&lab.host_if])
        .xdp_mode("generic")
}

/// The gateway's listener of `dst`'s family.
fn listener_for(gw: &common::gateway::Gateway, v6: bool) -> SocketAddr {
    *gw.listeners
        .iter()
        .find(|a| a.is_ipv6() == v6)
        .expect("a listener of each family")
}

/// A keep-alive connection from `src`, opening with a PROXY v1 header naming `named`
/// when given.
fn http_from(
    lab: &Lab,
    src: IpAddr,
    dst: SocketAddr,
    named: Option<SocketAddr>,
) -> common::http1::Conn {
    let stream = lab
        .connect(src, dst, CONNECT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{src} -> {dst} should connect: {e}"));
    common::http1::Conn::new(stream, named.map(|n| (n, dst))).expect("writing the header")
}

/// `GET /` on `conn`: asserts a 200 and that the upstream was told `client` (the demo
/// upstream echoes the headers it got).
fn assert_served_as(conn: &mut common::http1::Conn, client: IpAddr, case: &str) {
    let (status, body) = conn
        .get("/")
        .unwrap_or_else(|e| panic!("{case}: no answer: {e}"));
    assert_eq!(status, 200, "{case}: {body}");
    let real_ip = format!("x-real-ip: {client}\n");
    let xff = format!("x-forwarded-for: {client}\n");
    assert!(
        body.contains(&real_ip) && body.contains(&xff),
        "{case}: the upstream should have been told {client}; it got:\n{body}"
    );
}

fn assert_refused(conn: &mut common::http1::Conn, case: &str) {
    if let Ok(answer) = conn.get("/") {
        panic!("{case}: should have been refused, got {answer:?}");
    }
}

fn scrape_of(gw: &mut common::gateway::Gateway) -> common::scrape::Scrape {
    let metrics = gw.metrics_listener();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for scraping")
        .block_on(common::scrape::scrape(metrics))
}

/// TCP health checks per family in [`classes_end_to_end`].
const PROBES_PER_FAMILY: u64 = 10;

/// The trustgate binary with both classes, IPv4 and IPv6: a trusted load balancer's
/// header names the client the upstream is told of (also when it comes 300 ms after
/// connect); connect-and-close probes from it are health checks, not header errors; a direct source without a header is
/// the client; a direct source that opens with a header is refused and counted; an
/// outsider gets no SYN-ACK. The kernel counts passed SYNs by class.
fn classes_end_to_end(table: fn(&Lab) -> KernelFilter, program: &str) {
    let Some(lab) = lab() else { return };
    let (_upstream_rt, upstream) = common::upstream::demo_in_background();
    let config = classes_config(
        &lab,
        upstream,
        &[lab.trusted4.into(), lab.trusted6.into()],
        &[lab.direct4.into(), lab.direct6.into()],
        table(&lab),
    );
    let mut gw = common::gateway::Gateway::start(&config, 2);
    let named4: SocketAddr = "203.0.113.50:4000".parse().expect("literal");
    let named6: SocketAddr = "[2001:db8:c::50]:4000".parse().expect("literal");
    for (proxy, direct, untrusted, named) in [
        (
            IpAddr::from(lab.trusted4),
            IpAddr::from(lab.direct4),
            IpAddr::from(lab.untrusted4),
            named4,
        ),
        (
            lab.trusted6.into(),
            lab.direct6.into(),
            lab.untrusted6.into(),
            named6,
        ),
    ] {
        let dst = listener_for(&gw, proxy.is_ipv6());
        let mut lb = http_from(&lab, proxy, dst, Some(named));
        assert_served_as(&mut lb, named.ip(), "a load balancer's header");
        // AWS NLB sends the header with the client's first data: 300 ms after connect
        // is served under the default 50 ms `timeout`, which counts from the first byte.
        let stream = lab
            .connect(proxy, dst, CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{proxy} -> {dst} should connect: {e}"));
        std::thread::sleep(Duration::from_millis(300));
        let mut late =
            common::http1::Conn::new(stream, Some((named, dst))).expect("writing the header");
        assert_served_as(&mut late, named.ip(), "a header 300 ms after connect");
        // TCP health checks from the load balancer: connect, close, no byte.
        for _ in 0..PROBES_PER_FAMILY {
            drop(
                lab.connect(proxy, dst, CONNECT_TIMEOUT)
                    .unwrap_or_else(|e| panic!("a probe {proxy} -> {dst}: {e}")),
            );
        }
        let mut itself = http_from(&lab, direct, dst, None);
        assert_served_as(&mut itself, direct, "a direct source without a header");
        assert_served_as(&mut itself, direct, "its next request on the connection");
        let mut spoofing = http_from(&lab, direct, dst, Some(named));
        assert_refused(&mut spoofing, "a direct source naming another client");
        assert_times_out(&lab, untrusted, dst, "a source of neither class");
    }
    let no_data = |s: &common::scrape::Scrape| {
        s.get("trustgate_connections_closed_total{reason=\"no_data\"}")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut scrape = scrape_of(&mut gw);
    while no_data(&scrape) < 2 * PROBES_PER_FAMILY && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        scrape = scrape_of(&mut gw);
    }
    assert_eq!(
        no_data(&scrape),
        2 * PROBES_PER_FAMILY,
        "every probe counted as a health check"
    );
    assert_eq!(
        scrape.refused("direct_proxy_header"),
        2,
        "one refusal per family"
    );
    let passed = |class: &str| {
        scrape.get(&format!(
            "trustgate_kernel_syns_passed_total{{program=\"{program}\",class=\"{class}\"}}"
        ))
    };
    assert!(passed("proxy") >= 2, "proxy SYNs: {}", passed("proxy"));
    assert!(passed("direct") >= 4, "direct SYNs: {}", passed("direct"));
    assert_eq!(
        scrape.refused("untrusted_peer"),
        0,
        "the kernel dropped them"
    );
    assert_eq!(
        scrape.header_errors_by_kind(),
        Default::default(),
        "no header errors"
    );
}

#[test]
fn trustgate_serves_both_classes_and_refuses_a_direct_header_with_the_socket_filter() {
    classes_end_to_end(socket_filter_table, "socket");
}

#[test]
fn trustgate_serves_both_classes_and_refuses_a_direct_header_with_generic_xdp() {
    classes_end_to_end(generic_xdp_table, "xdp");
}

/// Rewrites the config and reloads it with SIGHUP; panics unless it is applied.
fn reload_to(gw: &mut common::gateway::Gateway, config: &str) {
    use common::gateway::message;
    std::fs::write(&gw.config_path, config).expect("rewriting the config");
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    let outcome = gw
        .wait_for(
            |e| message(e).is_some_and(|m| m == "config reloaded" || m.starts_with("reload ")),
            RELOAD_TIMEOUT,
        )
        .and_then(|e| message(&e).map(String::from));
    assert_eq!(
        outcome.as_deref(),
        Some("config reloaded"),
        "log:\n{}",
        gw.log()
    );
}

/// A reload moves `direct4` from trusted_proxies to direct_sources and back: each time
/// new connections follow its new class at once, and the connections made before, of
/// either class, go on being served as they were.
fn reload_moves_a_host_between_classes_end_to_end(table: fn(&Lab) -> KernelFilter) {
    let Some(lab) = lab() else { return };
    let (_upstream_rt, upstream) = common::upstream::demo_in_background();
    let moving = IpAddr::from(lab.direct4);
    let as_proxy = classes_config(
        &lab,
        upstream,
        &[lab.trusted4.into(), moving],
        &[],
        table(&lab),
    );
    let as_direct = classes_config(
        &lab,
        upstream,
        &[lab.trusted4.into()],
        &[moving],
        table(&lab),
    );
    let mut gw = common::gateway::Gateway::start(&as_proxy, 2);
    let dst = listener_for(&gw, false);
    let named: SocketAddr = "203.0.113.60:4000".parse().expect("literal");
    let mut relayed = http_from(&lab, moving, dst, Some(named));
    assert_served_as(&mut relayed, named.ip(), "as a load balancer");

    reload_to(&mut gw, &as_direct);
    assert_served_as(
        &mut relayed,
        named.ip(),
        "the relayed connection after the move",
    );
    let mut itself = http_from(&lab, moving, dst, None);
    assert_served_as(&mut itself, moving, "as a direct source");
    assert_refused(
        &mut http_from(&lab, moving, dst, Some(named)),
        "a header once direct",
    );

    reload_to(&mut gw, &as_proxy);
    assert_served_as(
        &mut relayed,
        named.ip(),
        "the relayed connection, moved back",
    );
    assert_served_as(
        &mut itself,
        moving,
        "the direct connection after the move back",
    );
    assert_refused(
        &mut http_from(&lab, moving, dst, None),
        "no header once a load balancer again",
    );
    let mut again = http_from(&lab, moving, dst, Some(named));
    assert_served_as(&mut again, named.ip(), "a load balancer again");
    let scrape = scrape_of(&mut gw);
    assert_eq!(scrape.refused("direct_proxy_header"), 1);
    let header_errors: u64 = scrape.header_errors_by_kind().values().sum();
    assert_eq!(header_errors, 1, "the headerless one, moved back");
}

#[test]
fn reload_moves_a_host_between_classes_end_to_end_with_the_socket_filter() {
    reload_moves_a_host_between_classes_end_to_end(socket_filter_table);
}

#[test]
fn reload_moves_a_host_between_classes_end_to_end_with_generic_xdp() {
    reload_moves_a_host_between_classes_end_to_end(generic_xdp_table);
}
