//! What an interface's link type (its ARPHRD number, read from
//! `/sys/class/net/<if>/type`) means for XDP: whether its frames are walked from the
//! Ethernet header, from the IP header, or cannot be judged at all, and in which XDP
//! mode. Reads sysfs only; loading and attaching the programs is `super`'s business.
//! A link type not listed here is refused, never guessed: a wrong walk passes every SYN.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::KernelError;
use crate::config::XdpMode;

/// ARPHRD_ETHER: Ethernet, and everything that frames like it (veth, VLAN devices,
/// bridges, bonds, macvlan, tap, gretap, vxlan).
const ARPHRD_ETHER: u16 = 1;
/// ARPHRD_LOOPBACK: `lo`, whose frames carry a zeroed Ethernet header.
const ARPHRD_LOOPBACK: u16 = 772;
/// ARPHRD_NONE: tun devices and WireGuard.
const ARPHRD_NONE: u16 = 65534;
const ARPHRD_TUNNEL: u16 = 768;
const ARPHRD_TUNNEL6: u16 = 769;
const ARPHRD_SIT: u16 = 776;
const ARPHRD_IPGRE: u16 = 778;
const ARPHRD_IP6GRE: u16 = 823;
const ARPHRD_PPP: u16 = 512;
const ARPHRD_RAWIP: u16 = 519;

/// How the XDP program finds the IP header of a device's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpWalk {
    /// From an Ethernet header (with up to two VLAN tags): the `XDP_PROGRAM`.
    Ethernet,
    /// From the IP header, the device having no link-layer header: the
    /// `XDP_L3_PROGRAM`, attached in generic mode only.
    Ip,
}

impl fmt::Display for XdpWalk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpWalk::Ethernet => "walked from the Ethernet header",
            XdpWalk::Ip => "walked from the IP header (no link-layer header; generic XDP)",
        })
    }
}

/// A device's link type: the kernel's ARPHRD number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkType(pub u16);

impl LinkType {
    /// The walk this link type's frames need, or `None` when XDP cannot judge them.
    pub(crate) fn walk(self) -> Option<XdpWalk> {
        match self.0 {
            ARPHRD_ETHER | ARPHRD_LOOPBACK => Some(XdpWalk::Ethernet),
            ARPHRD_NONE | ARPHRD_TUNNEL | ARPHRD_TUNNEL6 | ARPHRD_SIT | ARPHRD_IPGRE
            | ARPHRD_IP6GRE | ARPHRD_PPP | ARPHRD_RAWIP => Some(XdpWalk::Ip),
            _ => None,
        }
    }

    /// The kernel's name for it (`ARPHRD_*` without the prefix), where known.
    fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            ARPHRD_ETHER => "ether",
            ARPHRD_LOOPBACK => "loopback",
            ARPHRD_NONE => "none: tun or WireGuard",
            ARPHRD_TUNNEL => "tunnel: IP-in-IP",
            ARPHRD_TUNNEL6 => "tunnel6: IP-in-IPv6",
            ARPHRD_SIT => "sit",
            ARPHRD_IPGRE => "ipgre",
            ARPHRD_IP6GRE => "ip6gre",
            ARPHRD_PPP => "ppp",
            ARPHRD_RAWIP => "rawip",
            32 => "infiniband",
            280 => "can",
            801 => "ieee80211",
            803 => "ieee80211_radiotap",
            804 => "ieee802154",
            824 => "netlink",
            825 => "6lowpan",
            _ => return None,
        })
    }
}

impl fmt::Display for LinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} ({name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Reads `interface`'s link type from sysfs. sysfs shows the network namespace it was
/// mounted in, which is this process's own under `ip netns exec` and in containers;
/// attaching (by name, through netlink) uses the process's namespace.
pub(crate) fn link_type(interface: &str) -> Result<LinkType, KernelError> {
    let not_found = || KernelError::InterfaceNotFound {
        interface: interface.to_owned(),
    };
    let path = sysfs_type(interface).ok_or_else(not_found)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(not_found()),
        Err(source) => {
            return Err(KernelError::LinkTypeUnreadable {
                interface: interface.to_owned(),
                path,
                source,
            });
        }
    };
    text.trim()
        .parse()
        .map(LinkType)
        .map_err(|_| KernelError::LinkTypeUnreadable {
            interface: interface.to_owned(),
            path,
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected an ARPHRD number, found {:?}", text.trim()),
            ),
        })
}

/// What XDP mode does with one interface on this host: its link type, the walk its
/// frames get, the mode it is attached in, and what is known to keep native XDP off it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpInterface {
    pub(crate) link_type: LinkType,
    pub(crate) walk: XdpWalk,
    pub(crate) attach: XdpMode,
    pub(crate) native_limit: Option<NativeLimit>,
}

impl fmt::Display for XdpInterface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link type {}, {}", self.link_type, self.walk)?;
        if let Some(limit) = self.native_limit {
            write!(f, "; {limit}")?;
        }
        Ok(())
    }
}

/// A driver's documented condition for native XDP that this interface does not meet, so
/// that `xdp_mode = "auto"` will attach generic (and `"native"` fail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NativeLimit {
    /// AWS ENA: native XDP needs an MTU of at most [`ENA_XDP_MAX_MTU`] (and at most half
    /// the channels in use, which is not read here).
    EnaMtu { mtu: u32 },
}

/// The largest MTU at which the ENA driver takes a native XDP program (its
/// documentation, "ENA Linux Driver ... XDP").
pub(crate) const ENA_XDP_MAX_MTU: u32 = 3498;

impl fmt::Display for NativeLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NativeLimit::EnaMtu { mtu } => write!(
                f,
                "ENA driver with MTU {mtu}: native XDP needs an MTU of at most \
                 {ENA_XDP_MAX_MTU} (and at most half the channels in use, see `ethtool -l`); \
                 xdp_mode = \"auto\" attaches generic"
            ),
        }
    }
}

/// What keeps native XDP off `interface`, as far as its driver and MTU tell (sysfs).
/// Unreadable facts are no limit: the attach itself decides and logs why.
pub(crate) fn native_limit(interface: &str) -> Option<NativeLimit> {
    let dir = sysfs_type(interface)?.parent()?.to_path_buf();
    let driver = std::fs::read_link(dir.join("device/driver")).ok()?;
    let driver = driver.file_name()?.to_str()?.to_owned();
    let mtu: u32 = std::fs::read_to_string(dir.join("mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    ena_limit(&driver, mtu)
}

fn ena_limit(driver: &str, mtu: u32) -> Option<NativeLimit> {
    (driver == "ena" && mtu > ENA_XDP_MAX_MTU).then_some(NativeLimit::EnaMtu { mtu })
}

/// The walk `interface` gets and the mode to attach it in, or the error that refuses
/// it, as [`Kernel::start`](super::Kernel::start) decides before loading anything (and `trustgate check`
/// reports).
///
/// L3 devices get generic XDP, which hands the program the skb from its MAC header; a
/// tun device sets that at the IP header, so the frame starts there. Checked on 6.18
/// by `tests/it/kernel_netns.rs` on a tun device: the IP walk drops an untrusted SYN
/// written into it, while the Ethernet walk on the same device let it through (the
/// SYN-ACK came back). Native XDP is not tried on L3 devices: on a tun device in TUN
/// mode attaching it fails (EOPNOTSUPP on 6.18), and for another L3 driver that might
/// take it, where its frames start is unverified. So `auto` means generic there and
/// `native` is refused.
pub fn xdp_interface(interface: &str, attach: XdpMode) -> Result<XdpInterface, KernelError> {
    let link_type = link_type(interface)?;
    let (walk, attach) = match link_type.walk() {
        Some(XdpWalk::Ethernet) => (XdpWalk::Ethernet, attach),
        Some(XdpWalk::Ip) if attach == XdpMode::Native => {
            return Err(KernelError::NativeOnL3 {
                interface: interface.to_owned(),
                link_type,
            });
        }
        Some(XdpWalk::Ip) => (XdpWalk::Ip, XdpMode::Generic),
        None => {
            return Err(KernelError::UnsupportedLinkType {
                interface: interface.to_owned(),
                link_type,
            });
        }
    };
    let native_limit = match walk {
        XdpWalk::Ethernet => native_limit(interface),
        XdpWalk::Ip => None,
    };
    Ok(XdpInterface {
        link_type,
        walk,
        attach,
        native_limit,
    })
}

/// The sysfs file of `interface`'s link type; `None` for a name no interface can have
/// (the kernel refuses empty names, "." and "..", and any with '/'), so a config value
/// never reads outside `/sys/class/net/<if>/`.
fn sysfs_type(interface: &str) -> Option<PathBuf> {
    let impossible = interface.is_empty() || interface == "." || interface == "..";
    if impossible || interface.contains('/') {
        return None;
    }
    Some(PathBuf::from("/sys/class/net").join(interface).join("type"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ena_above_its_xdp_mtu_is_noted_and_others_are_not() {
        assert_eq!(
            ena_limit("ena", 9001),
            Some(NativeLimit::EnaMtu { mtu: 9001 })
        );
        assert_eq!(ena_limit("ena", ENA_XDP_MAX_MTU), None);
        assert_eq!(ena_limit("veth", 9001), None);
        let text = NativeLimit::EnaMtu { mtu: 9001 }.to_string();
        assert!(text.contains("3498") && text.contains("generic"), "{text}");
        // veth here: a driver, an MTU, and no limit.
        assert_eq!(native_limit("lo"), None);
    }

    #[test]
    fn ethernet_framed_devices_are_walked_from_ethernet() {
        for t in [ARPHRD_ETHER, ARPHRD_LOOPBACK] {
            assert_eq!(LinkType(t).walk(), Some(XdpWalk::Ethernet), "{t}");
        }
    }

    #[test]
    fn l3_devices_are_walked_from_ip() {
        for t in [65534, 768, 769, 776, 778, 823, 512, 519] {
            assert_eq!(LinkType(t).walk(), Some(XdpWalk::Ip), "{t}");
        }
    }

    #[test]
    fn other_link_types_are_refused() {
        // Neighbours of accepted numbers too: the match is exact.
        for t in [
            0, 2, 24, 32, 280, 513, 770, 771, 773, 777, 779, 801, 803, 822, 824, 65535,
        ] {
            assert_eq!(LinkType(t).walk(), None, "{t}");
        }
    }

    #[test]
    fn an_unsupported_link_type_error_names_the_interface_the_type_and_the_way_out() {
        let err = KernelError::UnsupportedLinkType {
            interface: "can0".into(),
            link_type: LinkType(280),
        };
        let text = err.to_string();
        for part in ["`can0`", "280 (can)", "mode = \"socket\""] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        assert_eq!(LinkType(4242).to_string(), "4242");
    }

    #[test]
    fn loopback_is_read_from_sysfs() {
        // `lo` exists in every network namespace.
        assert_eq!(
            link_type("lo").expect("lo's type"),
            LinkType(ARPHRD_LOOPBACK)
        );
        for missing in ["tgnosuchif9", "../../proc/self", "..", ""] {
            assert!(
                matches!(
                    link_type(missing),
                    Err(KernelError::InterfaceNotFound { ref interface }) if interface == missing
                ),
                "{missing:?}"
            );
        }
    }
}
