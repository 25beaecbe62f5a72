//! Kubernetes manifests as YAML text, read the way kubectl reads them and
//! written so that kubectl reads back exactly the same values.
//!
//! kubectl turns YAML into JSON with YAML 1.1 rules (sigs.k8s.io/yaml over
//! go-yaml v2): `0644` is the octal integer 420, `0o644` and `0x1F` are
//! integers, `yes`/`no`/`on`/`off`/`y`/`n` are booleans, `~` is null,
//! timestamps stay the text written, and merge keys (`<<`) are resolved. A
//! YAML 1.2 reader (serde_yaml) disagrees on several of these, which silently
//! changed users' manifests. So [`load_document`] resolves plain scalars with
//! kubectl's rules, and [`to_yaml`] quotes every string that any YAML reader
//! could take for something else.
//!
//! [`split_documents`] cuts a stream into its documents' own text, so that
//! documents meshctl does not change are written back byte for byte.

use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// How deeply mappings and lists may nest (Kubernetes objects need about 20).
pub const MAX_DEPTH: usize = 200;

/// How many values a document may expand to, aliases included: a few KB of
/// nested aliases must not become gigabytes (the "billion laughs").
pub const MAX_VALUES: usize = 1_000_000;

/// A document that kubectl could not read either, or that cannot be JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct YamlError {
    /// 1-based, in the whole stream.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// One document of a stream: its own text (from its `---` line, if any,
/// through its `...` line, if any) and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment<'a> {
    pub text: &'a str,
    /// 0-based line of the segment's first line in the stream.
    pub first_line: usize,
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Whether a line holds no content: blank, a comment, or a directive.
fn is_prelude(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#') || line.starts_with('%')
}

/// Cuts a YAML stream into documents. A `---` or `...` at the start of a line
/// is a document marker wherever it appears (YAML forbids it inside scalars),
/// so lines are enough. Comment-only pieces join the document after them.
pub fn split_documents(text: &str) -> Vec<Segment<'_>> {
    let mut cuts = vec![0usize]; // byte offsets where a segment starts
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let end = offset + line.len();
        if is_marker(line, "---") && offset != 0 {
            cuts.push(offset);
        } else if is_marker(line, "...") && end != text.len() {
            cuts.push(end);
        }
        offset = end;
    }
    cuts.dedup();
    let mut pieces: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
    pieces.push((*cuts.last().unwrap_or(&0), text.len()));
    pieces.retain(|(start, end)| start < end || text.is_empty());
    // A piece with no content (comments, directives) belongs to the next one.
    let mut merged: Vec<(usize, usize)> = Vec::new();
    let mut pending: Option<usize> = None;
    for (start, end) in pieces {
        let body = &text[start..end];
        let empty = body.lines().all(|l| is_prelude(l) || l == "---" || is_marker(l, "---") && is_prelude(&l[3..]));
        let start = pending.take().unwrap_or(start);
        if empty && end != text.len() {
            pending = Some(start);
            continue;
        }
        merged.push((start, end));
    }
    if let Some(start) = pending {
        merged.push((start, text.len()));
    }
    merged
        .into_iter()
        .map(|(start, end)| Segment { text: &text[start..end], first_line: text[..start].matches('\n').count() })
        .collect()
}

/// The lines of a segment before its content: comments, blank lines,
/// directives and a bare `---` (kept when the document is rewritten), and
/// whether the segment ends with a `...` line.
pub fn prelude_and_end(segment: &str) -> (&str, bool) {
    let mut prelude_end = 0;
    for line in segment.split_inclusive('\n') {
        let bare_marker = is_marker(line, "---") && is_prelude(&line[3..]);
        if !(is_prelude(line) || bare_marker) {
            break;
        }
        prelude_end += line.len();
    }
    let ends_with_dots = segment.lines().last().is_some_and(|l| is_marker(l, "..."));
    (&segment[..prelude_end], ends_with_dots)
}

/// The key a mapping is waiting for a value of.
enum PendingKey {
    Name(String),
    /// A plain `<<`: the value is merged in.
    Merge,
}

enum Frame {
    Map { entries: Map<String, Value>, key: Option<PendingKey>, anchor: usize },
    Seq { items: Vec<Value>, anchor: usize },
}

struct Loader {
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Value, usize)>,
    document: Option<Value>,
    values: usize,
    line_offset: usize,
}

impl Loader {
    fn error(&self, mark: Marker, message: impl Into<String>) -> YamlError {
        YamlError { line: mark.line() + self.line_offset, column: mark.col() + 1, message: message.into() }
    }

    fn count(&mut self, n: usize, mark: Marker) -> Result<(), YamlError> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_VALUES {
            return Err(self.error(mark, format!("the document expands to more than {MAX_VALUES} values (aliases included); kubectl refuses such documents too")));
        }
        Ok(())
    }

    /// Places a finished value in its parent (or as the document).
    fn place(&mut self, value: Value, mark: Marker) -> Result<(), YamlError> {
        match self.stack.last_mut() {
            None => {
                self.document = Some(value);
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(value);
                Ok(())
            }
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    *key = Some(PendingKey::Name(match value {
                        Value::String(s) => s,
                        Value::Null => "null".into(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        Value::Array(_) | Value::Object(_) => {
                            return Err(self.error(mark, "a mapping key is a list or mapping, which JSON (and so Kubernetes) cannot hold"));
                        }
                    }));
                    Ok(())
                }
                Some(PendingKey::Merge) => merge_into(entries, value).map_err(|m| self.error(mark, m)),
                // go-yaml v2, as kubectl uses it: a repeated key's later value wins.
                Some(PendingKey::Name(k)) => {
                    entries.insert(k, value);
                    Ok(())
                }
            },
        }
    }

    fn open(&mut self, frame: Frame, mark: Marker) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(mark, format!("mappings and lists nest deeper than {MAX_DEPTH} levels")));
        }
        self.count(1, mark)?;
        self.stack.push(frame);
        Ok(())
    }

    fn remember(&mut self, anchor: usize, value: &Value, size: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (value.clone(), size));
        }
    }
}

/// Merges like go-yaml v2: every key of the merged mapping is set (over keys
/// set before the `<<`; keys after it override); of a list of mappings, the
/// earlier ones win.
fn merge_into(entries: &mut Map<String, Value>, value: Value) -> Result<(), String> {
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                entries.insert(k, v);
            }
            Ok(())
        }
        Value::Array(list) => {
            for item in list.into_iter().rev() {
                let Value::Object(m) = item else {
                    return Err("a merge key (<<) takes a mapping or a list of mappings".into());
                };
                for (k, v) in m {
                    entries.insert(k, v);
                }
            }
            Ok(())
        }
        _ => Err("a merge key (<<) takes a mapping or a list of mappings".into()),
    }
}

fn size_of(value: &Value) -> usize {
    // Iterative: values are at most MAX_DEPTH deep, but there is no need to recurse.
    let mut count = 0;
    let mut todo = vec![value];
    while let Some(v) = todo.pop() {
        count += 1;
        match v {
            Value::Array(items) => todo.extend(items),
            Value::Object(m) => todo.extend(m.values()),
            _ => {}
        }
    }
    count
}

/// Reads one document's text (a [`Segment`]) into JSON as kubectl would;
/// `None` for a document with no content. `line_offset` makes positions
/// relative to the whole stream.
pub fn load_document(text: &str, line_offset: usize) -> Result<Option<Value>, YamlError> {
    let mut loader = Loader { stack: Vec::new(), anchors: HashMap::new(), document: None, values: 0, line_offset };
    let mut parser = Parser::new_from_str(text);
    let mut documents = 0;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError {
            line: e.marker().line() + line_offset,
            column: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(loader.error(mark, "a second document inside one: separate documents with a line `---`"));
                }
            }
            Event::MappingStart(anchor, _) => loader.open(Frame::Map { entries: Map::new(), key: None, anchor }, mark)?,
            Event::SequenceStart(anchor, _) => loader.open(Frame::Seq { items: Vec::new(), anchor }, mark)?,
            Event::MappingEnd | Event::SequenceEnd => {
                let (value, anchor) = match loader.stack.pop() {
                    Some(Frame::Map { entries, anchor, .. }) => (Value::Object(entries), anchor),
                    Some(Frame::Seq { items, anchor }) => (Value::Array(items), anchor),
                    None => return Err(loader.error(mark, "unbalanced mapping or list")),
                };
                if anchor > 0 {
                    let size = size_of(&value);
                    loader.remember(anchor, &value, size);
                }
                loader.place(value, mark)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                loader.count(1, mark)?;
                // A plain `<<` in key position is a merge key (a quoted one is a key named "<<").
                if let (TScalarStyle::Plain, "<<", None, Some(Frame::Map { key: pending @ None, .. })) = (style, text.as_str(), &tag, loader.stack.last_mut()) {
                    *pending = Some(PendingKey::Merge);
                    continue;
                }
                let value = scalar(&text, style, tag.as_ref()).map_err(|m| loader.error(mark, m))?;
                loader.remember(anchor, &value, 1);
                loader.place(value, mark)?;
            }
            Event::Alias(id) => {
                let Some(size) = loader.anchors.get(&id).map(|(_, size)| *size) else {
                    return Err(loader.error(mark, "an alias (*name) refers to no anchor (&name) before it"));
                };
                // Counted before the copy is made.
                loader.count(size, mark)?;
                let value = loader.anchors.get(&id).map(|(v, _)| v.clone()).unwrap_or(Value::Null);
                loader.place(value, mark)?;
            }
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    // An empty document (a lone `---`, or `--- ~`) is no object: kubectl skips it.
    Ok(loader.document.filter(|d| !d.is_null()))
}

/// One scalar's JSON value under kubectl's (go-yaml v2's) rules.
fn scalar(text: &str, style: TScalarStyle, tag: Option<&yaml_rust2::parser::Tag>) -> Result<Value, String> {
    if let Some(tag) = tag {
        let core = tag.handle == "tag:yaml.org,2002:";
        return match (core, tag.suffix.as_str()) {
            (true, "str") => Ok(Value::String(text.into())),
            (true, "null") => Ok(Value::Null),
            (true, "bool" | "int" | "float") => {
                let v = resolve_plain(text)?;
                let fits = match tag.suffix.as_str() {
                    "bool" => v.is_boolean(),
                    "int" => v.is_i64() || v.is_u64(),
                    _ => v.is_number(),
                };
                if fits {
                    Ok(v)
                } else {
                    Err(format!("{} does not fit its tag !!{}", crate::echo::quoted(text), tag.suffix))
                }
            }
            (true, "binary") => Err("!!binary values are not supported by meshctl inject; write the data as a base64 string".into()),
            // go-yaml keeps the text of scalars with tags it does not resolve.
            _ => Ok(Value::String(text.into())),
        };
    }
    if style != TScalarStyle::Plain {
        return Ok(Value::String(text.into()));
    }
    resolve_plain(text)
}

const TRUE_WORDS: &[&str] = &["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"];
const FALSE_WORDS: &[&str] = &["n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"];
const NULL_WORDS: &[&str] = &["", "~", "null", "Null", "NULL"];
const SPECIAL_FLOATS: &[&str] = &[".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN"];

/// A plain scalar as go-yaml v2 resolves it, then as sigs.k8s.io/yaml turns it into JSON.
fn resolve_plain(text: &str) -> Result<Value, String> {
    if NULL_WORDS.contains(&text) {
        return Ok(Value::Null);
    }
    if TRUE_WORDS.contains(&text) {
        return Ok(Value::Bool(true));
    }
    if FALSE_WORDS.contains(&text) {
        return Ok(Value::Bool(false));
    }
    if SPECIAL_FLOATS.contains(&text) {
        return Err(format!("{text} is an infinite or NaN float, which JSON (and so Kubernetes) cannot hold"));
    }
    // Only text starting with a digit, a sign or a dot can be a number;
    // timestamps (2024-01-02) stay text, as kubectl keeps them.
    if !text.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.')) {
        return Ok(Value::String(text.into()));
    }
    let plain: String = text.chars().filter(|c| *c != '_').collect();
    if let Some(n) = go_parse_int(&plain) {
        return Ok(Value::Number(n.into()));
    }
    if let Some(n) = go_parse_uint(&plain) {
        return Ok(Value::Number(n.into()));
    }
    if is_yaml_style_float(&plain) {
        // Go's ParseFloat fails on overflow (1e400), and go-yaml then keeps the text.
        if let Some(f) = plain.parse::<f64>().ok().filter(|f| f.is_finite()) {
            return Ok(json_float(f));
        }
    }
    Ok(Value::String(text.into()))
}

/// The JSON text Go writes for a float64 is an integer for whole values below
/// 1e21; kubectl then sends `3`, not `3.0` or `1e16`, which integer fields
/// accept. Whole values are kept as integers wherever JSON numbers here can be.
fn json_float(f: f64) -> Value {
    if f.fract() == 0.0 {
        // The casts are exact: whole values inside these ranges.
        if f.abs() < 9.2e18 {
            return Value::Number((f as i64).into());
        }
        if f > 0.0 && f < 1.8e19 {
            return Value::Number((f as u64).into());
        }
    }
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`, go-yaml's float shape.
fn is_yaml_style_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Splits Go's base-0 integer syntax: optional sign, then `0x`/`0o`/`0b`
/// prefixes or a leading `0` for octal.
fn go_base(unsigned: &str) -> Option<(u32, &str)> {
    let lower = |i: usize| unsigned.as_bytes().get(i).map(u8::to_ascii_lowercase);
    if unsigned.len() > 1 && unsigned.starts_with('0') {
        return match lower(1) {
            Some(b'x') => Some((16, &unsigned[2..])),
            Some(b'o') => Some((8, &unsigned[2..])),
            Some(b'b') => Some((2, &unsigned[2..])),
            _ => Some((8, &unsigned[1..])),
        };
    }
    Some((10, unsigned))
}

fn go_digits(text: &str, radix: u32) -> Option<u128> {
    if text.is_empty() || !text.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u128::from_str_radix(text, radix).ok()
}

/// Go's `strconv.ParseInt(s, 0, 64)`.
fn go_parse_int(s: &str) -> Option<i64> {
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = go_base(unsigned)?;
    let magnitude = go_digits(digits, radix)?;
    if negative {
        if magnitude <= i64::MAX as u128 + 1 {
            return Some((-(magnitude as i128)) as i64);
        }
        None
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Go's `strconv.ParseUint(s, 0, 64)` (no sign accepted).
fn go_parse_uint(s: &str) -> Option<u64> {
    let (radix, digits) = go_base(s)?;
    u64::try_from(go_digits(digits, radix)?).ok()
}

/// Writes `value` as a YAML document (block style) that YAML 1.1 and 1.2
/// readers, kubectl among them, read back as exactly `value`.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => write_map(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => write_seq(a, 0, &mut out),
        other => {
            out.push_str(&scalar_text(other));
            out.push('\n');
        }
    }
    out
}

fn write_map(map: &Map<String, Value>, indent: usize, out: &mut String) {
    for (i, (key, value)) in map.iter().enumerate() {
        // The first key of a list item follows its "- " directly.
        if i > 0 || !out.ends_with("- ") {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&string_text(key));
        out.push(':');
        write_value_after_key(value, indent, out);
    }
}

fn write_value_after_key(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(m, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(a, indent + 2, out);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar_text(other));
            out.push('\n');
        }
    }
}

fn write_seq(items: &[Value], indent: usize, out: &mut String) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        match item {
            Value::Object(m) if !m.is_empty() => {
                out.push_str("- ");
                write_map(m, indent + 2, out);
            }
            Value::Array(a) if !a.is_empty() => {
                out.push_str("-\n");
                write_seq(a, indent + 2, out);
            }
            other => {
                out.push_str("- ");
                out.push_str(&scalar_text(other));
                out.push('\n');
            }
        }
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string_text(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// A string plain only when it is unmistakably one: starts with a letter, `/`
/// or `_`, holds only letters, digits and `_ . / -`, and no YAML 1.1 word
/// (`yes`, `on`, `n`, `null`, ...) or 1.2 word reads it otherwise. Everything
/// else is double-quoted.
fn string_text(s: &str) -> String {
    let plain_safe = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
        && matches!(resolve_plain(s), Ok(Value::String(_)))
        && !s.eq_ignore_ascii_case("null")
        && !s.eq_ignore_ascii_case("true")
        && !s.eq_ignore_ascii_case("false");
    if plain_safe {
        return s.to_string();
    }
    double_quoted(s)
}

/// YAML double-quoted text; anything that is not plainly printable is escaped,
/// including the characters YAML 1.1 treats as line breaks (U+0085, U+2028,
/// U+2029) and the byte-order mark.
fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c) => out.push_str(&format!("\\x{:02x}", c as u32)),
            '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(text: &str) -> Value {
        load_document(text, 0).expect("valid").expect("a document")
    }

    #[test]
    fn plain_scalars_resolve_as_kubectl_resolves_them() {
        let v = load(
            "octal: 0644\noctal_o: 0o644\nhex: 0x1F\nbinary: 0b101\nunderscored: 1_000\nsigned: +12\nneg: -0x10\nnine: 09\n\
             float: 1.5\nexp: 1e3\nwhole: 3.0\ndot: .5\nyes_: yes\nno_: No\non_: ON\noff_: off\ny_: y\nn_: n\n\
             tilde: ~\nempty:\nnull_: Null\ndate: 2024-01-02\nstamp: 2001-12-14t21:59:43.10-05:00\nword: yesterday\nbig: 18446744073709551615\n\
             huge: 1e400\nwhole_big: 1e16\n",
        );
        assert_eq!(
            v,
            json!({
                "octal": 420, "octal_o": 420, "hex": 31, "binary": 5, "underscored": 1000, "signed": 12, "neg": -16, "nine": 9,
                "float": 1.5, "exp": 1000, "whole": 3, "dot": 0.5, "yes_": true, "no_": false, "on_": true, "off_": false, "y_": true, "n_": false,
                "tilde": null, "empty": null, "null_": null, "date": "2024-01-02", "stamp": "2001-12-14t21:59:43.10-05:00", "word": "yesterday",
                "big": 18446744073709551615u64, "huge": "1e400", "whole_big": 10000000000000000i64,
            })
        );
    }

    #[test]
    fn quoted_and_tagged_scalars_stay_strings() {
        let v = load("a: \"yes\"\nb: 'no'\nc: \"0644\"\nd: !!str 12\ne: |\n  on\nf: \"~\"\ng: !!int \"7\"\n");
        assert_eq!(v, json!({"a": "yes", "b": "no", "c": "0644", "d": "12", "e": "on\n", "f": "~", "g": 7}));
    }

    #[test]
    fn merge_keys_and_aliases_resolve_like_go_yaml_v2() {
        let v = load("base: &b {cpu: 1, mem: 2}\nother: &o {mem: 3, disk: 4}\nx:\n  <<: *b\n  cpu: 5\nboth:\n  <<: [*o, *b]\ncopy: *b\n\"<<\": literal\ny: key\n");
        assert_eq!(v["x"], json!({"cpu": 5, "mem": 2}));
        // Of a list of merged mappings, the earlier wins.
        assert_eq!(v["both"], json!({"cpu": 1, "mem": 3, "disk": 4}));
        assert_eq!(v["copy"], json!({"cpu": 1, "mem": 2}));
        assert_eq!(v["<<"], json!("literal"));
        // As in kubectl: a plain key `y` is the boolean true, so the key "true".
        assert_eq!(v["true"], json!("key"));
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused_with_a_position() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g"].windows(2).map(|w| (w[0], w[1])) {
            bomb.push_str(&format!("{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let err = load_document(&bomb, 10).expect_err("too many values");
        assert!(err.message.contains("more than") && err.line > 10, "{err}");
        let deep = format!("a: {}{}\n", "[".repeat(250), "]".repeat(250));
        assert!(load_document(&deep, 0).is_err());
    }

    #[test]
    fn written_yaml_reads_back_as_the_same_values() {
        let v = json!({
            "s": ["yes", "no", "on", "off", "y", "n", "Y", "N", "true", "False", "null", "~", "", "0644", "0o644", "0x1F", "1e3", "12", "-1", ".5",
                  "2024-01-02", "<<", "a: b", "- x", "#c", "multi\nline", "tab\there", "quote\"s", "back\\slash", "\u{2028}", "é", "plain-word", "/a/path"],
            "n": [0, -5, 420, 1.5, 18446744073709551615u64],
            "b": [true, false, null],
            "empty": {"m": {}, "l": []},
            "nested": [[1, [2]], {"k": [{"a": 1, "b": {"c": "d"}}]}],
            "yes": "key that YAML 1.1 would read as a boolean",
        });
        let text = to_yaml(&v);
        assert_eq!(load(&text), v, "{text}");
        assert!(text.contains("- \"yes\"\n") && text.contains("\"yes\": \"key"), "{text}");
    }

    /// Values made from pieces YAML readers are known to trip on, many times
    /// over: what `to_yaml` writes must read back as the same value.
    #[test]
    fn generated_values_survive_writing_and_reading() {
        const PIECES: &[&str] = &[
            "yes", "No", "on", "OFF", "y", "~", "null", "true", "0644", "0o7", "0x1F", "1e3", ".5", "-", "- ", "? ", ": ", ":", "#", " #", "'", "\"",
            "\\", "\n", "\t", "\r", " ", "  ", "{", "}", "[", "]", ",", "&a", "*a", "!", "!!str", "%", "@", "`", "|", ">", "<<", "---", "...",
            "2024-01-02", "é", "日本", "\u{85}", "\u{2028}", "\u{feff}", "\u{7f}", "\u{0}", "a", "B", "/", "_", ".", "1", "=",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        fn text(next: &mut impl FnMut(u64) -> u64) -> String {
            (0..next(4)).map(|_| PIECES[next(PIECES.len() as u64) as usize]).collect()
        }
        fn value(next: &mut impl FnMut(u64) -> u64, depth: u32) -> Value {
            match next(if depth >= 4 { 6 } else { 8 }) {
                0 => Value::Null,
                1 => Value::Bool(next(2) == 0),
                2 => json!(next(1 << 40) as i64 - (1 << 39)),
                3 => json!(next(1000) as f64 + 0.25),
                4 | 5 => Value::String(text(next)),
                6 => Value::Array((0..next(4)).map(|_| value(next, depth + 1)).collect()),
                _ => Value::Object((0..next(4)).map(|_| (text(next), value(next, depth + 1))).collect()),
            }
        }
        for round in 0..3000 {
            let v = Value::Object((0..1 + next(4)).map(|_| (text(&mut next), value(&mut next, 0))).collect());
            let written = to_yaml(&v);
            let read = load_document(&written, 0).unwrap_or_else(|e| panic!("round {round}: {e}\n{written}"));
            assert_eq!(read.as_ref(), Some(&v), "round {round}:\n{written}");
        }
    }

    #[test]
    fn streams_split_into_documents_that_keep_their_bytes() {
        let text = "# header\n---\na: 1\n--- # second\nb: |\n  text\n...\n# between\nc: 3\n---\n";
        let segments = split_documents(text);
        let joined: String = segments.iter().map(|s| s.text).collect();
        assert_eq!(joined, text);
        let docs: Vec<Option<Value>> = segments.iter().map(|s| load_document(s.text, s.first_line).expect("valid")).collect();
        assert_eq!(docs, vec![Some(json!({"a": 1})), Some(json!({"b": "text\n"})), Some(json!({"c": 3})), None]);
        assert_eq!(segments[2].first_line, 7);
        assert_eq!(prelude_and_end(segments[1].text), ("--- # second\n", true));
        assert_eq!(prelude_and_end(segments[0].text), ("# header\n---\n", false));
    }
}
