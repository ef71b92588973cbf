//! Every request body is read under one deadline counted from its head, so a client that
//! trickles a body cannot hold a connection slot (the head timeout stops at the head).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::HttpMessage;
use futures_util::Stream;
use tokio::time::Sleep;

/// How long a whole request body may take to arrive (`HTTP_BODY_TIMEOUT_SECS`).
#[derive(Clone, Copy, Debug)]
pub struct BodyDeadline(pub Duration);

/// Middleware: wraps the body of any request that has one in a [`Deadlined`] stream.
pub async fn limit_body_time(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if has_body(&req) {
        let limit = req
            .app_data::<web::Data<BodyDeadline>>()
            .map(|d| d.0)
            .expect("BodyDeadline is registered in startup");
        let body = Deadlined {
            inner: req.take_payload(),
            timer: Box::pin(tokio::time::sleep(limit)),
            limit,
            expired: false,
        };
        req.set_payload(Payload::Stream {
            payload: Box::pin(body),
        });
    }
    next.call(req).await
}

/// Bodiless requests (most GETs) skip the timer.
fn has_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    match headers.get(header::CONTENT_LENGTH) {
        Some(length) => length.to_str().map_or(true, |v| v.trim() != "0"),
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

/// A body stream that fails with [`io::ErrorKind::TimedOut`] once its deadline passes.
struct Deadlined {
    inner: Payload,
    timer: Pin<Box<Sleep>>,
    limit: Duration,
    expired: bool,
}

impl Stream for Deadlined {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            self.expired = true;
            return Poll::Ready(Some(Err(timed_out(self.limit))));
        }
        Poll::Pending
    }
}

fn timed_out(limit: Duration) -> PayloadError {
    PayloadError::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("body did not arrive within {} s", limit.as_secs_f64()),
    ))
}
