//! Authentication bits every platform shares: reading `Basic` and `Bearer` headers and checking
//! credentials in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::config::Credential;

/// The `(id, secret)` pair of a Basic `Authorization` header.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

/// The token of a Bearer `Authorization` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Whether `(id, secret)` is one of `accepted`.
pub(crate) fn accepts(accepted: &[Credential], id: &str, secret: &str) -> bool {
    accepted
        .iter()
        .any(|c| c.id == id && same(c.secret.as_bytes(), secret.as_bytes()))
}

/// Byte equality that takes as long for every mismatch of the same length.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn basic_credentials_are_decoded() {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", STANDARD.encode("id:se:cret"));
        h.insert(AUTHORIZATION, HeaderValue::from_str(&v).expect("header"));
        assert_eq!(
            basic_credentials(&h),
            Some(("id".to_string(), "se:cret".to_string()))
        );
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_credentials(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(basic_credentials(&h), None);
        assert_eq!(bearer(&h), Some("abc"));
    }

    #[test]
    fn credentials_must_match_exactly() {
        let ok = [Credential::new("a", "s1"), Credential::new("b", "s2")];
        assert!(accepts(&ok, "b", "s2"));
        assert!(!accepts(&ok, "b", "s1"));
        assert!(!accepts(&ok, "a", "s"));
        assert!(!accepts(&ok, "c", "s2"));
    }
}
