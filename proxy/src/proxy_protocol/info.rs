//! [`ProxyInfo`]: the owned result of a header, kept with the connection after the read
//! buffer is gone, so the HTTP layer can log the client and map TLVs to headers.

use std::net::SocketAddr;

use super::endpoints::Endpoints;
use super::{Addresses, Command, Fallback, Header, Tlvs, Version};

/// What a PROXY header said, owned. The TLV bytes are the checked area of the header,
/// copied once (no allocation when there are none).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProxyInfo {
    version: Version,
    command: Command,
    endpoints: Endpoints,
    tlvs: Box<[u8]>,
    mixed_families: bool,
}

impl From<Header<'_>> for ProxyInfo {
    fn from(header: Header<'_>) -> Self {
        Self {
            version: header.version(),
            command: header.command(),
            endpoints: header.endpoints,
            tlvs: header.tlvs().as_bytes().into(),
            mixed_families: header.mixed_families(),
        }
    }
}

impl ProxyInfo {
    /// The header format.
    pub fn version(&self) -> Version {
        self.version
    }

    /// LOCAL or PROXY.
    pub fn command(&self) -> Command {
        self.command
    }

    /// The endpoints the header describes.
    pub fn addresses(&self) -> Addresses {
        self.endpoints.addresses()
    }

    /// The relayed client address; `None` for LOCAL, `UNKNOWN`, UNSPEC and the
    /// UNIX/DGRAM fallback, where the connection's own peer address applies.
    pub fn client(&self) -> Option<SocketAddr> {
        self.endpoints.endpoint(0)
    }

    /// The relayed destination address; `None` whenever [`ProxyInfo::client`] is.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.endpoints.endpoint(1)
    }

    /// Set when a valid UNIX or DGRAM header fell back to the peer address.
    pub(crate) fn fallback(&self) -> Option<Fallback> {
        self.endpoints.fallback_reason()
    }

    /// Whether a v1 line's addresses differed in family ([`Header::mixed_families`]).
    pub(crate) fn mixed_families(&self) -> bool {
        self.mixed_families
    }

    /// The TLVs (v2 only), with the same typed accessors as [`Header::tlvs`].
    pub fn tlvs(&self) -> Tlvs<'_> {
        Tlvs::from_validated(&self.tlvs)
    }
}
