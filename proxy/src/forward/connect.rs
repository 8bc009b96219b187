//! The upstream connector under hyper-rustls: hyper-util's `HttpConnector` for TCP (DNS,
//! connect timeout, `TCP_NODELAY`), then, when made with a PROXY header, that header
//! written before any other byte (before TLS, as receivers expect it). The header is
//! fixed when the connector is made, so every connection of a pool carries the same one.
//! Each connection takes a [`Slot`] under `max_upstream_connections` before it connects
//! and holds it for its life.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tower_service::Service;

use super::slots::{OpenCount, Slot, Slots, SlotsFull, Slotted};

/// hyper-util's connect error, which it does not export by name.
type HttpConnectError = Box<dyn std::error::Error + Send + Sync>;

/// Why no upstream connection was made.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error("connecting to the upstream failed")]
    Connect(#[source] HttpConnectError),
    #[error("writing the PROXY header to the upstream failed")]
    Header(#[source] io::Error),
    #[error("no room for an upstream connection")]
    Full(#[from] SlotsFull),
}

/// Where a connector's connections take their [`Slot`]: the process-wide cap, how long
/// to wait at it, and the count of the connector's group of pools.
#[derive(Clone, Debug)]
pub(super) struct Capped {
    pub(super) slots: Arc<Slots>,
    pub(super) wait: Duration,
    pub(super) count: Option<OpenCount>,
}

impl Capped {
    pub(super) async fn slot(&self) -> Result<Slot, SlotsFull> {
        self.slots.take(self.wait).await
    }
}

/// TCP to the upstream, then the PROXY header when there is one.
#[derive(Clone, Debug)]
pub(super) struct Connector {
    http: HttpConnector,
    /// Written first on every connection; `None` for upstreams that take no header.
    header: Option<Arc<[u8]>>,
    capped: Capped,
}

impl Connector {
    pub(super) fn new(http: HttpConnector, header: Option<Arc<[u8]>>, capped: Capped) -> Connector {
        Connector {
            http,
            header,
            capped,
        }
    }
}

impl Service<Uri> for Connector {
    type Response = Slotted<TokioIo<TcpStream>>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.http
            .poll_ready(cx)
            .map_err(|e| ConnectError::Connect(e.into()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Lazy: nothing connects before the slot is had.
        let connecting = self.http.call(uri);
        let header = self.header.clone();
        let capped = self.capped.clone();
        Box::pin(async move {
            let slot = capped.slot().await?;
            let mut stream = connecting
                .await
                .map_err(|e| ConnectError::Connect(e.into()))?;
            if let Some(header) = header {
                // A fresh socket's send buffer takes a header of at most a few hundred
                // bytes at once, so this is bounded by the connect that just succeeded.
                stream
                    .inner_mut()
                    .write_all(&header)
                    .await
                    .map_err(ConnectError::Header)?;
            }
            Ok(Slotted::new(stream, slot, capped.count))
        })
    }
}
