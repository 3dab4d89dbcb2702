//! Event identity for platforms that give none: a hash of the topic and the canonical body,
//! so one platform event has one id on every socket and pod that sees it (and the app's acks
//! and the overlap of two sockets agree on it). Also the ISO 8601 times the platforms send.

use std::fmt::Write as _;

use serde_json::Value;
use sha1::{Digest, Sha1};
use streamkeeper_api::EventId;

/// `body` with object keys sorted and no insignificant whitespace, so two serializations of
/// one event compare equal whatever their key order or spacing.
pub fn canonical(body: &Value) -> String {
    let mut out = String::new();
    write_canonical(body, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The id of an event without one: `{prefix}-` and 32 hex digits of SHA-1 over the topic and
/// the canonical body.
pub fn hashed_id(prefix: &str, topic: &str, body: &Value) -> EventId {
    let mut h = Sha1::new();
    h.update(topic.as_bytes());
    h.update(b"\n");
    h.update(canonical(body).as_bytes());
    let digest = h.finalize();
    let mut id = String::with_capacity(prefix.len() + 33);
    id.push_str(prefix);
    id.push('-');
    for b in &digest[..16] {
        let _ = write!(id, "{b:02x}");
    }
    EventId(id)
}

/// Epoch milliseconds of an ISO 8601 UTC time like `2026-12-01T10:13:34.123Z` (offsets
/// `+hh:mm` are honoured); `None` if it is not one.
pub fn iso8601_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = s.get(start..i)?;
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        ms = digits.parse().ok()?;
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let m = num(i + 1, 2)? * 60 + num(i + 4, 2)?;
            if *sign == b'+' { m } else { -m }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + ms).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn key_order_and_spacing_do_not_change_the_id() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"q":2,"p":3}],"x":"é"}}"#).expect("json");
        let b: Value = serde_json::from_str(
            "{ \"a\" : { \"x\":\"\\u00e9\", \"y\":[1,{\"p\":3,\"q\":2}]}, \"b\":1 }",
        )
        .expect("json");
        assert_eq!(
            canonical(&a),
            r#"{"a":{"x":"é","y":[1,{"p":3,"q":2}]},"b":1}"#
        );
        assert_eq!(hashed_id("g", "t", &a), hashed_id("g", "t", &b));
        assert_ne!(hashed_id("g", "t", &a), hashed_id("g", "u", &a));
        assert_ne!(
            hashed_id("g", "t", &a),
            hashed_id("g", "t", &json!({"b": 2}))
        );
        assert_eq!(hashed_id("g", "t", &a).0.len(), 2 + 32);
    }

    #[test]
    fn iso_times_parse_to_epoch_ms() {
        assert_eq!(iso8601_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(iso8601_ms("2000-03-01T00:00:00.5Z"), Some(951_868_800_500));
        assert_eq!(
            iso8601_ms("2026-12-01T10:13:34.123Z"),
            Some(1_796_120_014_123)
        );
        assert_eq!(
            iso8601_ms("2026-12-01T12:13:34.123+02:00"),
            iso8601_ms("2026-12-01T10:13:34.123Z")
        );
        for bad in [
            "",
            "2026-12-01",
            "2026-13-01T00:00:00Z",
            "2026-12-01T00:00:00",
            "x",
        ] {
            assert_eq!(iso8601_ms(bad), None, "{bad}");
        }
    }
}
