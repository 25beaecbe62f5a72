//! The response head parser (`sidecar::http1::parse_response`): it never
//! panics, what it accepts lies inside the input, and the head the proxy
//! writes back to the app keeps the status and the body's framing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecar::http1::{self, Framing, HeadError, MAX_HEAD, MAX_HEADERS};

/// Header fields in a whole head: its lines less the status line and the empty one.
fn fields(head: &[u8]) -> usize {
    head.windows(2).filter(|w| w == b"\r\n").count().saturating_sub(2)
}

// The first byte's low bits: the request was HEAD, the app's connection
// closes after the answer; the rest is the upstream's answer.
fuzz_target!(|input: &[u8]| {
    let Some((&flags, data)) = input.split_first() else { return };
    let (head_request, close) = (flags & 1 != 0, flags & 2 != 0);
    let Ok(Some(head)) = http1::parse_response(data, head_request) else { return };
    assert!(head.head_len <= data.len());
    for (n, v) in &head.headers {
        assert!(n.end <= head.head_len && v.end <= head.head_len);
    }
    if head.framing == Framing::UntilClose && head.reusable {
        panic!("a body that ends at close cannot leave its connection reusable");
    }
    let mut out = Vec::new();
    http1::write_response_head(&mut out, data, &head, close);
    let again = match http1::parse_response(&out, head_request) {
        Ok(Some(again)) => again,
        // `Connection: close`, added, can take a head at the proxy's own
        // limits over them; the head itself was fine.
        Err(HeadError::TooLarge) if fields(&out) > MAX_HEADERS || out.len() > MAX_HEAD => return,
        other => panic!("the rewritten head {:?} does not parse: {other:?}", String::from_utf8_lossy(&out)),
    };
    assert_eq!(again.head_len, out.len());
    assert_eq!(again.status, head.status);
    assert_eq!(again.framing, head.framing, "framing changed by the rewrite: {:?}", String::from_utf8_lossy(&out));
    // The same answer as `http` types (towards an HTTP/2 peer) does not panic either.
    let _ = http1::response_header_map(data, &head);
});
