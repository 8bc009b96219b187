//! Hand-made IPv4 packets on a real wire: SYN segments and fragments with real
//! checksums (the kernel checks them), recognising a SYN-ACK as a raw socket reads it,
//! and [`inject_and_count_syn_acks`]: a namespace thread writes whole Ethernet frames
//! (padded as a NIC pads them) to its end of a [`Lab`]'s veth pair with an AF_PACKET
//! socket and counts the SYN-ACKs that come back. For the kernel tests that judge what
//! the filter lets the kernel answer, beyond what `connect()` can send (`synflood` sends
//! its SYNs with the same builders).

use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::frames::checksum;
use super::netns::Lab;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const IPPROTO_TCP: u8 = 6;

/// A TCP SYN to `dst` from `src`, as IPv4 fragments of one datagram cut at each of
/// `cuts` (byte offsets into the 20-byte TCP header, multiples of 8). Each fragment is
/// returned as an IP packet (no link header), first to last.
pub fn syn_fragments(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    id: u16,
    cuts: &[usize],
) -> Vec<Vec<u8>> {
    let tcp = tcp_syn(src, dst, sport, dport, 0x1234_5678);
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(tcp.len());
    bounds
        .windows(2)
        .map(|w| {
            let offset_units = u16::try_from(w[0] / 8).expect("a small offset");
            let more = w[1] < tcp.len();
            ipv4(src, dst, id, more, offset_units, &tcp[w[0]..w[1]])
        })
        .collect()
}

/// An IPv4 packet carrying `payload` (TCP), with a correct header checksum.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    more: bool,
    offset_units: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    let total = u16::try_from(20 + payload.len()).expect("a small packet");
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&((u16::from(more) << 13) | offset_units).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&p, 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A 20-byte TCP SYN from `src:sport` to `dst:dport`, checksummed.
pub fn tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> [u8; 20] {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = TCP_SYN;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, IPPROTO_TCP, 0, 20]);
    pseudo.extend_from_slice(&t);
    let sum = checksum(&pseudo, 0);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    t
}

/// An IPv4 SYN from `src:sport` to `dst:dport` with correct IP and TCP checksums, as a
/// stack would send it: what a real kernel accepts from a tun device.
pub fn syn4_checksummed(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    ipv4(src, dst, 0, false, 0, &tcp_syn(src, dst, sport, dport, 1))
}

/// The source port of `packet` (IPv4, as a raw socket reads it) when it is a SYN-ACK
/// from `host` to `outsider`.
pub fn syn_ack_port(packet: &[u8], host: Ipv4Addr, outsider: Ipv4Addr) -> Option<u16> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let tcp = packet.get(ihl..)?;
    let from = Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(12..16)?).ok()?);
    let to = Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(16..20)?).ok()?);
    let flags = *tcp.get(13)?;
    let is_syn_ack = flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
    (*packet.get(9)? == IPPROTO_TCP && from == host && to == outsider && is_syn_ack)
        .then(|| u16::from_be_bytes([tcp[0], tcp[1]]))
}

/// Writes each of `packets` from the namespace's end of the pair as an Ethernet frame
/// to the host end, padded to Ethernet's 60-byte minimum as a NIC pads it, and counts
/// the SYN-ACKs from `from_port` that reach `to` within `wait` (stopping at the first
/// when `until_first`).
pub fn inject_and_count_syn_acks(
    lab: &Lab,
    packets: &[Vec<u8>],
    to: Ipv4Addr,
    from_port: u16,
    wait: Duration,
    until_first: bool,
) -> io::Result<usize> {
    let ns_path = lab.ns_path();
    let host_mac = mac(&std::fs::read_to_string(format!(
        "/sys/class/net/{}/address",
        lab.host_if
    ))?)?;
    let ns_if = lab.ns_if.clone();
    std::thread::scope(|s| {
        s.spawn(move || {
            Lab::enter(&ns_path)?;
            let capture = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
            let sender = raw_socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
            let name = std::ffi::CString::new(ns_if.clone()).map_err(io::Error::other)?;
            // SAFETY: `name` is a NUL-terminated string that outlives the call.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let ns_mac = ns_mac(&ns_if)?;
            for packet in packets {
                let mut frame = Vec::with_capacity(60);
                frame.extend_from_slice(&host_mac);
                frame.extend_from_slice(&ns_mac);
                frame.extend_from_slice(&0x0800u16.to_be_bytes());
                frame.extend_from_slice(packet);
                frame.resize(frame.len().max(60), 0);
                send_frame(&sender, ifindex, &frame)?;
            }
            count_syn_acks(capture, lab.host4, to, from_port, wait, until_first)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the injecting thread panicked")))
    })
}

fn raw_socket(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send_frame(sender: &OwnedFd, ifindex: u32, frame: &[u8]) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_ll is a valid value of the type.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = i32::try_from(ifindex).map_err(io::Error::other)?;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: `frame` is valid for `frame.len()` bytes and `addr` is a sockaddr_ll of
    // the size passed.
    let sent = unsafe {
        libc::sendto(
            sender.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn count_syn_acks(
    mut capture: Socket,
    host: Ipv4Addr,
    to: Ipv4Addr,
    from_port: u16,
    wait: Duration,
    until_first: bool,
) -> io::Result<usize> {
    let deadline = Instant::now() + wait;
    let mut count = 0;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(count);
        }
        capture.set_read_timeout(Some(left))?;
        let n = match capture.read(&mut buf) {
            Ok(n) => n,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(err) => return Err(err),
        };
        if syn_ack_port(&buf[..n], host, to) == Some(from_port) {
            count += 1;
            if until_first {
                return Ok(count);
            }
        }
    }
}

fn ns_mac(ns_if: &str) -> io::Result<[u8; 6]> {
    // This thread is in the namespace, but sysfs shows the mount's: ask the kernel.
    let probe = raw_socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: an all-zero ifreq is a valid value of the type.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ns_if.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads `ifr_name` and writes `ifr_hwaddr` of the ifreq
    // passed, which lives across the call.
    if unsafe { libc::ioctl(probe.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl succeeded, so the union holds `ifr_hwaddr`.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

fn mac(text: &str) -> io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(io::Error::other(format!("not a MAC address: {text:?}")));
    }
    for (dst, part) in mac.iter_mut().zip(parts) {
        *dst = u8::from_str_radix(part, 16).map_err(io::Error::other)?;
    }
    Ok(mac)
}
