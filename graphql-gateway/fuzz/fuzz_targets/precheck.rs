//! The token pass over a client's document (`graphql_gateway::precheck`),
//! which runs before any parser: it never panics, and a document it accepts
//! under some limits it also accepts under larger ones.
#![no_main]

use graphql_gateway::precheck::{check, TokenLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let tight = TokenLimits { max_tokens: 200, max_aliases: 10, max_depth: 8, max_expanded_selections: 500 };
    let loose = TokenLimits { max_tokens: 100_000, max_aliases: 10_000, max_depth: 1_000, max_expanded_selections: 10_000_000 };
    if check(text, &tight).is_ok() {
        assert!(check(text, &loose).is_ok(), "accepted under tight limits, refused under loose ones: {text:?}");
    } else {
        let _ = check(text, &loose);
    }
});
