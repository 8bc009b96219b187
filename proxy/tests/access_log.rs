//! The access log end to end: one line per request, on its own target, with the client
//! recovered from the PROXY header, the upstream, the status and the body bytes. In a test
//! binary of its own: tracing caches whether a call site is wanted process-wide, and other
//! tests logging from other threads race with the scoped subscriber this one installs.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::forwarder::{config, get, proxy, send, text};
use common::upstream;
use http::StatusCode;
use proxy::forward::ACCESS_TARGET;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

/// Generous bound on waiting for a line that should already be there.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// Collects the fields of access-log events.
struct AccessLines(mpsc::UnboundedSender<HashMap<String, String>>);

struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for AccessLines {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() == ACCESS_TARGET {
            let mut fields = Fields(HashMap::new());
            event.record(&mut fields);
            let _ = self.0.send(fields.0);
        }
    }
}

#[tokio::test]
async fn each_request_writes_one_access_line_with_the_recovered_client() {
    let (tx, mut lines) = mpsc::unbounded_channel();
    // The test runtime is single-threaded: every task of this test logs on this thread,
    // and this is the only test in the binary.
    let _guard = tracing::subscriber::set_default(Registry::default().with(AccessLines(tx)));
    let demo = upstream::demo().await;
    let p = proxy(&config("redact_query_in_access_log = true", &[demo], "")).await;
    let body = text(send(p.addr, get("/logged?token=s3cret&x")).await).await;
    let line = tokio::time::timeout(HANG_GUARD, lines.recv())
        .await
        .expect("an access line")
        .expect("the channel is open");
    let field = |name: &str| line.get(name).map(String::as_str);
    assert_eq!(field("client"), Some("203.0.113.7"));
    assert_eq!(field("client_port"), Some("4711"));
    assert_eq!(field("method"), Some("GET"));
    assert_eq!(field("host"), Some("app.example"));
    assert_eq!(field("path"), Some("/logged?token=<redacted>&x"));
    assert_eq!(field("version"), Some("HTTP/1.1"));
    assert_eq!(field("status"), Some("200"));
    let upstream = demo.to_string();
    assert_eq!(field("upstream"), Some(upstream.as_str()));
    let bytes = body.len().to_string();
    assert_eq!(field("bytes"), Some(bytes.as_str()));
    assert!(field("duration_ms").is_some());

    let refused = send(p.addr, get("/../x")).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    drop(refused);
    let line = tokio::time::timeout(HANG_GUARD, lines.recv())
        .await
        .expect("an access line")
        .expect("the channel is open");
    assert_eq!(line.get("status").map(String::as_str), Some("400"));
    assert_eq!(line.get("upstream").map(String::as_str), Some("-"));
    assert!(lines.try_recv().is_err(), "one line per request");
}
