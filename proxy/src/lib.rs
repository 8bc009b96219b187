//! trustgate: an HTTP(S) reverse proxy for hosts behind L4 load balancers that speak the
//! PROXY protocol. It recovers the real client address from the PROXY header and
//! enforces the list of trusted load balancers in the kernel with eBPF.
//!
//! # Layout
//!
//! - [`config`]: the rpxy-format TOML file, validated into a typed [`config::Config`].
//! - [`trust`]: the trusted-proxies list, shared by user space and the kernel maps.
//! - [`kernel`]: loads, attaches and updates the eBPF trust filter (XDP or socket
//!   filter), with a classic-BPF fallback; reads its counters.
//! - [`proxy_protocol`]: the PROXY v1/v2 header parser and the reader that applies it
//!   to a connection under a timeout.
#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod forward;
pub mod kernel;
pub mod listener;
pub mod metrics;
pub mod proxy_protocol;
pub mod reload;
pub mod tls;
pub mod trust;
