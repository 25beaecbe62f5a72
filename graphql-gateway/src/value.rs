//! The tree that subgraph answers are parsed and merged into.
//!
//! serde_json's `Value` keeps objects in a `BTreeMap`, which allocates a
//! whole B-tree node even for a two-field object and compares keys on every
//! lookup. Subgraph objects are small and read in order, so here an object is
//! a vector of (key, value) pairs searched linearly: parsing allocates one
//! buffer per object, merging appends, and the response walk finds fields in
//! a few comparisons. Keys and strings up to 24 bytes are stored inline
//! (`CompactString`), so most of them allocate nothing.

use compact_str::CompactString;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Number;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(CompactString),
    Array(Vec<Value>),
    Object(Object),
}

/// Fields in the order they arrived; a key appears once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object(Vec<(CompactString, Value)>);

impl Object {
    pub fn new() -> Object {
        Object(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| &**k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.0.iter_mut().find(|(k, _)| &**k == key).map(|(_, v)| v)
    }

    /// Sets `key`, replacing an earlier value.
    pub fn insert(&mut self, key: CompactString, value: Value) {
        match self.get_mut(&key) {
            Some(slot) => *slot = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional);
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let at = self.0.iter().position(|(k, _)| &**k == key)?;
        Some(self.0.remove(at).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for Object {
    type Item = (CompactString, Value);
    type IntoIter = std::vec::IntoIter<(CompactString, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl Value {
    /// A field of an object; None for anything else.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object().and_then(|o| o.get(key))
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_object_mut(&mut self) -> Option<&mut Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Takes the value out, leaving null.
    pub fn take(&mut self) -> Value {
        std::mem::take(self)
    }
}

impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => Value::Number(n),
            serde_json::Value::String(s) => Value::String(s.into()),
            serde_json::Value::Array(items) => {
                Value::Array(items.into_iter().map(Value::from).collect())
            }
            serde_json::Value::Object(map) => Value::Object(Object(
                map.into_iter()
                    .map(|(k, v)| (k.into(), Value::from(v)))
                    .collect(),
            )),
        }
    }
}

impl From<Value> for serde_json::Value {
    fn from(v: Value) -> serde_json::Value {
        match v {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(b),
            Value::Number(n) => serde_json::Value::Number(n),
            Value::String(s) => serde_json::Value::String(s.into_string()),
            Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(serde_json::Value::from).collect())
            }
            Value::Object(o) => serde_json::Value::Object(
                o.into_iter()
                    .map(|(k, v)| (k.into_string(), serde_json::Value::from(v)))
                    .collect(),
            ),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => n.serialize(s),
            Value::String(text) => s.serialize_str(text),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(o) => {
                let mut map = s.serialize_map(Some(o.len()))?;
                for (k, v) in o.iter() {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Writes `text` as a JSON string. Most strings need no escaping; those are
/// copied whole instead of byte by byte.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    // A fold without early exit, so the check compiles to vector compares.
    let needs_escape = text.as_bytes().iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escape {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(out, text);
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// Writes `value` as JSON.
pub fn write_json(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let _ = serde_json::to_writer(out, n);
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, item);
            }
            out.push(b']');
        }
        Value::Object(o) => {
            out.push(b'{');
            for (i, (k, v)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                write_json(out, v);
            }
            out.push(b'}');
        }
    }
}

/// A repeated key keeps its first place and its last value, as serde_json's
/// map does. Small objects are checked pairwise; large ones with a hash set,
/// so a subgraph answer with a huge object cannot make parsing quadratic.
fn without_repeated_keys(fields: Vec<(CompactString, Value)>) -> Object {
    const PAIRWISE: usize = 16;
    let repeated = if fields.len() <= PAIRWISE {
        fields
            .iter()
            .enumerate()
            .any(|(i, (k, _))| fields[..i].iter().any(|(earlier, _)| earlier == k))
    } else {
        let mut seen = std::collections::HashSet::with_capacity(fields.len());
        !fields.iter().all(|(k, _)| seen.insert(k.as_str()))
    };
    if !repeated {
        return Object(fields);
    }
    let mut at: std::collections::HashMap<CompactString, usize> =
        std::collections::HashMap::with_capacity(fields.len());
    let mut out: Vec<(CompactString, Value)> = Vec::with_capacity(fields.len());
    for (k, v) in fields {
        match at.get(&k) {
            Some(i) => out[*i].1 = v,
            None => {
                at.insert(k.clone(), out.len());
                out.push((k, v));
            }
        }
    }
    Object(out)
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity; serde_json never produces them.
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.into()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s.into()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields: Vec<(CompactString, Value)> =
            Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some(key) = map.next_key::<KeyText>()? {
            fields.push((key.0, map.next_value()?));
        }
        Ok(Value::Object(without_repeated_keys(fields)))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// An object key, read without an intermediate `String` when the input lets
/// it be borrowed.
struct KeyText(CompactString);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyText, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, s: &str) -> Result<KeyText, E> {
                Ok(KeyText(s.into()))
            }
            fn visit_string<E>(self, s: String) -> Result<KeyText, E> {
                Ok(KeyText(s.into()))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_serializes_and_converts_like_serde_json() {
        let text =
            r#"{"b":[1,-2,3.5,"x\n",null,true],"a":{"z":{},"y":[]},"b2":18446744073709551615}"#;
        let v: Value = serde_json::from_str(text).expect("parses");
        // Field order is kept, unlike serde_json's sorted map.
        assert_eq!(serde_json::to_string(&v).expect("serializes"), text);
        let mut written = Vec::new();
        write_json(&mut written, &v);
        assert_eq!(String::from_utf8(written).expect("UTF-8"), text);
        let j: serde_json::Value = v.clone().into();
        assert_eq!(
            j,
            serde_json::from_str::<serde_json::Value>(text).expect("parses")
        );
        // Through serde_json's map the order is lost, the content is not.
        assert_eq!(serde_json::Value::from(Value::from(j.clone())), j);
    }

    #[test]
    fn a_large_object_with_a_repeated_key_keeps_the_last_value() {
        let mut text = String::from("{");
        for i in 0..100 {
            text.push_str(&format!("\"k{i}\":{i},"));
        }
        text.push_str("\"k7\":\"last\"}");
        let v: Value = serde_json::from_str(&text).expect("parses");
        let o = v.as_object().expect("object");
        assert_eq!(o.len(), 100);
        assert_eq!(o.get("k7").and_then(Value::as_str), Some("last"));
        assert_eq!(
            o.iter().nth(7).map(|(k, _)| k),
            Some("k7"),
            "the first place is kept"
        );
    }

    #[test]
    fn a_repeated_key_keeps_the_last_value() {
        let v: Value = serde_json::from_str(r#"{"a":1,"b":2,"a":3}"#).expect("parses");
        assert_eq!(
            serde_json::to_value(&v).expect("serializes"),
            json!({"a": 3, "b": 2})
        );
        let mut o = v.as_object().cloned().expect("object");
        assert_eq!(o.remove("a"), Some(Value::Number(3.into())));
        assert_eq!(o.len(), 1);
    }
}
