//! The client's address as the request log records it: the TCP peer, unless the peer is a
//! configured proxy (`HTTP_TRUSTED_PROXIES`), whose `X-Forwarded-For` is then believed up
//! to the first hop that is not itself trusted. Anyone else's forwarding headers are
//! dropped, so a caller cannot choose the address it is logged under.

use std::net::IpAddr;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, FORWARDED};
use actix_web::middleware::Next;
use actix_web::web;
use ipnet::IpNet;

/// Peers allowed to name the client.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    fn trust(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`, reading `forwarded_for` (the header's values in order)
    /// from the right while the hops are trusted.
    pub fn client<'a>(&self, peer: IpAddr, forwarded_for: impl Iterator<Item = &'a str>) -> IpAddr {
        if !self.trust(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for.flat_map(|v| v.split(',')).collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                break;
            };
            client = ip;
            if !self.trust(ip) {
                break;
            }
        }
        client
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Middleware (outermost): leaves `X-Forwarded-For` holding only the client as resolved
/// above, which is where the request log's `client_ip` is read from.
pub async fn resolve(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let client = req.peer_addr().map(|peer| {
        let proxies = req
            .app_data::<web::Data<TrustedProxies>>()
            .expect("TrustedProxies is registered in startup");
        proxies.client(
            peer.ip(),
            req.headers()
                .get_all(X_FORWARDED_FOR)
                .filter_map(|v| v.to_str().ok()),
        )
    });
    let headers = req.headers_mut();
    headers.remove(FORWARDED);
    headers.remove(X_FORWARDED_FOR);
    if let Some(value) = client.and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok()) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let none = TrustedProxies::default();
        let lb = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        let spoof = ["6.6.6.6"];
        assert_eq!(none.client(ip("1.2.3.4"), spoof.into_iter()), ip("1.2.3.4"));
        assert_eq!(lb.client(ip("1.2.3.4"), spoof.into_iter()), ip("1.2.3.4"));
        // Behind the balancer: the rightmost hop it did not add itself.
        let chain = ["6.6.6.6, 5.5.5.5", "10.0.0.7"];
        assert_eq!(lb.client(ip("10.0.0.2"), chain.into_iter()), ip("5.5.5.5"));
        assert_eq!(lb.client(ip("10.0.0.2"), [].into_iter()), ip("10.0.0.2"));
        assert_eq!(
            lb.client(ip("10.0.0.2"), ["junk, 10.0.0.9"].into_iter()),
            ip("10.0.0.9")
        );
    }

    /// What the request log reads: actix's `realip_remote_addr`, behind the middleware.
    async fn logged_ip(proxies: TrustedProxies, peer: &str, headers: &[(&str, &str)]) -> String {
        use actix_web::{middleware, test, App, HttpRequest};
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(proxies))
                .wrap(middleware::from_fn(resolve))
                .route(
                    "/",
                    web::get().to(|req: HttpRequest| async move {
                        req.connection_info()
                            .realip_remote_addr()
                            .unwrap_or_default()
                            .to_owned()
                    }),
                ),
        )
        .await;
        let mut request = test::TestRequest::get()
            .uri("/")
            .peer_addr(peer.parse().unwrap());
        for header in headers {
            request = request.insert_header(*header);
        }
        let body = test::call_and_read_body(&app, request.to_request()).await;
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[actix_web::test]
    async fn the_logged_client_ip_cannot_be_chosen_by_an_untrusted_caller() {
        let spoofed = [("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=7.7.7.7")];
        let none = TrustedProxies::default();
        assert_eq!(logged_ip(none, "1.2.3.4:5000", &spoofed).await, "1.2.3.4");
        let lb = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        let via_lb = [
            ("x-forwarded-for", "6.6.6.6, 5.5.5.5"),
            ("forwarded", "for=7.7.7.7"),
        ];
        assert_eq!(logged_ip(lb, "10.0.0.2:5000", &via_lb).await, "5.5.5.5");
    }
}
