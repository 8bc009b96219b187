//! Helpers shared by the integration tests: skipping (or, in CI, failing) when a tool
//! or a capability is missing. Compiled once, as a module of the one test binary
//! (`tests/it/main.rs`); each area's module uses it as `crate::common`.

pub mod adversary;
pub mod catalogue;
pub mod certs;
pub mod forwarder;
pub mod frames;
pub mod gateway;
pub mod hostile;
pub mod http1;
pub mod inprocess;
pub mod lb;
pub mod netns;
pub mod peers;
pub mod probe;
pub mod scrape;
pub mod stall;
pub mod synflood;
pub mod testconfig;
pub mod upstream;
pub mod wire;

use std::path::PathBuf;

/// When this variable is set (`.ci/run` sets it), a test that would skip for lack of a
/// tool or a capability fails instead.
pub const REQUIRE_ALL_ENV: &str = "TRUSTGATE_REQUIRE_ALL";

/// Skips the calling test with a loud line saying why, or panics when skipping is not
/// allowed here. Call as `if !ok { return skip("why"); }`.
pub fn skip(why: &str) {
    if std::env::var_os(REQUIRE_ALL_ENV).is_some() {
        panic!("cannot run: {why}; {REQUIRE_ALL_ENV} is set, so this is a failure, not a skip");
    }
    eprintln!("SKIPPED: {why} (set {REQUIRE_ALL_ENV}=1 to make this a failure)");
}

/// The path of `name` on `PATH`, or `None` after [`skip`] said it is missing.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = find_tool(name);
    if found.is_none() {
        skip(&format!("`{name}` is not installed"));
    }
    found
}

/// The path of an executable found on `PATH`, if any.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Connects to `dst` from the local address `src` (such as 127.0.0.2, which loopback
/// answers for but trust lists usually leave out).
pub fn connect_from(
    src: std::net::IpAddr,
    dst: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<std::net::TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&std::net::SocketAddr::new(src, 0).into())?;
    socket.connect_timeout(&dst.into(), timeout)?;
    Ok(socket.into())
}
