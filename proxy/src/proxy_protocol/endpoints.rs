//! How a parsed header keeps its endpoints: flat, in the v2 address block's layout
//! (addresses, then ports, network byte order), into which v1 lines are encoded, and
//! decoded into `SocketAddr`s only when asked for. Internal to the module.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Addresses, Fallback};

/// What the endpoints are, and in `block`, the addresses and ports when they are TCP.
///
/// A struct of a tag and an 8-byte aligned array rather than an enum with array
/// payloads: LLVM copied the enum's payload in odd-offset pieces, and reading it back
/// stalled on store forwarding (a third of the v2 parse time, measured with `perf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Endpoints {
    kind: Kind,
    /// The first 12 bytes for TCP4, all 36 for TCP6; zero elsewhere.
    block: Block,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Unspecified,
    Fallback(Fallback),
    Tcp4,
    Tcp6,
}

/// Bytes of the INET and INET6 address blocks.
pub(super) const TCP4_BYTES: usize = 12;
pub(super) const TCP6_BYTES: usize = 36;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(align(8))]
struct Block([u8; TCP6_BYTES]);

impl Endpoints {
    /// The connection's own endpoints apply.
    pub(super) const UNSPECIFIED: Self = Self::new(Kind::Unspecified);

    const fn new(kind: Kind) -> Self {
        Self {
            kind,
            block: Block([0; TCP6_BYTES]),
        }
    }

    pub(super) const fn fallback(reason: Fallback) -> Self {
        Self::new(Kind::Fallback(reason))
    }

    /// From a v2 INET block.
    pub(super) fn wire4(wire: &[u8; TCP4_BYTES]) -> Self {
        let mut endpoints = Self::new(Kind::Tcp4);
        endpoints.block.0[..TCP4_BYTES].copy_from_slice(wire);
        endpoints
    }

    /// From a v2 INET6 block.
    pub(super) fn wire6(wire: &[u8; TCP6_BYTES]) -> Self {
        Self {
            kind: Kind::Tcp6,
            block: Block(*wire),
        }
    }

    pub(super) fn tcp4(
        source: Ipv4Addr,
        destination: Ipv4Addr,
        source_port: u16,
        destination_port: u16,
    ) -> Self {
        let mut wire = [0; TCP4_BYTES];
        wire[..4].copy_from_slice(&source.octets());
        wire[4..8].copy_from_slice(&destination.octets());
        wire[8..10].copy_from_slice(&source_port.to_be_bytes());
        wire[10..].copy_from_slice(&destination_port.to_be_bytes());
        Self::wire4(&wire)
    }

    pub(super) fn tcp6(
        source: Ipv6Addr,
        destination: Ipv6Addr,
        source_port: u16,
        destination_port: u16,
    ) -> Self {
        let mut wire = [0; TCP6_BYTES];
        wire[..16].copy_from_slice(&source.octets());
        wire[16..32].copy_from_slice(&destination.octets());
        wire[32..34].copy_from_slice(&source_port.to_be_bytes());
        wire[34..].copy_from_slice(&destination_port.to_be_bytes());
        Self::wire6(&wire)
    }

    /// The endpoint at `index` (0: source, 1: destination), when TCP.
    #[inline]
    pub(super) fn endpoint(&self, index: usize) -> Option<SocketAddr> {
        match self.kind {
            Kind::Tcp4 => endpoint::<4>(&self.block.0, index),
            Kind::Tcp6 => endpoint::<16>(&self.block.0, index),
            Kind::Unspecified | Kind::Fallback(_) => None,
        }
    }

    #[inline]
    pub(super) fn fallback_reason(&self) -> Option<Fallback> {
        match self.kind {
            Kind::Fallback(reason) => Some(reason),
            Kind::Unspecified | Kind::Tcp4 | Kind::Tcp6 => None,
        }
    }

    pub(super) fn addresses(&self) -> Addresses {
        match (self.kind, self.endpoint(0), self.endpoint(1)) {
            (Kind::Fallback(reason), ..) => Addresses::Fallback(reason),
            (_, Some(source), Some(destination)) => Addresses::Tcp {
                source,
                destination,
            },
            _ => Addresses::Unspecified,
        }
    }
}

/// Address `index` and its port from a block of two `N`-byte addresses and two ports.
#[inline]
fn endpoint<const N: usize>(block: &[u8], index: usize) -> Option<SocketAddr>
where
    IpAddr: From<[u8; N]>,
{
    let ip = <[u8; N]>::try_from(block.get(index * N..(index + 1) * N)?).ok()?;
    let port = <[u8; 2]>::try_from(block.get(2 * N + 2 * index..2 * N + 2 * index + 2)?).ok()?;
    Some(SocketAddr::new(IpAddr::from(ip), u16::from_be_bytes(port)))
}
