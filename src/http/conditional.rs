//! Conditional GET for single resources (a project, a task, `/v1/me`, stats): the response
//! carries a strong `ETag` and `Cache-Control: private, no-cache`, and a request whose
//! `If-None-Match` names the current tag gets `304 Not Modified` with no body.
//!
//! A handler takes the request headers and returns [`conditional_json`] in place of `Json`:
//!
//! ```text
//! async fn get(headers: HeaderMap, /* … */) -> Result<Response, ApiError> {
//!     let project = /* load it */;
//!     Ok(conditional_json(&headers, &project))
//! }
//! ```
//!
//! The tag is a hash of the exact bytes sent, serialized once: whatever changes the
//! representation changes the tag, with no version column to keep in step, and a tag
//! cannot vouch for bytes it was not computed from. The cost is that the body is still
//! loaded and serialized on a 304; what a match saves is the transfer and the client's
//! parsing. `private`: the body is one caller's view (their role, their `/v1/me`), so no
//! shared cache may keep it; `no-cache`: the client may keep it but must revalidate before
//! each use, which is what makes the 304 path worth having.
//!
//! The tag is of the uncompressed bytes, and the compression layer in `server` keeps it when
//! it gzips a large body. `If-None-Match` compares weakly, so revalidation works either way.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The client may store the body, but only for this user, and must ask before reusing it.
const CACHE_CONTROL: &str = "private, no-cache";

/// `body` as JSON with its `ETag` and `Cache-Control`, or a bodiless 304 when the request's
/// `If-None-Match` names the tag. A body that does not serialize is a 500.
pub fn conditional_json<T: Serialize>(request_headers: &HeaderMap, body: &T) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(bytes) => bytes,
        Err(e) => {
            return ApiError::Internal(anyhow::Error::new(e).context("serialize a response body"))
                .into_response();
        }
    };
    let etag = strong_etag(&bytes);
    let validators = [
        (header::ETAG, etag.clone()),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        ),
    ];
    if none_match(request_headers, &etag) {
        return (StatusCode::NOT_MODIFIED, validators, ()).into_response();
    }
    // What axum's `Json` sends, so a handler that switches to this changes no other header.
    let json = HeaderValue::from_static("application/json");
    (
        validators,
        [(header::CONTENT_TYPE, json)],
        Body::from(bytes),
    )
        .into_response()
}

/// `"…"`: the first 16 bytes of the body's SHA-256, base64url. 128 bits is far past any
/// chance of two versions of one resource colliding, and keeps the header short.
fn strong_etag(bytes: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(bytes);
    let tag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&digest[..16]));
    HeaderValue::try_from(tag).expect("quotes around base64url are a valid header value")
}

/// Whether `If-None-Match` matches `etag`: `*`, or a list of entity-tags one of which has the
/// same opaque tag. The comparison is weak (RFC 9110 §13.1.2), so `W/"x"` matches `"x"`. A
/// header that does not parse matches nothing: the client gets the full response, which is
/// always a correct answer.
fn none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    let ours = &ours[1..ours.len() - 1];
    let mut matched = false;
    // The list may be split over several header lines; all of them must parse.
    for field in headers.get_all(header::IF_NONE_MATCH) {
        let field = field.as_bytes();
        if field.trim_ascii() == b"*" {
            matched = true;
            continue;
        }
        match opaque_tags(field) {
            Some(tags) => matched |= tags.contains(&ours),
            None => return false,
        }
    }
    matched
}

/// The opaque tags (between the quotes, `W/` dropped) of a comma-separated list of
/// entity-tags, or `None` if it is malformed. Empty list elements are allowed (RFC 9110
/// §5.6.1). A tag is scanned to its closing quote rather than split on commas, since a
/// comma is a valid character inside one.
fn opaque_tags(field: &[u8]) -> Option<Vec<&[u8]>> {
    let mut tags = Vec::new();
    let mut rest = field;
    loop {
        rest = skip(rest, |b| b == b',' || is_ows(b));
        if rest.is_empty() {
            return Some(tags);
        }
        let unweakened = rest.strip_prefix(b"W/").unwrap_or(rest);
        let quoted = unweakened.strip_prefix(b"\"")?;
        let end = quoted.iter().position(|&b| b == b'"')?;
        let tag = &quoted[..end];
        if !tag.iter().all(|&b| is_etagc(b)) {
            return None;
        }
        tags.push(tag);
        rest = skip(&quoted[end + 1..], is_ows);
        if !(rest.is_empty() || rest[0] == b',') {
            return None;
        }
    }
}

fn skip(bytes: &[u8], mut what: impl FnMut(u8) -> bool) -> &[u8] {
    let start = bytes.iter().position(|&b| !what(b)).unwrap_or(bytes.len());
    &bytes[start..]
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// RFC 9110's `etagc`: any visible character but `"`, or obs-text.
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use serde::ser::Error as _;

    use super::*;

    fn project(name: &str) -> serde_json::Value {
        serde_json::json!({"id": "0190c5a4-7f3e-7c2a-9d1b-3f4e5a6b7c8d", "name": name})
    }

    fn if_none_match(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn tag_of(body: &serde_json::Value) -> String {
        let response = conditional_json(&HeaderMap::new(), body);
        response.headers()[header::ETAG]
            .to_str()
            .unwrap()
            .to_owned()
    }

    async fn body_of(response: Response) -> Vec<u8> {
        to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    #[test]
    fn equal_bodies_get_one_tag_and_different_bodies_different_tags() {
        let tag = tag_of(&project("Apollo"));

        assert_eq!(tag, tag_of(&project("Apollo")));
        assert_ne!(tag, tag_of(&project("Gemini")));
        assert!(tag.starts_with('"') && tag.ends_with('"'), "strong: {tag}");
        assert_eq!(tag.len(), 2 + 22, "16 bytes in base64url: {tag}");
    }

    #[tokio::test]
    async fn without_a_precondition_the_body_is_sent_with_its_validators() {
        let body = project("Apollo");

        let response = conditional_json(&HeaderMap::new(), &body);

        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers[header::CACHE_CONTROL], "private, no-cache");
        assert_eq!(headers[header::ETAG], tag_of(&body).as_str());
        assert_eq!(body_of(response).await, serde_json::to_vec(&body).unwrap());
    }

    #[tokio::test]
    async fn a_matching_tag_gets_a_304_with_no_body_but_its_validators() {
        let body = project("Apollo");
        let tag = tag_of(&body);

        let response = conditional_json(&if_none_match(&[&tag]), &body);

        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        let headers = response.headers();
        assert_eq!(headers[header::ETAG], tag.as_str());
        assert_eq!(headers[header::CACHE_CONTROL], "private, no-cache");
        assert!(headers.get(header::CONTENT_TYPE).is_none());
        assert!(body_of(response).await.is_empty());
    }

    #[test]
    fn weak_star_and_list_forms_of_a_match_all_get_a_304() {
        let body = project("Apollo");
        let tag = tag_of(&body);
        let weak = format!("W/{tag}");
        let list = format!(r#""other", W/"a,b" ,, {tag} "#);
        for values in [
            vec![weak.as_str()],
            vec!["*"],
            vec![" * "],
            vec![list.as_str()],
            vec![r#""other""#, tag.as_str()],
        ] {
            let response = conditional_json(&if_none_match(&values), &body);

            assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{values:?}");
        }
    }

    #[test]
    fn another_tag_or_a_malformed_header_gets_the_full_response() {
        let body = project("Apollo");
        let tag = tag_of(&body);
        let unquoted = tag.trim_matches('"').to_owned();
        let lowercase_weak = format!("w/{tag}");
        let star_in_a_list = format!("*, {tag}");
        let no_comma = format!(r#""other" {tag}"#);
        let unterminated = format!(r#"{tag}, "other"#);
        for value in [
            r#""other""#,
            r#"W/"other", "another""#,
            "",
            unquoted.as_str(),
            lowercase_weak.as_str(),
            star_in_a_list.as_str(),
            no_comma.as_str(),
            unterminated.as_str(),
        ] {
            let response = conditional_json(&if_none_match(&[value]), &body);

            assert_eq!(response.status(), StatusCode::OK, "{value:?}");
        }
    }

    #[test]
    fn a_body_that_does_not_serialize_is_a_500() {
        struct Unserializable;
        impl Serialize for Unserializable {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(S::Error::custom("no JSON for this"))
            }
        }

        let response = conditional_json(&HeaderMap::new(), &Unserializable);

        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(header::ETAG).is_none());
    }
}
