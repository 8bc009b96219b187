//! The upstream connector under hyper-rustls: hyper-util's `HttpConnector` for TCP (DNS,
//! connect timeout, `TCP_NODELAY`), then, when made with a PROXY header, that header
//! written before any other byte (before TLS, as receivers expect it). The header is
//! fixed when the connector is made, so every connection of a pool carries the same one.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tower_service::Service;

/// hyper-util's connect error, which it does not export by name.
type HttpConnectError = Box<dyn std::error::Error + Send + Sync>;

/// Why no upstream connection was made.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error("connecting to the upstream failed")]
    Connect(#[source] HttpConnectError),
    #[error("writing the PROXY header to the upstream failed")]
    Header(#[source] io::Error),
}

/// TCP to the upstream, then the PROXY header when there is one.
#[derive(Clone, Debug)]
pub(super) struct Connector {
    http: HttpConnector,
    /// Written first on every connection; `None` for upstreams that take no header.
    header: Option<Arc<[u8]>>,
}

impl Connector {
    pub(super) fn new(http: HttpConnector, header: Option<Arc<[u8]>>) -> Connector {
        Connector { http, header }
    }
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.http
            .poll_ready(cx)
            .map_err(|e| ConnectError::Connect(e.into()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let header = self.header.clone();
        Box::pin(async move {
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
            Ok(stream)
        })
    }
}
