//! The feature supergraphs of tests/data, read as the gateway loads them.
//! Shared by the integration tests and the crate's unit tests (included
//! there with `#[path]`).

/// A supergraph of tests/data, with the join v0.3 definitions put in front
/// when the file leaves them out (see tests/data/join-v0.3.graphql).
pub fn supergraph_text(file: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let text = std::fs::read_to_string(dir.join(file)).expect("supergraph file");
    if text.contains("directive @join__field") {
        return text;
    }
    std::fs::read_to_string(dir.join("join-v0.3.graphql")).expect("join-v0.3.graphql") + &text
}
