//! Binding the listeners a config names, in two steps: [`reserve`] binds a socket (port
//! 0 becomes a real one here) and attaches the socket filter (socket mode), then
//! [`Reserved::listen`] makes it listen. In between, the caller puts the port in the XDP
//! program's protected set, so no socket ever listens on an unprotected port and no
//! connection is ever accepted unfiltered.

use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tracing::{error, info};

use super::ListenerError;
use crate::chain::Chain;
use crate::config::Config;
use crate::connection::Protocol;
use crate::kernel::Kernel;

/// A bound socket that does not listen yet: its port is known, and in socket mode the
/// filter is attached. Dropping it closes the socket.
pub(crate) struct Reserved {
    socket: Socket,
    /// The address bound (with the port the kernel chose for port 0).
    addr: SocketAddr,
    configured: SocketAddr,
    protocol: Protocol,
    backlog: i32,
    /// Whether accepted sockets get their inherited filter detached (see [`Bound`]).
    detach_accepted: bool,
}

impl Reserved {
    /// The address bound.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts listening. In XDP mode, call only once the port is protected.
    pub(crate) fn listen(self) -> Result<Bound, ListenerError> {
        let addr = self.addr;
        let err = |source| ListenerError::Listen { addr, source };
        self.socket.listen(self.backlog).map_err(err)?;
        let listener = TcpListener::from_std(self.socket.into()).map_err(err)?;
        info!(listener = %addr, protocol = ?self.protocol, "listening");
        Ok(Bound {
            listener,
            addr,
            configured: self.configured,
            protocol: self.protocol,
            detach_accepted: self.detach_accepted,
        })
    }
}

/// A bound, listening socket, with the kernel filter already attached.
pub struct Bound {
    pub(crate) listener: TcpListener,
    /// The address bound (with the port the kernel chose for port 0).
    pub(crate) addr: SocketAddr,
    /// The address the config asked for.
    pub(crate) configured: SocketAddr,
    pub(crate) protocol: Protocol,
    /// A socket filter is attached to this listener (socket mode) and
    /// `kernel_filter.detach_accepted` is on: each accepted socket gets the filter it
    /// inherited taken off (`kernel::detach_inherited`).
    pub(crate) detach_accepted: bool,
}

impl Bound {
    /// The local address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Every listener `config` names: plain HTTP, then TLS.
pub(crate) fn wanted(config: &Config) -> Vec<(SocketAddr, Protocol)> {
    let listeners = &config.listeners;
    listeners
        .plain
        .iter()
        .map(|a| (*a, Protocol::Http))
        .chain(listeners.tls.iter().map(|a| (*a, Protocol::Https)))
        .collect()
}

/// Binds every listener `config` names, makes XDP protect exactly their ports, then
/// makes them listen (at startup: nothing else listens yet).
pub fn bind_all(
    config: &Config,
    mut kernel: Option<&mut Kernel>,
) -> Result<Vec<Bound>, ListenerError> {
    let reserved = wanted(config)
        .into_iter()
        .map(|(addr, protocol)| reserve(addr, protocol, config, kernel.as_deref_mut()))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(kernel) = kernel {
        // Before any listen(): the kernel was started with the configured ports, and
        // port 0 only now has a real one.
        let ports: Vec<u16> = reserved.iter().map(|r| r.addr.port()).collect();
        kernel
            .set_ports(&ports)
            .map_err(|source| ListenerError::Ports {
                source: Box::new(source),
            })?;
    }
    reserved.into_iter().map(Reserved::listen).collect()
}

/// Binds one listener without listening, with the socket filter attached. A filter that
/// cannot be attached fails the bind unless `kernel_filter.required` is false.
pub(crate) fn reserve(
    addr: SocketAddr,
    protocol: Protocol,
    config: &Config,
    kernel: Option<&mut Kernel>,
) -> Result<Reserved, ListenerError> {
    let err = |source| ListenerError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        // `[::]` and `0.0.0.0` may then share a port; each family has its own socket.
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    let local = socket
        .local_addr()
        .map_err(err)?
        .as_socket()
        .ok_or_else(|| {
            err(std::io::Error::other(
                "the bound address is not an IP address",
            ))
        })?;
    let mut detach_accepted = false;
    if let Some(kernel) = kernel {
        let filter = config.proxy_protocol.as_ref().map(|p| &p.kernel_filter);
        let required = filter.is_none_or(|f| f.required);
        match kernel.protect_listener(&socket) {
            // `Some` only in socket mode: XDP leaves the sockets alone.
            Ok(Some(_)) => detach_accepted = filter.is_some_and(|f| f.detach_accepted),
            Ok(None) => {}
            Err(err) if !required => {
                error!(listener = %addr, error = %Chain(&err), "kernel filter not attached (kernel_filter.required = false): only user space checks peers on this listener");
            }
            Err(source) => {
                return Err(ListenerError::Filter {
                    addr,
                    source: Box::new(source),
                });
            }
        }
    }
    Ok(Reserved {
        socket,
        addr: local,
        configured: addr,
        protocol,
        backlog: i32::try_from(config.limits.tcp_listen_backlog).unwrap_or(i32::MAX),
        detach_accepted,
    })
}
