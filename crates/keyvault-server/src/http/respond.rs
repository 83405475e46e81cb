//! Building responses: JSON bodies with Key Vault's headers.

use crate::json::{push_int, push_str};
use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use keyvault_types::models::{SecretAttributes, SecretBundle};
use serde::Serialize;

/// A JSON response. Serialising our own models cannot fail; if it ever did, the client gets a 500.
/// The body is serialised straight into a buffer sized for a typical secret bundle.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut bytes = Vec::with_capacity(BODY_CAPACITY);
    match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => body_response(status, bytes),
        Err(_) => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
    }
}

/// [`json_response`] for a large answer (a backup) that holds `place` until its body has been sent or
/// dropped. The body goes out in pieces of [`HELD_PIECE_BYTES`]: the HTTP/2 layer takes a piece only when the
/// client's window has room, so a client that keeps its window shut keeps the whole answer here, and its
/// place with it (handed over whole, the answer would wait in the connection's send buffer, place given
/// back).
pub fn json_response_holding<T: Serialize>(
    status: StatusCode,
    body: &T,
    place: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    let Ok(bytes) = serde_json::to_vec(body) else {
        return json_response(status, body);
    };
    let mut resp = body_response(status, Vec::new());
    *resp.body_mut() = Body::new(HeldBody {
        data: bytes::Bytes::from(bytes),
        _place: place,
    });
    resp
}

/// The most of a held answer handed to the connection at once.
pub const HELD_PIECE_BYTES: usize = 64 * 1024;

/// A response body that gives out its bytes in pieces and holds a permit until it is dropped.
struct HeldBody {
    /// What is left to send.
    data: bytes::Bytes,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl axum::body::HttpBody for HeldBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if self.data.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let n = self.data.len().min(HELD_PIECE_BYTES);
        let piece = self.data.split_to(n);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.data.len() as u64)
    }
}

/// [`json_response`] for a secret bundle (GET, PUT, PATCH, recover, restore), written by hand: the same bytes
/// for about a third of the work.
pub fn bundle_response(status: StatusCode, bundle: &SecretBundle) -> Response {
    let mut bytes = Vec::with_capacity(BODY_CAPACITY);
    write_bundle(&mut bytes, bundle);
    body_response(status, bytes)
}

fn body_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    // No room reserved: `decorate` replaces a map that has only this header with a decorated copy.
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    resp
}

/// The content type of every JSON body.
pub(super) const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// A typical secret bundle's size, with room to spare.
const BODY_CAPACITY: usize = 768;

/// Opens a member: `{"name":` for the first, `,"name":` after. `name` is a JSON string's contents that needs
/// no escaping (our member names).
fn member(buf: &mut Vec<u8>, first: &mut bool, name: &str) {
    buf.push(if std::mem::take(first) { b'{' } else { b',' });
    buf.push(b'"');
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\":");
}

/// Closes an object opened by [`member`] (`{}` if it had none).
fn close(buf: &mut Vec<u8>, first: bool) {
    if first {
        buf.push(b'{');
    }
    buf.push(b'}');
}

/// `SecretBundle` as its `Serialize` writes it: members in declaration order, absent ones left out.
fn write_bundle(buf: &mut Vec<u8>, b: &SecretBundle) {
    let first = &mut true;
    if let Some(v) = &b.value {
        member(buf, first, "value");
        push_str(buf, v.expose());
    }
    if let Some(v) = &b.id {
        member(buf, first, "id");
        push_str(buf, v);
    }
    if let Some(v) = &b.content_type {
        member(buf, first, "contentType");
        push_str(buf, v);
    }
    if let Some(a) = &b.attributes {
        member(buf, first, "attributes");
        write_attributes(buf, a);
    }
    if let Some(tags) = &b.tags {
        member(buf, first, "tags");
        let tags_first = &mut true;
        for (k, v) in tags {
            buf.push(if std::mem::take(tags_first) {
                b'{'
            } else {
                b','
            });
            push_str(buf, k);
            buf.push(b':');
            push_str(buf, v);
        }
        close(buf, *tags_first);
    }
    if let Some(v) = &b.kid {
        member(buf, first, "kid");
        push_str(buf, v);
    }
    if let Some(v) = b.managed {
        member(buf, first, "managed");
        buf.extend_from_slice(if v { b"true" } else { b"false" });
    }
    if let Some(v) = &b.previous_version {
        member(buf, first, "previousVersion");
        push_str(buf, v);
    }
    close(buf, *first);
}

fn write_attributes(buf: &mut Vec<u8>, a: &SecretAttributes) {
    let first = &mut true;
    if let Some(v) = a.enabled {
        member(buf, first, "enabled");
        buf.extend_from_slice(if v { b"true" } else { b"false" });
    }
    for (name, value) in [
        ("nbf", a.nbf),
        ("exp", a.exp),
        ("created", a.created),
        ("updated", a.updated),
    ] {
        if let Some(v) = value {
            member(buf, first, name);
            push_int(buf, v);
        }
    }
    if let Some(v) = &a.recovery_level {
        member(buf, first, "recoveryLevel");
        push_str(buf, v);
    }
    if let Some(v) = a.recoverable_days {
        member(buf, first, "recoverableDays");
        push_int(buf, v);
    }
    close(buf, *first);
}

/// Headers of a JSON response with Key Vault's decoration (content type, seven more, one spare).
pub(super) const RESPONSE_HEADERS: usize = 10;

/// A response with no body.
pub fn empty(status: StatusCode) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyvault_types::SecretString;
    use keyvault_types::models::Tags;

    /// Every combination of present and absent members, with strings that need escaping and ones that do not:
    /// the hand-written bundle is byte for byte what serde_json writes.
    #[test]
    fn bundles_are_what_serde_writes() {
        let texts = ["", "plain-0123", "quo\"te\\ \n\u{1} é 🙂", "\u{7f}</x>"];
        let mut checked = 0;
        for mask in 0u32..(1 << 9) {
            for (i, text) in texts.iter().enumerate() {
                let on = |bit: u32| mask & (1 << bit) != 0;
                let s = |bit: u32| on(bit).then(|| text.to_string());
                let n = |bit: u32, v: i64| on(bit).then_some(v);
                let mut tags = Tags::new();
                if i % 2 == 1 {
                    tags.insert("k".into(), text.to_string());
                    tags.insert(text.to_string(), "v".into());
                }
                let attributes = SecretAttributes {
                    enabled: on(1).then_some(i % 2 == 0),
                    nbf: n(2, -1),
                    exp: n(3, i64::MAX),
                    created: n(2, 1_795_000_123),
                    updated: n(3, 0),
                    recovery_level: s(4),
                    recoverable_days: on(5).then_some(90),
                };
                let bundle = SecretBundle {
                    value: on(0).then(|| SecretString::new(*text)),
                    id: s(6),
                    content_type: s(7),
                    attributes: (on(8) || i == 0).then_some(attributes),
                    tags: (mask % 3 == 0).then_some(tags),
                    kid: s(5),
                    managed: on(4).then_some(i % 2 == 1),
                    previous_version: s(3),
                };
                let mut buf = Vec::new();
                write_bundle(&mut buf, &bundle);
                assert_eq!(
                    String::from_utf8(buf).unwrap(),
                    serde_json::to_string(&bundle).unwrap(),
                    "mask {mask:#b}, text {text:?}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 512 * texts.len());
    }
}
