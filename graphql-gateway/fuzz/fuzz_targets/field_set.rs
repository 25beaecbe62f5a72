//! The supergraph's field sets (`@key`, `@requires`, `@provides`), parsed by
//! `graphql_gateway::supergraph::FieldSet::parse`: it never panics, every
//! entry's arguments and alias are well formed, and a parsed set written back
//! out parses to the same set (entries are stored normalised).
#![no_main]

use graphql_gateway::supergraph::FieldSet;
use libfuzzer_sys::fuzz_target;

fn render(set: &FieldSet, out: &mut String) {
    for (entry, sub) in &set.0 {
        out.push_str(entry);
        if !sub.0.is_empty() {
            out.push_str(" { ");
            render(sub, out);
            out.push_str(" }");
        }
        out.push(' ');
    }
}

fn check_entries(set: &FieldSet) {
    for (entry, sub) in &set.0 {
        if FieldSet::condition(entry).is_none() {
            let key = FieldSet::response_key(entry);
            assert!(!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "alias {key:?} of {entry:?}");
            let name = FieldSet::field_name(entry);
            assert!(!name.is_empty(), "no field name in {entry:?}");
            if entry.contains('(') {
                assert!(!FieldSet::arguments(entry).is_empty(), "arguments of {entry:?} lost");
            }
        }
        check_entries(sub);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(set) = FieldSet::parse(text) else { return };
    check_entries(&set);
    let mut written = String::new();
    render(&set, &mut written);
    assert_eq!(FieldSet::parse(&written).as_ref(), Ok(&set), "{text:?} written as {written:?}");
});
