//! The listening sockets: binding the ones a config names (`bind`: the kernel filter
//! attached and the port protected before `listen()`), and the slots under
//! `max_clients` (`shed`: the idle connection goes first). A connection's life is
//! `connection`'s; the running server, its reloads and drain are `server`'s.

mod bind;
pub(crate) mod shed;

use std::io;
use std::net::SocketAddr;

pub use bind::{Bound, bind_all};
pub(crate) use bind::{Reserved, reserve, wanted};

use crate::kernel::KernelError;

/// Why a listener could not be bound or made to listen.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("listening on {addr} (bound, but listen() failed)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("attaching the kernel filter to {addr}")]
    Filter {
        addr: SocketAddr,
        #[source]
        source: Box<KernelError>,
    },
    #[error("protecting the listen ports with XDP")]
    Ports {
        #[source]
        source: Box<KernelError>,
    },
}
