//! Binding the listeners a config names. The kernel socket filter (socket mode) is
//! attached before `listen()`, so no connection is ever accepted unfiltered; in XDP mode
//! the bound ports (port 0 becomes a real one here) are the protected ones.

use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tracing::{error, info};

use super::{ListenerError, Protocol};
use crate::config::Config;
use crate::kernel::Kernel;

/// A bound, listening socket, with the kernel filter already attached.
pub struct Bound {
    pub(super) listener: TcpListener,
    /// The address bound (with the port the kernel chose for port 0).
    pub(super) addr: SocketAddr,
    /// The address the config asked for.
    pub(super) configured: SocketAddr,
    pub(super) protocol: Protocol,
}

impl Bound {
    /// The local address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Every listener `config` names: plain HTTP, then TLS.
pub(super) fn wanted(config: &Config) -> Vec<(SocketAddr, Protocol)> {
    let listeners = &config.listeners;
    listeners
        .plain
        .iter()
        .map(|a| (*a, Protocol::Http))
        .chain(listeners.tls.iter().map(|a| (*a, Protocol::Https)))
        .collect()
}

/// Binds every listener `config` names, then makes XDP protect their ports.
pub fn bind_all(
    config: &Config,
    mut kernel: Option<&mut Kernel>,
) -> Result<Vec<Bound>, ListenerError> {
    let bound = wanted(config)
        .into_iter()
        .map(|(addr, protocol)| bind_one(addr, protocol, config, kernel.as_deref_mut()))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(kernel) = kernel {
        let ports: Vec<u16> = bound.iter().map(|b| b.addr.port()).collect();
        kernel
            .set_ports(&ports)
            .map_err(|source| ListenerError::Ports {
                source: Box::new(source),
            })?;
    }
    Ok(bound)
}

/// Binds one listener, with the socket filter attached before it listens. A filter that
/// cannot be attached fails the bind unless `kernel_filter.required` is false.
pub(super) fn bind_one(
    addr: SocketAddr,
    protocol: Protocol,
    config: &Config,
    kernel: Option<&mut Kernel>,
) -> Result<Bound, ListenerError> {
    let err = |source| ListenerError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        // `[::]` and `0.0.0.0` may then share a port; each family has its own socket.
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    if let Some(kernel) = kernel {
        let required = config
            .proxy_protocol
            .as_ref()
            .is_none_or(|p| p.kernel_filter.required);
        match kernel.protect_listener(&socket) {
            Ok(_) => {}
            Err(err) if !required => {
                error!(listener = %addr, error = %err, "kernel filter not attached (kernel_filter.required = false): only user space checks peers on this listener");
            }
            Err(source) => {
                return Err(ListenerError::Filter {
                    addr,
                    source: Box::new(source),
                });
            }
        }
    }
    let backlog = i32::try_from(config.limits.tcp_listen_backlog).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(err)?;
    let listener = TcpListener::from_std(socket.into()).map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    info!(listener = %local, protocol = ?protocol, "listening");
    Ok(Bound {
        listener,
        addr: local,
        configured: addr,
        protocol,
    })
}
