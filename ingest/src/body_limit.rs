//! A request body limit whose 413 reaches clients that send the whole body before reading.
//!
//! Answering 413 as soon as `limit` bytes have been read and then closing the connection leaves the
//! rest of the body unread in the server's socket: the kernel answers it with a reset, and a client that
//! writes its whole body before reading the answer (Python's urllib, `curl --data-binary @big`) gets a
//! broken pipe or "connection reset" instead of the 413. [`limit_body`] reads and discards the rest of an
//! oversized body, up to [`DRAIN_MAX_BYTES`], before answering, so such clients see the status; past that
//! bound it answers at once and closes the connection (draining more would let one client make the server
//! read without bound; the request timeout bounds the time it takes).

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;

use crate::http::ApiError;

/// How much of an oversized body is read and discarded before the server gives up on the client seeing
/// its 413 and closes the connection. It must exceed what the kernels buffer on one connection (about
/// 4 MB each way on Linux, and all of it is in flight when the client is still writing), or the drain
/// would only help bodies the kernel had already absorbed: with the old 64 KiB limit and no drain,
/// urllib saw its 413 up to 2 MB and a broken pipe at 5 MB. The bytes are discarded as they arrive, so
/// the cost is reading, not memory.
pub const DRAIN_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Applies the body limit `limit` (bytes) to every route of `router`; an oversized body is answered with
/// `too_large()` (the caller's JSON error shape).
pub fn limit_body(router: Router, limit: usize, too_large: fn() -> Response) -> Router {
    router.layer(axum::middleware::from_fn(move |req: Request, next: Next| enforce(limit, too_large, req, next)))
}

async fn enforce(limit: usize, too_large: fn() -> Response, req: Request, next: Next) -> Response {
    let bound = DRAIN_MAX_BYTES.max(limit);
    let declared = content_length(req.headers());
    match declared {
        // hyper never delivers more than a declared length, so the handlers' own limits suffice.
        Some(n) if n <= limit => return next.run(req).await,
        // A client that waits for `100 Continue` has sent nothing yet: answering now means it never sends
        // the body. One that declares more than the bound would be reset anyway, so answer it at once too.
        Some(n) if expects_continue(req.headers()) || n > bound => return closing(too_large()),
        _ => {}
    }
    // The length is unknown (chunked) or too large: read up to the limit, then drain the rest.
    let (parts, mut body) = req.into_parts();
    let mut kept = Vec::new();
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return unreadable() };
        let Some(data) = frame.data_ref() else { continue };
        read = read.saturating_add(data.len());
        if read > limit {
            return drain(body, read, bound, too_large).await;
        }
        kept.extend_from_slice(data);
    }
    next.run(Request::from_parts(parts, Body::from(kept))).await
}

/// Reads and discards the rest of `body` (already `read` bytes in), up to `bound` bytes in all.
async fn drain(mut body: Body, mut read: usize, bound: usize, too_large: fn() -> Response) -> Response {
    while read <= bound {
        match body.frame().await {
            None => return too_large(),
            Some(Ok(frame)) => read = read.saturating_add(frame.data_ref().map_or(0, |d| d.len())),
            Some(Err(_)) => return closing(too_large()),
        }
    }
    closing(too_large())
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The response, and the connection closed after it: part of the body is still unread.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The body stopped in the middle (the client went away or broke the framing).
fn unreadable() -> Response {
    closing(
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "the request body could not be read").into_response(),
    )
}
