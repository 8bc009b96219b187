//! [`Forwarder::forward`] as named phases, in Pingora's vocabulary: `route` (what the
//! request names; the app, the route and the upstream, or the proxy's own answer),
//! `upstream_request` (the request as the upstream gets it: the head cleaned and
//! rewritten with the client's identity and the PROXY v2 TLVs, the body bounded), `send`
//! (a turn under the per-client cap, the pooled upstream connection, the response head)
//! and `response` (a 101 tunnelled, hop-by-hop headers stripped). The log phase is
//! [`Forwarder::handle`]'s, once the response is made.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use tracing::debug;

use super::access::Pending;
use super::body::{BodyEnd, BodyWatch, RequestBody};
use super::client::Protocol;
use super::headers::{self, Downstream};
use super::pool::{GiveBack, Key};
use super::refusal::Refusal;
use super::request::{self, RequestHost};
use super::route::{AppRoutes, RouteEntry, Target};
use super::{Answer, ConnContext, Forwarder, Turn, client, hygiene, tlv, upgrade};
use crate::proxy_protocol;

/// Where `route` sends a request.
struct Routed<'f> {
    app: &'f AppRoutes,
    route: &'f RouteEntry,
    target: &'f Target,
    host: Option<RequestHost>,
    /// The upstream's URI: the target's scheme and authority, the route's path.
    uri: Uri,
}

/// The request as `upstream_request` made it, for `send`.
struct Outgoing {
    request: Request<RequestBody>,
    protocol: Protocol,
    /// How the body ends, for the wait on the response head.
    watch: BodyWatch,
}

/// A protocol switch the client asked for (`upgrade_protocols`), for `response`.
struct Switch {
    asked: Option<HeaderValue>,
    client: Option<OnUpgrade>,
}

impl Forwarder {
    /// A request's way upstream and back, phase by phase; `Err` is the proxy's own
    /// answer. `record`, when requests are logged, gets the host and the upstream.
    pub(super) async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnContext,
        record: Option<&mut Pending>,
    ) -> Result<(Response<Incoming>, GiveBack, Option<Turn>), Answer> {
        let routed = self.route(&req, conn, record)?;
        let target = routed.target;
        let switch = self.switch(&mut req);
        let outgoing = self.upstream_request(req, conn, routed, switch.asked.as_ref())?;
        let (response, give_back, turn) = self.send(outgoing, conn, target).await?;
        let response = self.response(response, switch, target)?;
        Ok((response, give_back, turn))
    }

    /// Route: what the request names (its host; a dot segment is refused), the app (by
    /// Host, or on the TLS port the app whose certificate was served), the HTTPS
    /// redirect, the longest matching path prefix, the body limit by the declared size,
    /// and the upstream (`RouteEntry::pick`) with the URI it gets.
    fn route<'f>(
        &'f self,
        req: &Request<Incoming>,
        conn: &ConnContext,
        mut record: Option<&mut Pending>,
    ) -> Result<Routed<'f>, Answer> {
        if req.method() == Method::CONNECT {
            return Err(Answer::Status(StatusCode::METHOD_NOT_ALLOWED));
        }
        let host = request::request_host(req.uri(), req.headers(), req.version())?;
        if let Some(record) = record.as_deref_mut()
            && let Some(host) = &host
        {
            record.record.set_host(host.original.as_str());
        }
        if request::has_dot_segment(req.uri().path()) {
            return Err(Refusal::BadRequest.into());
        }
        let app = self.router.app_for(host.as_ref(), conn)?;
        if !conn.tls
            && app.https_redirection
            && let Some(location) = self.router.redirect_location(app, req.uri())
        {
            return Err(Answer::Redirect(location));
        }
        let route = app.route_for(req.uri().path()).ok_or(Refusal::NotFound)?;
        if self
            .body_limit
            .is_some_and(|limit| req.body().size_hint().lower() > limit)
        {
            self.metrics.bodies_too_large.inc();
            return Err(Answer::Status(StatusCode::PAYLOAD_TOO_LARGE));
        }
        let target = route.pick();
        if let Some(record) = record {
            record.record.upstream = Some(target.authority.clone());
        }
        let path = route.upstream_path(req.uri()).ok_or(Refusal::BadRequest)?;
        let uri = Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|error| {
                debug!(%error, "upstream URI not buildable");
                Refusal::BadRequest
            })?;
        Ok(Routed {
            app,
            route,
            target,
            host,
            uri,
        })
    }

    /// The protocol switch `req` asks for, if `upgrade_protocols` allows it, with the
    /// client side of the upgrade taken before the request is taken apart.
    fn switch(&self, req: &mut Request<Incoming>) -> Switch {
        let asked = upgrade::requested(req.version(), req.headers(), &self.upgrade_protocols);
        let client = asked.as_ref().map(|_| hyper::upgrade::on(&mut *req));
        Switch { asked, client }
    }

    /// Upstream request: the protocol to the upstream, the head cleaned (`NameGuard`,
    /// h2 cookie crumbs joined for HTTP/1), rewritten (`headers::prepare_request`: hop by
    /// hop stripped, the client's identity, `Host`) and given the app's TLV headers; the
    /// body bounded by `request_max_body_size` and `request_body_timeout`, its trailers
    /// guarded.
    fn upstream_request(
        &self,
        req: Request<Incoming>,
        conn: &ConnContext,
        routed: Routed<'_>,
        upgrade: Option<&HeaderValue>,
    ) -> Result<Outgoing, Answer> {
        let Routed {
            app,
            route,
            target,
            host,
            uri,
        } = routed;
        let protocol = client::protocol(
            route.options.http_version,
            target.tls,
            req.version(),
            req.headers(),
            upgrade.is_some(),
        );
        let (mut parts, body) = req.into_parts();
        let mut headers = parts.headers;
        app.names.clean_head(&mut headers);
        if parts.version == Version::HTTP_2 && protocol.version() != Version::HTTP_2 {
            hygiene::join_cookie_crumbs(&mut headers);
        }
        let downstream = Downstream {
            client: conn.client,
            front: conn.front(),
            tls: conn.tls,
            host: host.as_ref().map(|h| h.original.as_str()),
        };
        headers::prepare_request(
            &mut headers,
            &downstream,
            &self.trusted,
            &route.options,
            &target.authority,
            upgrade,
        )
        .map_err(|error| {
            debug!(error = %error, "request headers not forwardable");
            Refusal::BadRequest
        })?;
        let tlvs = conn.proxy.as_ref().map(|p| p.tlvs()).unwrap_or_default();
        tlv::apply(&mut headers, &app.tlv_headers, tlvs);
        let (body, watch) = RequestBody::new(body, self.body_limit, self.timeouts.request_body);
        let end = parts.extensions.remove::<BodyEnd>();
        let body = body.guarding_trailers(Arc::clone(&app.names)).telling(end);
        let mut request = Request::new(body);
        *request.method_mut() = parts.method;
        *request.uri_mut() = uri;
        *request.version_mut() = protocol.version();
        *request.headers_mut() = headers;
        Ok(Outgoing {
            request,
            protocol,
            watch,
        })
    }

    /// Send: a turn under `max_upstream_connections_per_client` (held until the response
    /// body ends, so h2 streams beyond the cap wait here holding no upstream
    /// connection), then the request through the pool for its key (authority, protocol,
    /// TLS, PROXY header), and the wait for the response head.
    async fn send(
        &self,
        outgoing: Outgoing,
        conn: &ConnContext,
        target: &Target,
    ) -> Result<(Response<Incoming>, GiveBack, Option<Turn>), Answer> {
        let Outgoing {
            request,
            protocol,
            watch: BodyWatch { done, fate },
        } = outgoing;
        let proxy_header = target
            .send_proxy_protocol
            .map(|version| proxy_protocol::encode(version, conn.client, conn.front()));
        let key = Key {
            authority: &target.authority,
            protocol,
            tls: target.tls,
            header: proxy_header.as_deref(),
        };
        let pool = self.client.pool(&key, &conn.upstream_pools);
        let turn = conn
            .upstream_pools
            .turns
            .take(self.per_client, self.client.slots())
            .await;
        match self.client.send(pool, &key, request, done, &fate).await {
            Ok((response, give_back)) => Ok((response, give_back, turn)),
            Err(error) => Err(self.upstream_failed(&error, target)),
        }
    }

    /// Response: a 101 checked against what was asked and tunnelled (`upgrade::tunnel`,
    /// idle-bounded by `tunnel_idle_timeout`), a switch nobody asked for a 502; then the
    /// hop-by-hop headers stripped.
    fn response(
        &self,
        mut response: Response<Incoming>,
        switch: Switch,
        target: &Target,
    ) -> Result<Response<Incoming>, Answer> {
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let (Some(asked), Some(client_upgrade)) = (switch.asked, switch.client) else {
                debug!(upstream = %target.authority, "upstream switched protocols unasked");
                return Err(Answer::Status(StatusCode::BAD_GATEWAY));
            };
            if !upgrade::matches(&asked, &response) {
                debug!(upstream = %target.authority, "upstream switched to another protocol");
                return Err(Answer::Status(StatusCode::BAD_GATEWAY));
            }
            let idle = self.timeouts.tunnel_idle.map(|limit| upgrade::Idle {
                limit,
                counts: Arc::clone(&self.metrics.timeouts),
            });
            upgrade::tunnel(
                client_upgrade,
                &mut response,
                target.authority.to_string(),
                idle,
            );
        }
        headers::prepare_response(response.headers_mut(), switching);
        Ok(response)
    }
}
