//! Which keys may appear where, and serde's names for them. A key is known when a struct
//! in `file` declares it; `serde_ignored` reports any other during the one deserialisation,
//! and it is refused with its path and the nearest known key: a misspelt key must never
//! silently change behaviour (least of all who is trusted). rpxy keys trustgate lacks are
//! `file::Unsupported` and warn once each; [`names`] also lists an enum's values.

use std::path::Path;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

use super::TlvField;
use super::error::{ConfigError, KeyHint};
use super::file::{
    AccessLogFile, AppFile, ConfigFile, ExperimentalFile, KernelFilterFile, MetricsFile,
    ProxyProtocolFile, RouteFile, TlsFile, Unsupported, UpstreamFile,
};
use super::warning::{Warning, WarningKind};

/// Deserialises the file text. An unknown key is refused even when a value after it has
/// the wrong type; of several, the first in a walk of the tables with their keys sorted is
/// named. Warns about each unsupported key that asks for its feature.
pub(crate) fn deserialize(
    text: &str,
    file: &Path,
) -> Result<(ConfigFile, Vec<Warning>), ConfigError> {
    let syntax = |cause| ConfigError::Syntax {
        path: file.to_owned(),
        cause,
    };
    let deserializer = toml::Deserializer::parse(text).map_err(syntax)?;
    let mut ignored = Vec::new();
    let parsed = serde_ignored::deserialize(deserializer, |path| {
        let mut segments = Vec::new();
        push_segments(&path, &mut segments);
        ignored.push(segments);
    });
    if let Some(first) = ignored.into_iter().min() {
        return Err(unknown(first, file));
    }
    let parsed: ConfigFile = parsed.map_err(syntax)?;
    let warnings = unsupported(&parsed)
        .into_iter()
        .map(|(key, feature)| Warning {
            file: file.to_owned(),
            key,
            kind: WarningKind::Unsupported { feature },
        })
        .collect();
    Ok((parsed, warnings))
}

/// One step of a key path. The derived order sorts keys as a `toml::Table` does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Key(String),
    Index(usize),
}

fn push_segments(path: &serde_ignored::Path<'_>, out: &mut Vec<Segment>) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            push_segments(parent, out);
            out.push(Segment::Index(*index));
        }
        P::Map { parent, key } => {
            push_segments(parent, out);
            out.push(Segment::Key(key.clone()));
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            push_segments(parent, out);
        }
    }
}

/// `apps."my.app".reverse_proxy[0]`: keys joined by dots, indexes in brackets.
fn display(segments: &[Segment]) -> String {
    segments.iter().fold(String::new(), |path, s| match s {
        Segment::Key(key) => join(&path, key),
        Segment::Index(i) => format!("{path}[{i}]"),
    })
}

/// Where a table sits, as [`TABLES`] names it: no indexes, `*` for the app name.
fn pattern(segments: &[Segment]) -> String {
    let mut keys = segments.iter().filter_map(|s| match s {
        Segment::Key(key) => Some(key.as_str()),
        Segment::Index(_) => None,
    });
    let mut parts = Vec::new();
    if let Some(first) = keys.next() {
        parts.push(first);
        if first == "apps" && keys.next().is_some() {
            parts.push("*");
        }
    }
    parts.extend(keys);
    parts.join(".")
}

fn unknown(mut segments: Vec<Segment>, file: &Path) -> ConfigError {
    let key_path = display(&segments);
    let key = match segments.pop() {
        Some(Segment::Key(key)) => key,
        // serde_ignored reports only the keys of maps.
        Some(Segment::Index(_)) | None => String::new(),
    };
    ConfigError::UnknownKey {
        file: file.to_owned(),
        hint: hint(&pattern(&segments), &display(&segments), &key),
        key: key_path,
    }
}

/// The keys of one table's struct.
type Fields = fn() -> &'static [&'static str];

/// Each table of the file, by where it sits (`*` stands for an app name), and its keys.
/// The order is the order in which "this key belongs in" looks.
const TABLES: [(&str, Fields); 11] = [
    ("", names::<ConfigFile>),
    ("apps.*", names::<AppFile>),
    ("apps.*.tls", names::<TlsFile>),
    ("apps.*.proxy_protocol_tlv_headers", names::<TlvField>),
    ("apps.*.reverse_proxy", names::<RouteFile>),
    ("apps.*.reverse_proxy.upstream", names::<UpstreamFile>),
    ("experimental", names::<ExperimentalFile>),
    (
        "experimental.tcp_recv_proxy_protocol",
        names::<ProxyProtocolFile>,
    ),
    (
        "experimental.tcp_recv_proxy_protocol.kernel_filter",
        names::<KernelFilterFile>,
    ),
    ("metrics", names::<MetricsFile>),
    ("access_log", names::<AccessLogFile>),
];

fn known(table: &str) -> &'static [&'static str] {
    TABLES
        .iter()
        .find(|(path, _)| *path == table)
        .map_or(&[], |(_, fields)| fields())
}

/// The same key elsewhere beats a near spelling here: it is the likelier mistake.
fn hint(table: &str, path: &str, key: &str) -> KeyHint {
    if let Some((other, _)) = TABLES
        .iter()
        .find(|(other, fields)| *other != table && fields().contains(&key))
    {
        return KeyHint::BelongsIn(other);
    }
    match nearest(key, known(table).iter().copied()) {
        Some(near) => KeyHint::Nearest(join(path, near)),
        None => KeyHint::Nothing,
    }
}

/// The unsupported keys that ask for their feature, as (key path, feature), in the order
/// of [`deserialize`]'s walk.
fn unsupported(file: &ConfigFile) -> Vec<(String, &'static str)> {
    let asked = |key: &Option<Unsupported>| key.is_some_and(|k| k.asked);
    let mut found = Vec::new();
    for (name, app) in file.apps.iter().flatten() {
        for (i, route) in app.reverse_proxy.iter().flatten().enumerate() {
            if asked(&route.health_check) {
                let key = format!("{}.reverse_proxy[{i}].health_check", join("apps", name));
                found.push((key, "active upstream health checking"));
            }
        }
    }
    if let Some(x) = &file.experimental {
        let keys = [
            ("experimental.acme", &x.acme, "ACME certificate issuance"),
            ("experimental.cache", &x.cache, "the response cache"),
            ("experimental.h3", &x.h3, "HTTP/3"),
        ];
        for (key, value, feature) in keys {
            if asked(value) {
                found.push((key.to_owned(), feature));
            }
        }
    }
    if asked(&file.sticky_cookie_secret) {
        found.push((
            "sticky_cookie_secret".to_owned(),
            "sticky-session load balancing (sticky_cookie_secret)",
        ));
    }
    found
}

/// The candidate closest to `word` in edit distance, if close enough to be a typo.
pub(crate) fn nearest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
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

/// The field names of the struct `T`, or the variant names of the enum `T`, as serde
/// spells them: read by asking `T` to deserialize itself from a probe that records them
/// and stops.
pub(crate) fn names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut names: &'static [&'static str] = &[];
    // The probe always answers with an error; only the recorded names matter.
    let _probed = T::deserialize(Probe(&mut names));
    names
}

/// The variant of the unit-variant enum `T` whose serde name is `name`.
pub(crate) fn variant<T: DeserializeOwned>(name: &str) -> Option<T> {
    T::deserialize(IntoDeserializer::<de::value::Error>::into_deserializer(
        name,
    ))
    .ok()
}

/// The serde name of a variant of the unit-variant enum `T`, by its index (`v as usize`).
pub(crate) fn variant_name<T: DeserializeOwned>(index: usize) -> &'static str {
    names::<T>().get(index).copied().unwrap_or_default()
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

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = variants;
        Err(de::Error::custom("probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<Vec<Warning>, ConfigError> {
        deserialize(text, Path::new("t.toml")).map(|(_, warnings)| warnings)
    }

    fn unknown(text: &str) -> (String, KeyHint) {
        match run(text) {
            Err(ConfigError::UnknownKey { key, hint, .. }) => (key, hint),
            other => panic!("expected an unknown key, got {other:?}"),
        }
    }

    #[test]
    fn field_lists_come_from_the_structs() {
        assert!(known("").contains(&"listen_port"));
        assert!(known("experimental.tcp_recv_proxy_protocol").contains(&"trusted_proxies"));
        assert!(
            known("experimental.tcp_recv_proxy_protocol.kernel_filter").contains(&"observe_only")
        );
    }

    #[test]
    fn tlv_header_keys_are_exactly_the_tlv_fields() {
        let keys: Vec<&str> = TlvField::all().iter().map(|f| f.key()).collect();
        assert_eq!(known("apps.*.proxy_protocol_tlv_headers"), keys);
    }

    #[test]
    fn tlv_fields_are_listed_in_variant_order() {
        let all = TlvField::all();
        assert_eq!(all.len(), 15);
        assert_eq!(all.first(), Some(&TlvField::Alpn));
        assert_eq!(all.last(), Some(&TlvField::GcpPscConnectionId));
        assert_eq!(TlvField::SslSigScheme.key(), "ssl_sig_scheme");
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
    fn the_first_unknown_key_in_sorted_order_is_named_before_a_wrong_type_after_it() {
        let (key, _) = unknown("zzz = 1\n[apps.a]\nserver_nme = 1\n[metrics]\nlisten = 5");
        assert_eq!(key, "apps.a.server_nme");
    }

    #[test]
    fn odd_app_names_are_quoted_in_paths() {
        let (key, _) = unknown("[apps.\"my.app\"]\nserver_nme = \"x\"");
        assert_eq!(key, "apps.\"my.app\".server_nme");
    }

    #[test]
    fn nearest_counts_edits() {
        assert_eq!(strsim::levenshtein("mode", "mode"), 0);
        assert_eq!(strsim::levenshtein("mod", "mode"), 1);
        assert_eq!(strsim::levenshtein("xdp_mdoe", "xdp_mode"), 2);
        assert_eq!(strsim::levenshtein("", "abc"), 3);
        assert_eq!(
            nearest("tiemout", ["timeout", "trusted_proxies"]),
            Some("timeout")
        );
        assert_eq!(nearest("zzz", ["timeout"]), None);
    }
}
