//! Protocol sniffing: the outbound listener's first-bytes classifier
//! (`sidecar::proxy::classify`) and the inbound listener's ClientHello ALPN
//! reader (`sidecar::tls::client_hello_alpn`). Neither panics, and a
//! classification, once made, holds however many more bytes arrive (the
//! listener decides on what it has peeked so far).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecar::proxy::classify;

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    for end in 0..=data.len().min(64) {
        match (decided, classify(&data[..end])) {
            (None, now) => decided = now,
            (Some(before), Some(now)) => assert_eq!(before, now, "{:?} after {end} bytes", String::from_utf8_lossy(&data[..end])),
            (Some(before), None) => panic!("{before:?} became undecided after {end} bytes"),
        }
    }
    let _ = classify(data);
    if let Some(protocols) = sidecar::tls::client_hello_alpn(data) {
        assert!(protocols.iter().map(|p| p.len() + 1).sum::<usize>() <= data.len());
    }
});
