//! What the encoder writes (data frames, fragments, pings, pongs, closes), the parser reads
//! back.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/ws_fuzz/props.rs"]
mod props;

fuzz_target!(|data: &[u8]| {
    let [flags, fragment, m0, m1, m2, m3, c0, c1, payload @ ..] = data else {
        return;
    };
    props::check_round_trip(
        flags & 1 != 0,
        payload,
        usize::from(*fragment),
        [*m0, *m1, *m2, *m3],
    );
    let reason = String::from_utf8_lossy(payload);
    props::check_control_round_trip(flags >> 1, payload, u16::from_be_bytes([*c0, *c1]), &reason);
});
