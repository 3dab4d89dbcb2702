//! Fuzz tests of the upstream WebSocket client's parsers on stable Rust: proptest generates
//! server frames (valid messages, fragments with control frames between, and frames that break
//! every rule), answers to the upgrade, and request headers; `props.rs` says what must hold.
//!
//! CI runs a bounded number of cases (proptest's default, 256 per property). For a long run,
//! raise it with proptest's own knob:
//!
//! ```text
//! PROPTEST_CASES=200000 cargo test --release -p streamkeeper-sidecar --test ws_fuzz
//! ```
//!
//! The memory bound is measured per thread by `allocation-counter`, which becomes this test
//! binary's global allocator (and only this one's).

mod props;

use allocation_counter::{AllocationInfo, measure};
use proptest::{collection::vec, prelude::*, sample::select};
use streamkeeper_sidecar::ws::{
    frame::{MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN},
    handshake,
};

use props::{FrameCase, check_frames, model, run_inbound};

/// One frame on the wire, as a server could send it: any header bits, any declared length.
#[derive(Clone, Debug)]
struct WireFrame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    /// Force the 16- or 64-bit length form even when the 7-bit one would do.
    long_form: u8,
    payload: Vec<u8>,
}

impl WireFrame {
    fn data(opcode: u8, fin: bool, payload: Vec<u8>) -> Self {
        Self {
            fin,
            rsv: 0,
            opcode,
            masked: false,
            long_form: 0,
            payload,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | (self.opcode & 0xF));
        let mask = if self.masked { 0x80 } else { 0 };
        let len = self.payload.len();
        match (len, self.long_form % 3) {
            (0..=125, 0) => out.push(mask | len as u8),
            (0..=0xFFFF, 0 | 1) => {
                out.push(mask | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if self.masked {
            out.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
        }
        out.extend_from_slice(&self.payload);
    }
}

/// Text that is valid, or valid around one bad spot (a stray byte, a cut code point, an
/// overlong form, a surrogate, a code point past U+10FFFF).
fn text_bytes() -> impl Strategy<Value = Vec<u8>> {
    let bad: &[&[u8]] = &[
        &[0xFF],
        &[0xC3],
        &[0xC0, 0xAF],
        &[0xED, 0xA0, 0x80],
        &[0xF4, 0x90, 0x80, 0x80],
        &[0x80],
        &[0xE2, 0x82],
    ];
    let bad: Vec<Vec<u8>> = bad.iter().map(|b| b.to_vec()).collect();
    (
        "[a-zé€𝄞κόσμε {}\":,0-9]{0,80}",
        prop::option::weighted(0.25, (select(bad), any::<prop::sample::Index>())),
    )
        .prop_map(|(text, bad)| {
            let mut bytes = text.into_bytes();
            if let Some((bad, at)) = bad {
                let at = at.index(bytes.len() + 1);
                bytes.splice(at..at, bad);
            }
            bytes
        })
}

fn close_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        vec(any::<u8>(), 1..4),
        (
            select(vec![
                1000u16, 1001, 1002, 1005, 1006, 1011, 1015, 2999, 3000, 4999, 5000
            ]),
            text_bytes(),
        )
            .prop_map(|(code, reason)| {
                let mut p = code.to_be_bytes().to_vec();
                p.extend(reason.into_iter().take(123));
                p
            }),
    ]
}

fn control_frame() -> impl Strategy<Value = WireFrame> {
    prop_oneof![
        vec(any::<u8>(), 0..=125).prop_map(|p| WireFrame::data(0x9, true, p)),
        vec(any::<u8>(), 0..=125).prop_map(|p| WireFrame::data(0xA, true, p)),
        close_payload().prop_map(|p| WireFrame::data(0x8, true, p)),
    ]
}

/// A text or binary message in 1 to 4 fragments, with control frames between them.
fn message() -> impl Strategy<Value = Vec<WireFrame>> {
    (
        any::<bool>(),
        prop_oneof![text_bytes(), vec(any::<u8>(), 0..300)],
        vec(any::<prop::sample::Index>(), 0..3),
        vec(prop::option::weighted(0.3, control_frame()), 4),
    )
        .prop_map(|(text, payload, cuts, controls)| {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
            cuts.push(0);
            cuts.push(payload.len());
            cuts.sort_unstable();
            cuts.dedup();
            if cuts.len() == 1 {
                cuts.push(0);
            }
            let pieces = cuts.len() - 1;
            let mut frames = Vec::new();
            for (i, w) in cuts.windows(2).enumerate() {
                let opcode = match (i, text) {
                    (0, true) => 0x1,
                    (0, false) => 0x2,
                    _ => 0x0,
                };
                frames.push(WireFrame::data(
                    opcode,
                    i + 1 == pieces,
                    payload[w[0]..w[1]].to_vec(),
                ));
                if let Some(Some(control)) = controls.get(i) {
                    frames.push(control.clone());
                }
            }
            frames
        })
}

/// A frame that may break any rule: header bits, opcode, mask, length form, control size.
fn any_frame() -> impl Strategy<Value = WireFrame> {
    (
        any::<bool>(),
        prop::option::weighted(0.1, 1u8..8),
        prop_oneof![
            4 => select(vec![0u8, 1, 2, 8, 9, 10]),
            1 => 0u8..16,
        ],
        prop::bool::weighted(0.05),
        0u8..6,
        prop_oneof![vec(any::<u8>(), 0..200), text_bytes(), close_payload()],
    )
        .prop_map(|(fin, rsv, opcode, masked, long_form, payload)| WireFrame {
            fin,
            rsv: rsv.unwrap_or(0),
            opcode,
            masked,
            long_form,
            payload,
        })
}

/// The bytes a server sends: messages, rule-breaking frames, and maybe raw junk or an absurd
/// declared length at the end; cut anywhere.
fn server_input() -> impl Strategy<Value = Vec<u8>> {
    (
        vec(
            prop_oneof![4 => message(), 1 => any_frame().prop_map(|f| vec![f])],
            0..6,
        ),
        prop_oneof![
            4 => Just(Vec::new()),
            1 => vec(any::<u8>(), 0..40),
            1 => select(vec![
                vec![0x82, 127, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
                vec![0x81, 127, 0, 0, 0, 0, 0, 0x10, 0, 0],
                vec![0x82, 126, 0xFF, 0xFF],
            ]),
        ],
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(frames, tail, cut, truncate)| {
            let mut out = Vec::new();
            for f in frames.iter().flatten() {
                f.write(&mut out);
            }
            out.extend(tail);
            if truncate {
                out.truncate(cut.index(out.len() + 1));
            }
            out
        })
}

fn frame_case() -> impl Strategy<Value = FrameCase> {
    (
        server_input(),
        vec(1usize..64, 1..8),
        prop_oneof![Just(0usize), 1usize..64, 64usize..700, Just(1 << 20)],
        prop::bool::weighted(0.2),
    )
        .prop_map(|(input, mut reads, max_frame, one_read)| {
            if one_read {
                reads = vec![usize::MAX];
            }
            FrameCase {
                input,
                reads,
                max_frame,
            }
        })
}

fn raw_case() -> impl Strategy<Value = FrameCase> {
    (vec(any::<u8>(), 0..512), vec(1usize..32, 1..5), 0usize..300).prop_map(
        |(input, reads, max_frame)| FrameCase {
            input,
            reads,
            max_frame,
        },
    )
}

proptest! {
    /// Any split into reads cuts the same frames as the whole-input reference decoder.
    #[test]
    fn frames_match_the_reference_model_across_reads(case in frame_case()) {
        check_frames(&case);
    }

    #[test]
    fn raw_bytes_match_the_reference_model_across_reads(case in raw_case()) {
        check_frames(&case);
    }

    /// Peak heap use stays within the frame limit and the reads' sizes, whatever lengths the
    /// headers announce (frames are checked, then dropped, as the client hands them on).
    #[test]
    fn memory_is_bounded_by_the_limit_not_by_declared_lengths(case in frame_case()) {
        let expected = model(&case.input, case.max_frame);
        let mut seen = 0usize;
        let mut end = None;
        let info = measured(|| {
            end = Some(run_inbound(&case, |frame| {
                assert_eq!(Some(&frame), expected.frames.get(seen), "frame {seen}");
                seen += 1;
            }));
        });
        prop_assert_eq!(end, Some(expected.end));
        let max_frame = case.max_frame.min(1 << 20);
        // Kept input (an incomplete frame, which may be a control frame, and a read, doubled
        // by growth), the message being reassembled, the frame handed on, and small change
        // (error texts, a Box).
        let frame = max_frame.max(MAX_CONTROL_PAYLOAD);
        let bound = 2 * (frame + MAX_HEADER_LEN + case.largest_read()) + 2 * frame + 4096;
        prop_assert!(
            info.bytes_max <= bound as u64,
            "peak {} bytes > {} (max_frame {}, input {})",
            info.bytes_max, bound, case.max_frame, case.input.len()
        );
    }

    #[test]
    fn a_frame_parses_from_its_own_bytes_only(input in server_input(), max in 0usize..400) {
        props::check_locality(&input, max);
    }

    #[test]
    fn what_the_encoder_writes_the_parser_reads_back(
        text in any::<bool>(),
        payload in prop_oneof![text_bytes(), vec(any::<u8>(), 0..70_000)],
        fragment in 0usize..300,
        mask in any::<[u8; 4]>(),
    ) {
        props::check_round_trip(text, &payload, fragment, mask);
    }

    #[test]
    fn control_frames_round_trip(
        kind in any::<u8>(),
        payload in vec(any::<u8>(), 0..200),
        code in prop_oneof![1000u16..1016, 2990u16..3010, 4990u16..5010, any::<u16>()],
        reason in "\\PC{0,140}",
    ) {
        props::check_control_round_trip(kind, &payload, code, &reason);
    }

    /// Arbitrary answers, and answers that start as a real 101 and go wrong anywhere.
    #[test]
    fn the_answer_check_is_the_same_across_reads(
        answer in prop_oneof![
            vec(any::<u8>(), 0..600),
            (vec(header(), 0..6), vec(any::<u8>(), 0..60), any::<prop::sample::Index>())
                .prop_map(|(headers, junk, at)| {
                    let mut a = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
                    for (n, v) in headers {
                        a.extend(format!("{n}: {v}\r\n").into_bytes());
                    }
                    a.extend_from_slice(b"\r\n");
                    let at = at.index(a.len() + 1);
                    a.splice(at..at, junk);
                    a
                }),
            (100u16..600, vec(header(), 0..4)).prop_map(|(status, headers)| {
                let mut a = format!("HTTP/1.1 {status} Whatever\r\n").into_bytes();
                for (n, v) in headers {
                    a.extend(format!("{n}: {v}\r\n").into_bytes());
                }
                a.extend_from_slice(b"Retry-After: 7\r\nContent-Length: 3\r\n\r\nabc");
                a
            }),
        ],
        reads in vec(1usize..40, 1..6),
    ) {
        let key = handshake::generate_key();
        props::check_answer_splits(&answer, &reads, &key);
        let info = measured(|| {
            let _ = handshake::check_answer(&answer, &key, &[]);
        });
        prop_assert!(info.bytes_max <= 2 * answer.len() as u64 + 4096, "peak {}", info.bytes_max);
    }

    #[test]
    fn valid_answers_are_accepted_and_broken_ones_refused(
        extra in vec(header(), 0..12),
        trailing in vec(any::<u8>(), 0..40),
        breakage in any::<u8>(),
    ) {
        props::check_valid_answer(&handshake::generate_key(), &extra, &trailing, breakage);
    }

    #[test]
    fn request_headers_cannot_inject_headers(
        path in "[a-z0-9/%?=&]{0,30}",
        headers in vec(
            prop_oneof![
                4 => header(),
                1 => ("[A-Za-z-]{0,12}", "\\PC{0,20}"),
                1 => (select(vec!["Host", "upgrade", "Sec-WebSocket-Key", "Bad Name", "a:b"])
                        .prop_map(str::to_owned), "[a-z]{0,8}"),
                1 => ("X-[a-z]{1,8}", "[a-z]{0,5}[\r\n\0\x01\x7f\t ][a-z: ]{0,12}"),
            ],
            0..6,
        ),
    ) {
        props::check_request(&path, &headers);
    }
}

/// Heap use of `f` on this thread. A panic inside is carried out of the measurement, which
/// must end normally (allocation-counter keeps a depth that an unwinding `measure` leaks, and
/// proptest runs many failing cases while it shrinks one).
fn measured(f: impl FnOnce()) -> AllocationInfo {
    let mut outcome = Ok(());
    let info = measure(|| outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    info
}

/// An extra header a server or a caller may send: a token name, a visible value.
fn header() -> impl Strategy<Value = (String, String)> {
    ("X-[A-Za-z0-9-]{1,16}", "[ -~]{0,40}").prop_map(|(n, v)| (n, v.trim().to_owned()))
}

/// The libFuzzer targets' way of building a case from raw bytes makes valid cases.
#[test]
fn fuzzer_bytes_make_cases() {
    let case = FrameCase::from_bytes(&[0x01, 0x00, 3, 4, 5, 6, 0x81, 0x02, b'h', b'i']);
    assert_eq!(case.max_frame, 256);
    assert_eq!(case.input, [0x81, 0x02, b'h', b'i']);
    check_frames(&case);
    assert_eq!(
        model(&case.input, case.max_frame).frames,
        [streamkeeper_sidecar::ws::Frame::Text("hi".into())]
    );
}
