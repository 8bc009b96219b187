//! Hostile PROXY headers, each with what the proxy must make of it: random bytes (after
//! nothing, after `PROXY `, after the v2 signature), v1 lines past 107 bytes, v2 length
//! fields of 65535, TLV floods past the length ceiling or ending malformed; and, at each
//! bound, the largest valid header, which must be served. Random cases are seeded.

use super::lb;

/// The seed of the random cases; a connection's bytes depend only on it and its index.
pub const SEED: u64 = 0x7457_6174_6531;
/// The v2 length ceiling the proxy applies.
pub const V2_MAX: usize = proxy::proxy_protocol::DEFAULT_MAX_V2_LEN;
/// The longest v1 line, CRLF included (the specification's 107 bytes).
pub const V1_MAX: usize = 107;

/// What the proxy must do with a case's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Close, counting this `trustgate_proxy_header_errors_total` kind.
    Counted(&'static str),
    /// Close, counting some kind (random bytes fail wherever they first go wrong).
    AnyKind,
    /// A valid header at a bound, with a request after it: answer 200.
    Served,
}

/// One hostile header.
pub struct Case {
    pub name: &'static str,
    /// One connection's bytes, given its index (random cases differ per connection).
    pub bytes: Box<dyn Fn(u64) -> Vec<u8> + Send + Sync>,
    pub expect: Expect,
}

/// `prefix`, then 1 to 2048 random bytes, all chosen by `seed`.
pub fn random_bytes(seed: u64, prefix: &[u8]) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let len = rng.usize(1..=2048);
    let mut out = prefix.to_vec();
    out.extend((0..len).map(|_| rng.u8(..)));
    out
}

/// The `trustgate_proxy_header_errors_total` kind the proxy counts for `bytes` sent and
/// then the write side closed, as its own parser judges them (a verdict does not depend
/// on how the bytes are split); `None` when they begin with a valid header.
pub fn predicted_kind(bytes: &[u8]) -> Option<&'static str> {
    use proxy::proxy_protocol::{Limits, parse};
    match parse(bytes, &Limits::default()) {
        Err(err) => Some(err.kind()),
        Ok(None) => Some("eof"),
        Ok(Some(_)) => None,
    }
}

/// A `PROXY UNKNOWN` line of `len` bytes, CRLF included.
fn unknown_line(len: usize) -> Vec<u8> {
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(len - 2, b'x');
    line.extend(b"\r\n");
    line
}

/// A v2 PROXY TCP4 header around `body`, its length field true.
fn sized(body: Vec<u8>) -> Vec<u8> {
    let len = u16::try_from(body.len()).expect("fits");
    lb::v2_raw(lb::V2_PROXY, lb::V2_TCP4, len, &body)
}

fn case(name: &'static str, expect: Expect, bytes: Vec<u8>) -> Case {
    Case {
        name,
        bytes: Box::new(move |_| bytes.clone()),
        expect,
    }
}

fn random(name: &'static str, prefix: &'static [u8], shift: u32) -> Case {
    Case {
        name,
        bytes: Box::new(move |i| random_bytes(SEED ^ (i << shift), prefix)),
        expect: Expect::AnyKind,
    }
}

/// Every case.
pub fn cases() -> Vec<Case> {
    let served_v1 = [unknown_line(V1_MAX), lb::get("/v1-at-the-limit")].concat();
    let served_v2 = [
        lb::v2_noop_flood_of(V2_MAX),
        lb::get("/tlv-flood-at-the-ceiling"),
    ]
    .concat();
    let overrun = [
        lb::v4_block(),
        lb::noop_flood(1300),
        // Announces 100 bytes, carries 10.
        vec![lb::TLV_NOOP, 0, 100],
        vec![0; 10],
    ]
    .concat();
    let crcs = [lb::v4_block(), lb::tlv(lb::TLV_CRC32C, &[0; 4]).repeat(500)].concat();
    let unique_ids = [
        lb::v4_block(),
        lb::tlv(lb::TLV_UNIQUE_ID, &[7; 128]).repeat(20),
        lb::tlv(lb::TLV_UNIQUE_ID, &[7; 129]),
    ]
    .concat();
    let v2_max_noops = [lb::v4_block(), lb::noop_flood(21841)].concat();
    vec![
        random("random bytes", b"", 0),
        random("random bytes after \"PROXY \"", b"PROXY ", 16),
        random("random bytes after the v2 signature", &lb::V2_SIGNATURE, 32),
        case(
            "v1 line of 1 MiB",
            Expect::Counted("v1_too_long"),
            unknown_line(1 << 20),
        ),
        case(
            "v1 line one byte over the limit",
            Expect::Counted("v1_too_long"),
            unknown_line(V1_MAX + 1),
        ),
        case("v1 line at the limit", Expect::Served, served_v1),
        case(
            "v2 length 65535, PROXY, NOOP TLVs",
            Expect::Counted("v2_too_long"),
            lb::v2_raw(lb::V2_PROXY, lb::V2_TCP4, u16::MAX, &v2_max_noops),
        ),
        case(
            "v2 length 65535, LOCAL",
            Expect::Counted("v2_too_long"),
            lb::v2_raw(lb::V2_LOCAL, 0, u16::MAX, &[0; 65535]),
        ),
        case(
            "v2 NOOP flood one byte over the ceiling",
            Expect::Counted("v2_too_long"),
            lb::v2_noop_flood_of(V2_MAX + 1),
        ),
        case("v2 NOOP flood at the ceiling", Expect::Served, served_v2),
        case(
            "v2 NOOP flood ending in an overrun",
            Expect::Counted("tlv_overrun"),
            sized(overrun),
        ),
        case(
            "v2 flood of CRC32C TLVs",
            Expect::Counted("crc_duplicate"),
            sized(crcs),
        ),
        case(
            "v2 flood of UNIQUE_IDs, the last too long",
            Expect::Counted("unique_id_too_long"),
            sized(unique_ids),
        ),
    ]
}
