//! The chunked body scanner (`sidecar::http1::ChunkedScanner`): it never
//! panics, never claims more bytes than it was given, and finds the same
//! end and the same data however the body is split across reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecar::http1::ChunkedScanner;

/// Scans `body` fed in pieces cut at `cuts`: where it ended (or the error),
/// and the chunk data it found.
fn scan(body: &[u8], cuts: &[usize]) -> (Result<Option<usize>, String>, Vec<u8>) {
    let mut scanner = ChunkedScanner::default();
    let mut data = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain([&body.len()]) {
        let cut = cut.clamp(at, body.len());
        let piece = &body[at..cut];
        match scanner.scan_data(piece, |r| data.extend_from_slice(&piece[r])) {
            Ok(Some(n)) => {
                assert!(n <= piece.len(), "ended {n} bytes into a piece of {}", piece.len());
                return (Ok(Some(at + n)), data);
            }
            Ok(None) => {}
            Err(e) => return (Err(e.to_string()), data),
        }
        at = cut;
    }
    (Ok(None), data)
}

// The first byte is a count n (up to 15) of cut points, the next 2n bytes
// are the cuts (u16, big-endian), and the rest is the body.
fuzz_target!(|input: &[u8]| {
    let Some((&n, rest)) = input.split_first() else { return };
    let n = usize::from(n & 15).min(rest.len() / 2);
    let (cuts, body) = rest.split_at(2 * n);
    let mut cuts: Vec<usize> = cuts.chunks(2).map(|c| usize::from(u16::from_be_bytes([c[0], c[1]]))).collect();
    cuts.sort_unstable();
    let whole = scan(body, &[]);
    let pieces = scan(body, &cuts);
    // An error may show at a later piece only when the bytes before it were fine.
    match (&whole.0, &pieces.0) {
        (Err(_), Err(_)) => {}
        _ => assert_eq!(whole, pieces, "split at {cuts:?}"),
    }
    if let Ok(Some(end)) = whole.0 {
        assert!(whole.1.len() <= end);
    }
});
