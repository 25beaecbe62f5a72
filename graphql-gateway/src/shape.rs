//! The response the client asked for: the merged subgraph data walked along
//! the client's selection. The walk puts fields in the client's order and
//! under its aliases, evaluates type conditions by `__typename`, and
//! propagates nulls the way the GraphQL spec says (a null in a non-null
//! position nulls the nearest nullable parent and adds an error with its path).

use crate::operation::Field;
use apollo_compiler::ast::Type;
use apollo_compiler::validation::Valid;
use apollo_compiler::Schema;
use serde_json::{json, Value as Json};

fn write_key(out: &mut String, key: &str) {
    // Response keys are GraphQL names: no escaping needed.
    out.push('"');
    out.push_str(key);
    out.push('"');
}

/// A scalar, with serde_json's escaping, written straight into the body.
fn write_leaf(out: &mut String, value: &Json) {
    let _ = serde_json::to_writer(StringWriter(out), value);
}

/// Lets serde_json write UTF-8 straight into a String.
struct StringWriter<'a>(&'a mut String);

impl std::io::Write for StringWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // serde_json only writes valid UTF-8, but check rather than trust it.
        let text = std::str::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.0.push_str(text);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
enum PathItem {
    Key(String),
    Index(usize),
}

pub struct Shaper<'a> {
    pub schema: &'a Valid<Schema>,
    pub errors: Vec<Json>,
    /// Paths that already carry an error (a subgraph's), so null propagation
    /// does not report them twice.
    path: Vec<PathItem>,
}

/// A null that must travel up to the nearest nullable position.
struct Bubble;

impl<'a> Shaper<'a> {
    pub fn new(schema: &'a Valid<Schema>) -> Self {
        Shaper { schema, errors: Vec::new(), path: Vec::new() }
    }

    fn path_json(&self) -> Json {
        Json::Array(self.path.iter().map(|p| match p {
            PathItem::Key(k) => json!(k),
            PathItem::Index(i) => json!(i),
        }).collect())
    }

    fn applies(&self, condition: &Option<String>, concrete: &str) -> bool {
        match condition {
            None => true,
            Some(c) => c == concrete || self.schema.is_subtype(c, concrete),
        }
    }

    /// Writes the selection `fields` of an object of type `type_name`; Err
    /// (with `out` left as it was) if a non-null field came out null.
    fn object(&mut self, out: &mut String, fields: &[Field], value: &serde_json::Map<String, Json>, type_name: &str) -> Result<(), Bubble> {
        let start = out.len();
        let concrete = value.get("__typename").and_then(Json::as_str).unwrap_or(type_name);
        out.push('{');
        let mut first = true;
        let mut written: Vec<&str> = Vec::new();
        for f in fields {
            if !self.applies(&f.condition, concrete) || written.contains(&f.key.as_str()) {
                continue;
            }
            written.push(&f.key);
            if !first {
                out.push(',');
            }
            first = false;
            write_key(out, &f.key);
            out.push(':');
            if f.name == "__typename" {
                write_leaf(out, &Json::String(concrete.to_string()));
                continue;
            }
            self.path.push(PathItem::Key(f.key.clone()));
            let completed = self.value(out, f, &f.ty, value.get(&f.key).unwrap_or(&Json::Null), concrete);
            self.path.pop();
            if completed.is_err() {
                out.truncate(start);
                return Err(Bubble);
            }
        }
        out.push('}');
        Ok(())
    }

    fn value(&mut self, out: &mut String, field: &Field, ty: &Type, value: &Json, parent_type: &str) -> Result<(), Bubble> {
        if value.is_null() {
            if ty.is_non_null() {
                self.errors.push(json!({"message": format!("Cannot return null for non-nullable field {parent_type}.{}.", field.name), "path": self.path_json()}));
                return Err(Bubble);
            }
            out.push_str("null");
            return Ok(());
        }
        let start = out.len();
        let result = match ty {
            Type::List(inner) | Type::NonNullList(inner) => match value {
                Json::Array(items) => {
                    out.push('[');
                    let mut result = Ok(());
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        self.path.push(PathItem::Index(i));
                        result = self.value(out, field, inner, item, parent_type);
                        self.path.pop();
                        if result.is_err() {
                            break;
                        }
                    }
                    out.push(']');
                    result
                }
                _ => {
                    out.push_str("null");
                    Ok(())
                }
            },
            Type::Named(name) | Type::NonNullNamed(name) => {
                if field.children.is_empty() {
                    write_leaf(out, value);
                    Ok(())
                } else {
                    match value {
                        Json::Object(map) => self.object(out, &field.children, map, name.as_str()),
                        _ => {
                            out.push_str("null");
                            Ok(())
                        }
                    }
                }
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(Bubble) => {
                out.truncate(start);
                if ty.is_non_null() {
                    Err(Bubble)
                } else {
                    out.push_str("null");
                    Ok(())
                }
            }
        }
    }

    /// Writes the `data` of the response for the root selection.
    pub fn root(&mut self, out: &mut String, fields: &[Field], data: &Json, root_type: &str) {
        let empty = serde_json::Map::new();
        let map = data.as_object().unwrap_or(&empty);
        if self.object(out, fields, map, root_type).is_err() {
            out.push_str("null");
        }
    }
}
