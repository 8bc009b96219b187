//! The integration tests, one binary: each module is one area, and `common` holds the
//! helpers they share (compiled once, for all of them). Tests of different areas run
//! side by side here, so none may change what the others see of this process. The one
//! process-wide change, `common::probe::room_for` raising the open-file soft limit to
//! the hard limit, is the same raise from every test that makes it, and no test reads
//! this process's soft limit, so it needs no binary of its own.

mod common;

mod access_log;
mod adversarial;
mod config;
mod forward;
mod gateway;
mod kernel;
mod kernel_netns;
mod operations;
mod proxy_protocol;
mod send_proxy;
mod timeouts;
mod tls;
mod tlv_headers;
