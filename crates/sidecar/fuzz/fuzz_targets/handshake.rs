//! The upgrade answer check (any bytes, any split into reads, and valid answers with parts
//! broken) and the request builder (no header value may inject a header).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/ws_fuzz/props.rs"]
mod props;

/// A fixed key: the check must work for any; the fuzzer cannot guess a random one's accept.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fuzz_target!(|data: &[u8]| {
    let [mode, r0, r1, r2, rest @ ..] = data else {
        return;
    };
    let reads = [
        usize::from(*r0) + 1,
        usize::from(*r1 % 16) + 1,
        usize::from(*r2) * 8 + 1,
    ];
    match mode % 3 {
        0 => props::check_answer_splits(rest, &reads, KEY),
        1 => {
            // Lines of "name:value" become extra headers of an otherwise valid 101.
            let text = String::from_utf8_lossy(rest);
            let extra: Vec<(String, String)> = text
                .lines()
                .take(12)
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap_or((l, ""));
                    let name: String = n.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
                    let value: String = v.chars().filter(|c| (' '..='~').contains(c)).collect();
                    (format!("X-{name}"), value.trim().to_owned())
                })
                .collect();
            props::check_valid_answer(KEY, &extra, rest, *r0);
        }
        _ => {
            // Lines of "name:value" become the caller's headers, bytes as they are.
            let text = String::from_utf8_lossy(rest);
            let headers: Vec<(String, String)> = text
                .split('\u{0}')
                .take(8)
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap_or((l, ""));
                    (n.to_owned(), v.to_owned())
                })
                .collect();
            props::check_request("ws", &headers);
        }
    }
});
