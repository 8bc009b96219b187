//! A [`Record`] as a line, in each format: `text` (the fields of the `tracing` event the
//! access log used to be), `json` (one object, fixed names) and `combined` (Apache's and
//! nginx's). Runs on the writer thread only. Every byte a client chose is escaped, so
//! a line is always one line; query values are redacted when the record asks.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use http::Version;

use super::Record;
use crate::config::AccessFormat;

const REDACTED: &[u8] = b"<redacted>";
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Formats records in one format, with a scratch buffer for redaction.
pub(super) struct Formatter {
    format: AccessFormat,
    scratch: Vec<u8>,
}

impl Formatter {
    pub(super) fn new(format: AccessFormat) -> Formatter {
        Formatter {
            format,
            scratch: Vec::new(),
        }
    }

    /// Appends `record` to `out` as one line, newline included.
    pub(super) fn write(&mut self, out: &mut Vec<u8>, r: &Record) {
        match self.format {
            AccessFormat::Text => self.text(out, r),
            AccessFormat::Json => self.json(out, r),
            AccessFormat::Combined => self.combined(out, r),
        }
    }

    /// `2024-05-01T12:00:00.123456Z  INFO trustgate::access: access client=… …`
    fn text(&mut self, out: &mut Vec<u8>, r: &Record) {
        rfc3339(out, r.time);
        let _ = write!(
            out,
            "  INFO trustgate::access: access client={} client_port={} peer={} method=",
            r.client.ip(),
            r.client.port(),
            r.peer
        );
        escape_log(out, r.method.as_str().as_bytes());
        out.extend_from_slice(b" host=");
        escape_log(out, or_dash(r.host()));
        out.extend_from_slice(b" path=");
        escape_log(out, redacted(&mut self.scratch, r.path(), r.redact));
        let _ = write!(
            out,
            " version={} status={} upstream=",
            version(r.version),
            r.status
        );
        match &r.upstream {
            Some(u) => escape_log(out, u.as_str().as_bytes()),
            None => out.push(b'-'),
        }
        let _ = writeln!(out, " bytes={} duration_ms={}", r.bytes, millis(r));
    }

    /// `{"time":"…","client":"…","client_port":…,"peer":"…","method":"…","host":…,
    /// "path":"…","version":"…","status":…,"upstream":…,"bytes":…,"duration_ms":…,
    /// "referer":…,"user_agent":…}`; absent values are `null`.
    fn json(&mut self, out: &mut Vec<u8>, r: &Record) {
        out.extend_from_slice(b"{\"time\":\"");
        rfc3339(out, r.time);
        let _ = write!(
            out,
            "\",\"client\":\"{}\",\"client_port\":{},\"peer\":\"{}\",\"method\":",
            r.client.ip(),
            r.client.port(),
            r.peer
        );
        json_str(out, r.method.as_str().as_bytes());
        out.extend_from_slice(b",\"host\":");
        json_opt(out, r.host());
        out.extend_from_slice(b",\"path\":");
        json_str(out, redacted(&mut self.scratch, r.path(), r.redact));
        let _ = write!(
            out,
            ",\"version\":\"{}\",\"status\":{},\"upstream\":",
            version(r.version),
            r.status
        );
        match &r.upstream {
            Some(u) => json_str(out, u.as_str().as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        let _ = write!(
            out,
            ",\"bytes\":{},\"duration_ms\":{},\"referer\":",
            r.bytes,
            millis(r)
        );
        json_opt(out, redacted(&mut self.scratch, r.referer(), r.redact));
        out.extend_from_slice(b",\"user_agent\":");
        json_opt(out, r.user_agent());
        out.extend_from_slice(b"}\n");
    }

    /// nginx's `combined`: `$remote_addr - $remote_user [$time_local] "$request" $status
    /// $body_bytes_sent "$http_referer" "$http_user_agent"`, the client from the PROXY
    /// header, the time in UTC, bytes escaped as nginx does (`\xHH`).
    fn combined(&mut self, out: &mut Vec<u8>, r: &Record) {
        let _ = write!(out, "{} - - [", r.client.ip());
        clf_time(out, r.time);
        out.extend_from_slice(b"] \"");
        escape_log(out, r.method.as_str().as_bytes());
        out.push(b' ');
        escape_log(out, redacted(&mut self.scratch, r.path(), r.redact));
        let _ = write!(out, " {}\" {} {} \"", version(r.version), r.status, r.bytes);
        escape_log(
            out,
            or_dash(redacted(&mut self.scratch, r.referer(), r.redact)),
        );
        out.extend_from_slice(b"\" \"");
        escape_log(out, or_dash(r.user_agent()));
        out.extend_from_slice(b"\"\n");
    }
}

fn millis(r: &Record) -> u64 {
    u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX)
}

fn or_dash(value: &[u8]) -> &[u8] {
    if value.is_empty() { b"-" } else { value }
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// `value` with each query value replaced by `<redacted>` (`/a?k=v&f` → `/a?k=<redacted>&f`)
/// when `redact`, built in `scratch`; `value` itself otherwise, or when it has no query.
pub(super) fn redacted<'a>(scratch: &'a mut Vec<u8>, value: &'a [u8], redact: bool) -> &'a [u8] {
    let Some(q) = value.iter().position(|b| *b == b'?').filter(|_| redact) else {
        return value;
    };
    scratch.clear();
    scratch.extend_from_slice(&value[..=q]);
    for (i, pair) in value[q + 1..].split(|b| *b == b'&').enumerate() {
        if i > 0 {
            scratch.push(b'&');
        }
        match pair.iter().position(|b| *b == b'=') {
            Some(eq) => {
                scratch.extend_from_slice(&pair[..=eq]);
                scratch.extend_from_slice(REDACTED);
            }
            None => scratch.extend_from_slice(pair),
        }
    }
    scratch
}

/// nginx's escaping of logged variables: `"`, `\`, control bytes and bytes from 0x7f
/// as `\xHH`.
fn escape_log(out: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

fn json_opt(out: &mut Vec<u8>, value: &[u8]) {
    if value.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        json_str(out, value);
    }
}

/// A JSON string. Valid UTF-8 passes through; other bytes (obs-text in a header) are
/// read as Latin-1, so the line is always valid JSON.
fn json_str(out: &mut Vec<u8>, value: &[u8]) {
    let utf8 = std::str::from_utf8(value).is_ok();
    out.push(b'"');
    for &b in value {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x80.. if utf8 => out.push(b),
            0..0x20 | 0x7f.. => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Seconds and microseconds since the epoch, and the UTC civil date and time.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
    micros: u32,
}

fn civil(time: SystemTime) -> Civil {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let of_day = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: of_day / 3600,
        minute: of_day / 60 % 60,
        second: of_day % 60,
        micros: since.subsec_micros(),
    }
}

/// `2024-05-01T12:00:00.123456Z`, as `tracing`'s text and JSON logs write it.
fn rfc3339(out: &mut Vec<u8>, time: SystemTime) {
    let c = civil(time);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.micros
    );
}

/// `01/May/2024:12:00:00 +0000`, the common log format's time.
fn clf_time(out: &mut Vec<u8>, time: SystemTime) {
    let c = civil(time);
    let month = MONTHS[(c.month as usize).saturating_sub(1) % 12];
    let _ = write!(
        out,
        "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000",
        c.day, c.year, c.hour, c.minute, c.second
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Method;

    use super::*;

    fn record() -> Record {
        let mut r = Record::new(
            "203.0.113.7:4711".parse().expect("test addr"),
            "10.0.0.1:40000".parse().expect("test addr"),
            Method::GET,
            Version::HTTP_11,
            "/a?token=s3cret&flag",
            b"https://ref.example/?q=1",
            b"curl/8 \"quoted\"",
            16,
        );
        r.set_host("app.example");
        r.status = 404;
        r.bytes = 12;
        r.duration = Duration::from_millis(7);
        // 2000-10-10T13:55:36.5Z
        r.time = UNIX_EPOCH + Duration::from_millis(971_186_136_500);
        r
    }

    fn line(format: AccessFormat, r: &Record) -> String {
        let mut out = Vec::new();
        Formatter::new(format).write(&mut out, r);
        String::from_utf8(out).expect("lines are UTF-8")
    }

    #[test]
    fn query_values_are_redacted_and_keys_kept() {
        let mut s = Vec::new();
        assert_eq!(
            redacted(&mut s, b"/a?token=s3cret&flag&x=1=2", true),
            b"/a?token=<redacted>&flag&x=<redacted>"
        );
        assert_eq!(redacted(&mut s, b"/a/b", true), b"/a/b");
        assert_eq!(redacted(&mut s, b"/a?", true), b"/a?");
        assert_eq!(redacted(&mut s, b"/a?k=v", false), b"/a?k=v");
    }

    #[test]
    fn each_format_writes_one_line_with_its_fields() {
        let r = record();
        assert_eq!(
            line(AccessFormat::Text, &r),
            "2000-10-10T13:55:36.500000Z  INFO trustgate::access: access client=203.0.113.7 \
             client_port=4711 peer=10.0.0.1:40000 method=GET host=app.example \
             path=/a?token=s3cret&flag version=HTTP/1.1 status=404 upstream=- bytes=12 \
             duration_ms=7\n"
        );
        assert_eq!(
            line(AccessFormat::Combined, &r),
            "203.0.113.7 - - [10/Oct/2000:13:55:36 +0000] \"GET /a?token=s3cret&flag HTTP/1.1\" \
             404 12 \"https://ref.example/?q=1\" \"curl/8 \\x22quoted\\x22\"\n"
        );
        assert_eq!(
            line(AccessFormat::Json, &r),
            "{\"time\":\"2000-10-10T13:55:36.500000Z\",\"client\":\"203.0.113.7\",\
             \"client_port\":4711,\"peer\":\"10.0.0.1:40000\",\"method\":\"GET\",\
             \"host\":\"app.example\",\"path\":\"/a?token=s3cret&flag\",\"version\":\"HTTP/1.1\",\
             \"status\":404,\"upstream\":null,\"bytes\":12,\"duration_ms\":7,\
             \"referer\":\"https://ref.example/?q=1\",\"user_agent\":\"curl/8 \\\"quoted\\\"\"}\n"
        );
    }

    #[test]
    fn redaction_applies_to_path_and_referer_in_every_format() {
        let mut r = record();
        r.redact = true;
        for format in [
            AccessFormat::Text,
            AccessFormat::Json,
            AccessFormat::Combined,
        ] {
            let l = line(format, &r);
            assert!(l.contains("/a?token=<redacted>&flag"), "{l}");
            assert!(!l.contains("s3cret"), "{l}");
            if format != AccessFormat::Text {
                assert!(l.contains("https://ref.example/?q=<redacted>"), "{l}");
            }
        }
    }

    #[test]
    fn absent_values_are_dashes_or_null_and_odd_bytes_are_escaped() {
        let r = Record::new(
            "[2001:db8::1]:1".parse().expect("test addr"),
            "[2001:db8::2]:2".parse().expect("test addr"),
            Method::POST,
            Version::HTTP_2,
            "/",
            b"",
            b"bot\xff\x01",
            0,
        );
        let c = line(AccessFormat::Combined, &r);
        assert!(c.starts_with("2001:db8::1 - - [01/Jan/1970:00:00:00 +0000] \"POST / HTTP/2.0\" 200 0 \"-\" \"bot\\xFF\\x01\"\n"), "{c}");
        let j = line(AccessFormat::Json, &r);
        assert!(j.contains("\"host\":null"), "{j}");
        assert!(
            j.contains("\"referer\":null,\"user_agent\":\"bot\\u00ff\\u0001\"}"),
            "{j}"
        );
        let t = line(AccessFormat::Text, &r);
        assert!(t.contains(" host=- "), "{t}");
    }

    #[test]
    fn civil_dates_match_known_days() {
        let at = |secs: u64| {
            let mut out = Vec::new();
            rfc3339(&mut out, UNIX_EPOCH + Duration::from_secs(secs));
            String::from_utf8(out).expect("ascii")
        };
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59.000000Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00.000000Z");
    }
}
