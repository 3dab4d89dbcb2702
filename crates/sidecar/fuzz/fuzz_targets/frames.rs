//! The receive path (frame parser, reassembly, UTF-8 checks, buffering across reads) against
//! the reference model, for any input, size limit and split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/ws_fuzz/props.rs"]
mod props;

fuzz_target!(|data: &[u8]| {
    let case = props::FrameCase::from_bytes(data);
    props::check_frames(&case);
    props::check_locality(&case.input, case.max_frame);
});
