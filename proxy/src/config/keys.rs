//! Which keys may appear where. A key is known when a struct in `file` declares it (the
//! field lists are read from serde, so this list cannot drift from the structs); keys rpxy
//! has and trustgate does not implement are listed here and give one warning each; any
//! other key is refused with its path and the nearest known key, because a misspelt key
//! must never silently change behaviour (least of all who is trusted).

use std::path::Path;

use serde::de::{self, DeserializeOwned, Visitor};
use toml::{Table, Value};

use super::error::{ConfigError, KeyHint};
use super::file::{
    AccessLogFile, AppFile, ConfigFile, ExperimentalFile, KernelFilterFile, MetricsFile,
    ProxyProtocolFile, RouteFile, TlsFile, TlvHeadersFile, UpstreamFile,
};
use super::warning::{Warning, WarningKind};

/// Walks the parsed file: warns about each unsupported key, refuses the first unknown one.
/// Values of the wrong type are left for serde, which reports them with a line number.
pub(crate) fn check(root: &Table, file: &Path) -> Result<Vec<Warning>, ConfigError> {
    let mut warnings = Vec::new();
    walk(root, Shape::Root, "", file, &mut warnings)?;
    Ok(warnings)
}

/// The tables of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Root,
    App,
    Tls,
    TlvHeaders,
    Route,
    Upstream,
    Experimental,
    ProxyProtocol,
    KernelFilter,
    Metrics,
    AccessLog,
}

/// How a key holds a table below it.
enum Nesting {
    Table,
    /// An array of tables (`[[x]]` or `x = [{..}]`).
    Array,
    /// A table of tables with free names (`[apps.NAME]`).
    Map,
}

impl Shape {
    const ALL: [Shape; 11] = [
        Shape::Root,
        Shape::App,
        Shape::Tls,
        Shape::TlvHeaders,
        Shape::Route,
        Shape::Upstream,
        Shape::Experimental,
        Shape::ProxyProtocol,
        Shape::KernelFilter,
        Shape::Metrics,
        Shape::AccessLog,
    ];

    fn known(self) -> &'static [&'static str] {
        match self {
            Shape::Root => fields::<ConfigFile>(),
            Shape::App => fields::<AppFile>(),
            Shape::Tls => fields::<TlsFile>(),
            Shape::TlvHeaders => fields::<TlvHeadersFile>(),
            Shape::Route => fields::<RouteFile>(),
            Shape::Upstream => fields::<UpstreamFile>(),
            Shape::Experimental => fields::<ExperimentalFile>(),
            Shape::ProxyProtocol => fields::<ProxyProtocolFile>(),
            Shape::KernelFilter => fields::<KernelFilterFile>(),
            Shape::Metrics => fields::<MetricsFile>(),
            Shape::AccessLog => fields::<AccessLogFile>(),
        }
    }

    /// rpxy's keys that trustgate accepts and ignores: (key, the feature, for the warning).
    fn unsupported(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Shape::Root => &[(
                "sticky_cookie_secret",
                "sticky-session load balancing (sticky_cookie_secret)",
            )],
            Shape::Experimental => &[
                ("h3", "HTTP/3"),
                ("cache", "the response cache"),
                ("acme", "ACME certificate issuance"),
            ],
            Shape::Route => &[("health_check", "active upstream health checking")],
            _ => &[],
        }
    }

    fn child(self, key: &str) -> Option<(Nesting, Shape)> {
        let child = match (self, key) {
            (Shape::Root, "apps") => (Nesting::Map, Shape::App),
            (Shape::Root, "experimental") => (Nesting::Table, Shape::Experimental),
            (Shape::Root, "metrics") => (Nesting::Table, Shape::Metrics),
            (Shape::Root, "access_log") => (Nesting::Table, Shape::AccessLog),
            (Shape::App, "tls") => (Nesting::Table, Shape::Tls),
            (Shape::App, "proxy_protocol_tlv_headers") => (Nesting::Table, Shape::TlvHeaders),
            (Shape::App, "reverse_proxy") => (Nesting::Array, Shape::Route),
            (Shape::Route, "upstream") => (Nesting::Array, Shape::Upstream),
            (Shape::Experimental, "tcp_recv_proxy_protocol") => {
                (Nesting::Table, Shape::ProxyProtocol)
            }
            (Shape::ProxyProtocol, "kernel_filter") => (Nesting::Table, Shape::KernelFilter),
            _ => return None,
        };
        Some(child)
    }

    /// Where the table sits, for "this key belongs in [...]"; `*` stands for an app name.
    fn path(self) -> &'static str {
        match self {
            Shape::Root => "",
            Shape::App => "apps.*",
            Shape::Tls => "apps.*.tls",
            Shape::TlvHeaders => "apps.*.proxy_protocol_tlv_headers",
            Shape::Route => "apps.*.reverse_proxy",
            Shape::Upstream => "apps.*.reverse_proxy.upstream",
            Shape::Experimental => "experimental",
            Shape::ProxyProtocol => "experimental.tcp_recv_proxy_protocol",
            Shape::KernelFilter => "experimental.tcp_recv_proxy_protocol.kernel_filter",
            Shape::Metrics => "metrics",
            Shape::AccessLog => "access_log",
        }
    }

    fn has(self, key: &str) -> bool {
        self.known().contains(&key) || self.unsupported().iter().any(|(k, _)| *k == key)
    }
}

fn walk(
    table: &Table,
    shape: Shape,
    path: &str,
    file: &Path,
    warnings: &mut Vec<Warning>,
) -> Result<(), ConfigError> {
    for (key, value) in table {
        let key_path = join(path, key);
        if let Some((_, feature)) = shape.unsupported().iter().find(|(k, _)| k == key) {
            // `health_check = false` and the like ask for nothing trustgate lacks.
            if !matches!(value, Value::Boolean(false)) {
                warnings.push(Warning {
                    file: file.to_owned(),
                    key: key_path,
                    kind: WarningKind::Unsupported { feature },
                });
            }
            continue;
        }
        if !shape.known().contains(&key.as_str()) {
            return Err(ConfigError::UnknownKey {
                file: file.to_owned(),
                hint: hint(shape, path, key),
                key: key_path,
            });
        }
        match (shape.child(key), value) {
            (Some((Nesting::Table, child)), Value::Table(t)) => {
                walk(t, child, &key_path, file, warnings)?;
            }
            (Some((Nesting::Array, child)), Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Table(t) = item {
                        walk(t, child, &format!("{key_path}[{i}]"), file, warnings)?;
                    }
                }
            }
            (Some((Nesting::Map, child)), Value::Table(t)) => {
                for (name, item) in t {
                    if let Value::Table(t) = item {
                        walk(t, child, &join(&key_path, name), file, warnings)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The same key elsewhere beats a near spelling here: it is the likelier mistake.
fn hint(shape: Shape, path: &str, key: &str) -> KeyHint {
    if let Some(other) = Shape::ALL.into_iter().find(|s| *s != shape && s.has(key)) {
        return KeyHint::BelongsIn(other.path());
    }
    let candidates = shape
        .known()
        .iter()
        .copied()
        .chain(shape.unsupported().iter().map(|(k, _)| *k));
    match nearest(key, candidates) {
        Some(near) => KeyHint::Nearest(join(path, near)),
        None => KeyHint::Nothing,
    }
}

/// The candidate closest to `word` in edit distance, if close enough to be a typo.
pub(crate) fn nearest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Appends `key` to a dotted path, quoting it as TOML would when it is not a bare key.
pub(crate) fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// The field names serde expects for the struct `T`, read by asking `T` to deserialize
/// itself from a probe that records them and stops.
fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut names: &'static [&'static str] = &[];
    // The probe always answers with an error; only the recorded names matter.
    let _probed = T::deserialize(Probe(&mut names));
    names
}

struct Probe<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<Vec<Warning>, ConfigError> {
        let table: Table = toml::from_str(text).expect("test TOML");
        check(&table, Path::new("t.toml"))
    }

    fn unknown(text: &str) -> (String, KeyHint) {
        match run(text) {
            Err(ConfigError::UnknownKey { key, hint, .. }) => (key, hint),
            other => panic!("expected an unknown key, got {other:?}"),
        }
    }

    #[test]
    fn field_lists_come_from_the_structs() {
        assert!(Shape::Root.known().contains(&"listen_port"));
        assert!(Shape::ProxyProtocol.known().contains(&"trusted_proxies"));
        assert!(Shape::KernelFilter.known().contains(&"observe_only"));
        assert!(!Shape::Root.known().contains(&"sticky_cookie_secret"));
    }

    #[test]
    fn tlv_header_keys_are_exactly_the_tlv_fields() {
        let keys: Vec<&str> = crate::config::TlvField::ALL
            .iter()
            .map(|f| f.key())
            .collect();
        assert_eq!(Shape::TlvHeaders.known(), keys);
    }

    #[test]
    fn trustgate_keys_in_rpxy_tables_are_placed_where_they_belong() {
        let (key, hint) = unknown("[apps.a]\nssl_cn = \"X-Client-CN\"");
        assert_eq!(key, "apps.a.ssl_cn");
        assert_eq!(
            hint,
            KeyHint::BelongsIn("apps.*.proxy_protocol_tlv_headers")
        );
        let (key, hint) =
            unknown("[apps.a.proxy_protocol_tlv_headers]\nunique-id = \"X-Request-Id\"");
        assert_eq!(key, "apps.a.proxy_protocol_tlv_headers.unique-id");
        assert_eq!(
            hint,
            KeyHint::Nearest("apps.a.proxy_protocol_tlv_headers.unique_id".into())
        );
        let (_, hint) = unknown(
            "[[apps.a.reverse_proxy]]\nupstream = [{ location = \"x\", send_proxy_protocl = \"v2\" }]",
        );
        assert_eq!(
            hint,
            KeyHint::Nearest("apps.a.reverse_proxy[0].upstream[0].send_proxy_protocol".into())
        );
    }

    #[test]
    fn known_keys_pass_without_warnings() {
        let text = r#"
            listen_port = 80
            [apps.a]
            server_name = "a"
            reverse_proxy = [{ upstream = [{ location = "x" }] }]
            [experimental.tcp_recv_proxy_protocol.kernel_filter]
            mode = "socket"
        "#;
        assert_eq!(run(text).expect("valid keys"), vec![]);
    }

    #[test]
    fn misspelt_trust_key_is_refused_with_the_nearest_key() {
        let (key, hint) =
            unknown("[experimental.tcp_recv_proxy_protocol]\ntrusted_proxie = [\"10.0.0.0/8\"]");
        assert_eq!(key, "experimental.tcp_recv_proxy_protocol.trusted_proxie");
        assert_eq!(
            hint,
            KeyHint::Nearest("experimental.tcp_recv_proxy_protocol.trusted_proxies".into())
        );
    }

    #[test]
    fn key_in_the_wrong_table_names_its_table() {
        let (key, hint) = unknown("trusted_proxies = [\"10.0.0.0/8\"]");
        assert_eq!(key, "trusted_proxies");
        assert_eq!(
            hint,
            KeyHint::BelongsIn("experimental.tcp_recv_proxy_protocol")
        );
        let (_, hint) = unknown("[apps.a]\nlisten_port = 80");
        assert_eq!(hint, KeyHint::BelongsIn(""));
    }

    #[test]
    fn nothing_close_gives_no_suggestion() {
        let (key, hint) = unknown("[apps.web]\nallowhosts = [\"127.0.0.1\"]");
        assert_eq!(key, "apps.web.allowhosts");
        assert_eq!(hint, KeyHint::Nothing);
    }

    #[test]
    fn unknown_keys_inside_arrays_carry_the_index() {
        let (key, _) = unknown(
            "[[apps.a.reverse_proxy]]\nupstream = [{ location = \"x\" }, { locatoin = \"y\" }]",
        );
        assert_eq!(key, "apps.a.reverse_proxy[0].upstream[1].locatoin");
    }

    #[test]
    fn unsupported_keys_warn_once_each_and_their_contents_are_not_walked() {
        let warnings = run(r#"
            sticky_cookie_secret = "x"
            [experimental.h3]
            anything_at_all = 1
            [[apps.a.reverse_proxy]]
            health_check = true
            [[apps.a.reverse_proxy]]
            health_check = false
        "#)
        .expect("unsupported keys load");
        let keys: Vec<_> = warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "apps.a.reverse_proxy[0].health_check",
                "experimental.h3",
                "sticky_cookie_secret"
            ]
        );
    }

    #[test]
    fn odd_app_names_are_quoted_in_paths() {
        let (key, _) = unknown("[apps.\"my.app\"]\nserver_nme = \"x\"");
        assert_eq!(key, "apps.\"my.app\".server_nme");
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("mode", "mode"), 0);
        assert_eq!(distance("mod", "mode"), 1);
        assert_eq!(distance("xdp_mdoe", "xdp_mode"), 2);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(
            nearest("tiemout", ["timeout", "trusted_proxies"]),
            Some("timeout")
        );
        assert_eq!(nearest("zzz", ["timeout"]), None);
    }
}
