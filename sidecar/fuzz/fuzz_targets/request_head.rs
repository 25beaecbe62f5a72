//! The request head parser (`sidecar::http1::parse_request`): it never
//! panics, what it accepts lies inside the input, a head within smaller
//! limits parses the same under the default ones, and a head the fast path
//! forwards keeps its request line and framing when rewritten for the
//! upstream (no smuggling through the rewrite).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecar::http1::{self, HeadError, HeadLimits, MAX_HEAD, MAX_HEADERS};

/// Header fields in a whole head: its lines less the request line and the empty one.
fn fields(head: &[u8]) -> usize {
    head.windows(2).filter(|w| w == b"\r\n").count().saturating_sub(2)
}

fuzz_target!(|data: &[u8]| {
    let parsed = http1::parse_request(data);
    let small = http1::parse_request_limited(data, &HeadLimits { max_bytes: 512, max_headers: 8 });
    match (&small, &parsed) {
        (Ok(Some(s)), Ok(Some(p))) => assert_eq!((s.head_len, s.framing, &s.headers), (p.head_len, p.framing, &p.headers)),
        (Ok(Some(_)), other) => panic!("accepted within small limits, not within the default ones: {other:?}"),
        _ => {}
    }
    let Ok(Some(head)) = parsed else { return };
    assert!(head.head_len <= data.len());
    let ranges = [&head.method, &head.target].into_iter().chain(head.headers.iter().flat_map(|(n, v)| [n, v])).chain(head.host.as_ref());
    for r in ranges {
        assert!(r.start <= r.end && r.end <= head.head_len, "{r:?} outside a head of {}", head.head_len);
    }
    if head.unsupported.is_some() {
        return;
    }
    // What the fast path sends upstream is one request with the same
    // method, target and framing.
    let mut out = Vec::new();
    http1::write_request_head(&mut out, data, &head, head.host(data));
    match http1::parse_request(&out) {
        Ok(Some(again)) => {
            assert_eq!(again.head_len, out.len(), "the rewritten head is one head");
            assert_eq!(again.method(&out), head.method(data));
            assert_eq!(again.target(&out), head.target(data));
            assert_eq!(again.framing, head.framing, "framing changed by the rewrite: {:?}", String::from_utf8_lossy(&out));
        }
        // The Host line the rewrite adds can take a head at the limits over them.
        Err(HeadError::TooLarge) if fields(&out) > MAX_HEADERS || out.len() > MAX_HEAD => {}
        other => panic!("the rewritten head {:?} does not parse: {other:?}", String::from_utf8_lossy(&out)),
    }
});
