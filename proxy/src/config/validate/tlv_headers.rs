//! `apps.NAME.proxy_protocol_tlv_headers`: which PROXY v2 TLVs become which request
//! headers. Every name must be a valid header name, claimed by one TLV only, and none of
//! the headers the forwarder sets or removes itself (`Host`, `X-Forwarded-*` it writes,
//! hop-by-hop headers, `Content-Length`), so a TLV can never overwrite client identity.

use http::header::HeaderName;

use super::{Cx, shown};
use crate::config::TlvHeader;
use crate::config::error::{ConfigError, ValueError};
use crate::config::file::TlvHeadersFile;

/// The app's TLV headers, in [`TlvField`] order; `key` is the table's path.
pub(super) fn tlv_headers(
    cx: &Cx<'_>,
    key: &str,
    file: Option<TlvHeadersFile>,
) -> Result<Vec<TlvHeader>, ConfigError> {
    let Some(file) = file else {
        return Ok(Vec::new());
    };
    let mut out: Vec<TlvHeader> = Vec::new();
    for (tlv, name) in file.0 {
        let field_key = format!("{key}.{}", tlv.key());
        let invalid = |problem| cx.invalid(&field_key, shown(&name), problem);
        if name.is_empty() {
            return Err(invalid(ValueError::Empty));
        }
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|source| invalid(ValueError::BadHeaderName { source }))?;
        if crate::header_names::is_managed(&header) {
            return Err(invalid(ValueError::ManagedHeaderName));
        }
        if let Some(other) = out.iter().find(|h| h.name == header) {
            return Err(invalid(ValueError::DuplicateHeaderName {
                other: other.tlv.key(),
            }));
        }
        out.push(TlvHeader { tlv, name: header });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{invalid, ok};
    use super::*;
    use crate::config::warning::WarningKind;
    use crate::config::{App, TlvField};

    const RECEIVE: &str = "listen_port = 80\n\
         [experimental.tcp_recv_proxy_protocol]\ntrusted_proxies = [\"10.0.0.0/8\"]\n";
    const UP: &str = "[[apps.a.reverse_proxy]]\nupstream = [{ location = \"127.0.0.1:8081\" }]\n";

    fn text(top: &str, table: &str) -> String {
        format!(
            "{top}[apps.a]\nserver_name = \"a.example\"\n\
             proxy_protocol_tlv_headers = {{ {table} }}\n{UP}"
        )
    }

    fn app(table: &str) -> App {
        let (c, w) = ok(&text(RECEIVE, table));
        assert!(w.is_empty(), "{w:?}");
        c.apps.into_iter().next().expect("one app")
    }

    #[test]
    fn every_tlv_key_maps_to_a_lowercased_header_in_a_fixed_order() {
        let table: Vec<String> = TlvField::all()
            .iter()
            .rev()
            .map(|f| format!("{} = \"X-PP-{}\"", f.key(), f.key().replace('_', "-")))
            .collect();
        let a = app(&table.join(", "));
        let got: Vec<(TlvField, &str)> = a
            .tlv_headers
            .iter()
            .map(|h| (h.tlv, h.name.as_str()))
            .collect();
        let expected: Vec<(TlvField, String)> = TlvField::all()
            .iter()
            .map(|f| (*f, format!("x-pp-{}", f.key().replace('_', "-"))))
            .collect();
        assert_eq!(got.len(), expected.len());
        for ((tlv, name), (etlv, ename)) in got.iter().zip(&expected) {
            assert_eq!((tlv, *name), (etlv, ename.as_str()));
        }
    }

    #[test]
    fn without_the_table_no_header_is_mapped() {
        let (c, _) = ok(&format!("{RECEIVE}[apps.a]\nserver_name = \"a\"\n{UP}"));
        assert!(c.apps[0].tlv_headers.is_empty());
    }

    #[test]
    fn names_must_be_header_names() {
        for bad in ["X Client", "X-Client:", "x\r\nevil", "é"] {
            let (key, p) = invalid(&text(RECEIVE, &format!("ssl_cn = {bad:?}")));
            assert_eq!(key, "apps.a.proxy_protocol_tlv_headers.ssl_cn");
            assert!(
                matches!(p, ValueError::BadHeaderName { .. }),
                "{bad:?}: {p:?}"
            );
        }
        let (_, p) = invalid(&text(RECEIVE, "ssl_cn = \"\""));
        assert!(matches!(p, ValueError::Empty));
    }

    #[test]
    fn headers_the_forwarder_sets_cannot_be_claimed() {
        for taken in [
            "Host",
            "X-Forwarded-For",
            "x-real-ip",
            "Forwarded",
            "Connection",
            "Transfer-Encoding",
            "Content-Length",
        ] {
            let (key, p) = invalid(&text(RECEIVE, &format!("authority = {taken:?}")));
            assert_eq!(key, "apps.a.proxy_protocol_tlv_headers.authority");
            assert!(matches!(p, ValueError::ManagedHeaderName), "{taken}: {p:?}");
        }
        // Other X-Forwarded- names are free: they are only removed, never set.
        let a = app("ssl_cn = \"X-Forwarded-Client-CN\"");
        assert_eq!(a.tlv_headers[0].name, "x-forwarded-client-cn");
    }

    #[test]
    fn one_header_name_serves_one_tlv() {
        let (key, p) = invalid(&text(RECEIVE, "authority = \"X-TLV\", ssl_cn = \"x-tlv\""));
        assert_eq!(key, "apps.a.proxy_protocol_tlv_headers.ssl_cn");
        assert!(matches!(
            p,
            ValueError::DuplicateHeaderName { other: "authority" }
        ));
    }

    #[test]
    fn without_proxy_protocol_the_table_warns_and_still_loads() {
        let (c, w) = ok(&text("listen_port = 80\n", "unique_id = \"X-Request-Id\""));
        assert_eq!(c.apps[0].tlv_headers.len(), 1);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "apps.a.proxy_protocol_tlv_headers");
        assert_eq!(w[0].kind, WarningKind::TlvHeadersNeverSet);
    }
}
