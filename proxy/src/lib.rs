//! trustgate: an HTTP(S) reverse proxy for hosts behind L4 load balancers that speak the
//! PROXY protocol. It recovers the real client address from the PROXY header and
//! enforces the list of trusted load balancers in the kernel with eBPF.
//!
//! # Layout
//!
//! - [`config`]: the rpxy-format TOML file, validated into a typed [`config::Config`].
//! - [`trust`]: who may connect and as what (PROXY or DIRECT class, longest prefix),
//!   shared by user space and the kernel maps.
//! - [`kernel`]: loads, attaches and updates the eBPF trust filter (XDP or socket
//!   filter), with a classic-BPF fallback; reads its counters.
//! - [`proxy_protocol`]: the PROXY v1/v2 header parser, the reader that applies it
//!   to a connection under a timeout, and the encoder for upstreams.
//! - [`forward`]: a request's way upstream and back: routing, header rewriting with the
//!   recovered client address and PROXY v2 TLVs, the pooled upstream client (PROXY
//!   headers to upstreams that take them) under the upstream connection caps, upgrades,
//!   each request's access record; one request runs as the phases route, upstream
//!   request, send, response and log.
//! - [`access_log`]: the access log's bounded queue, its writer thread (batched writes,
//!   reopen on SIGUSR1) and its formats (text, JSON, combined).
//! - [`tls`]: per-app rustls configs chosen by SNI (with per-app client-certificate CAs),
//!   `default_tls_app` for ClientHellos without SNI, `unrecognized_name` alerts, and
//!   session resumption kept across reloads and shared through a ticket key file.
//! - [`server`]: the running service: its generations (a [`connection::Runtime`] per
//!   config), applying a reload (listeners bound and protected before they listen, the
//!   kernel's trusted list before user space's), the kernel filter, graceful drain.
//! - [`listener`]: binding (the filter attached before `listen()`), one accept loop per
//!   socket with backoff, and the gate every connection goes through (a slot under
//!   `max_clients`, idle connections shed).
//! - [`connection`]: one connection's life, given its admission and runtime: trust check,
//!   PROXY header, the per-client limit, TLS, HTTP/1.1 and h2, every wait timed by its
//!   clock.
//!
//!   The layers run one way: `server` over `listener` over `connection` over `forward`;
//!   none imports one above it.
//! - [`metrics`] and [`admin`]: the counters and their OpenMetrics exposition.
//! - [`reload`]: SIGHUP and `-w` reloads.
//! - [`service`]: the whole service from config to drain, as `trustgate` runs it.
//! - [`chain`]: an error with its causes, as logs and the command line write it.
//! - [`nofile`]: raises the open-file limit at start; `deadline`: a timer allocated only
//!   when waited on.
//! - [`demo`]: the demo upstream that echoes the request it received.
//!
//! The public surface is what the binaries, the integration tests, the benches and the
//! fuzz target use (and the PROXY codec's whole result API); everything else is
//! `pub(crate)` or private, so the compiler reports what nothing calls.
#![deny(unsafe_code)]

mod access_log;
pub mod admin;
mod chain;
pub mod config;
pub mod connection;
mod deadline;
pub mod demo;
pub mod forward;
mod header_names;
pub mod kernel;
pub mod listener;
mod metrics;
pub mod nofile;
pub mod proxy_protocol;
mod reload;
pub mod server;
pub mod service;
pub mod tls;
pub mod trust;
