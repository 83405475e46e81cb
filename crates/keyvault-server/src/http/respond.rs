//! Building responses: JSON bodies with Key Vault's headers.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// A JSON response. Serialising our own models cannot fail; if it ever did, the client gets a 500.
/// The body is serialised straight into a buffer sized for a typical secret bundle.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut bytes = Vec::with_capacity(768);
    match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => {
            let mut resp = Response::new(Body::from(bytes));
            *resp.status_mut() = status;
            // Room for every header the response gets (`decorate` adds seven more): no regrowth.
            resp.headers_mut().reserve(RESPONSE_HEADERS);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            resp
        }
        Err(_) => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
    }
}

/// Headers of a JSON response with Key Vault's decoration (content type, seven more, one spare).
const RESPONSE_HEADERS: usize = 10;

/// A response with no body.
pub fn empty(status: StatusCode) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}
