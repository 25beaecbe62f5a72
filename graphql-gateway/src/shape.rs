//! The response the client asked for: the merged subgraph data walked along
//! the client's selection. The walk puts fields in the client's order and
//! under its aliases, evaluates type conditions by `__typename`, and
//! propagates nulls the way the GraphQL spec says (a null in a non-null
//! position nulls the nearest nullable parent and adds an error with its path).

use crate::operation::Field;
use crate::value::{write_json, write_str, Object, Value};
use apollo_compiler::ast::Type;
use apollo_compiler::validation::Valid;
use apollo_compiler::Schema;
use serde_json::{json, Value as Json};

/// The body is built as bytes: everything written is UTF-8 (GraphQL names,
/// and values serialized by serde_json), so it is never checked piecewise.
fn write_key(out: &mut Vec<u8>, key: &str) {
    // Response keys are GraphQL names: no escaping needed.
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.push(b'"');
}

#[derive(Debug, Clone, PartialEq)]
enum PathItem<'f> {
    Key(&'f str),
    Index(usize),
}

pub struct Shaper<'a> {
    pub schema: &'a Valid<Schema>,
    pub errors: Vec<Json>,
    /// Where the walk is, for error paths.
    path: Vec<PathItem<'a>>,
}

/// A null that must travel up to the nearest nullable position.
struct Bubble;

impl<'a> Shaper<'a> {
    pub fn new(schema: &'a Valid<Schema>) -> Self {
        Shaper {
            schema,
            errors: Vec::new(),
            path: Vec::new(),
        }
    }

    fn path_json(&self) -> Json {
        Json::Array(
            self.path
                .iter()
                .map(|p| match p {
                    PathItem::Key(k) => json!(k),
                    PathItem::Index(i) => json!(i),
                })
                .collect(),
        )
    }

    fn applies(&self, condition: &Option<String>, concrete: &str) -> bool {
        match condition {
            None => true,
            Some(c) => c == concrete || self.schema.is_subtype(c, concrete),
        }
    }

    /// Writes the selection `fields` of an object of type `type_name`; Err
    /// (with `out` left as it was) if a non-null field came out null.
    fn object(
        &mut self,
        out: &mut Vec<u8>,
        fields: &'a [Field],
        value: &Object,
        type_name: &str,
    ) -> Result<(), Bubble> {
        let start = out.len();
        let concrete = value
            .get("__typename")
            .and_then(Value::as_str)
            .unwrap_or(type_name);
        out.push(b'{');
        let mut first = true;
        // Only fields under type conditions can share a response key (the
        // normaliser merged the rest), so only they are checked for repeats.
        let track = fields.iter().any(|f| f.condition.is_some());
        let mut written: Vec<&str> = Vec::new();
        for f in fields {
            if !self.applies(&f.condition, concrete) {
                continue;
            }
            if track {
                if written.contains(&f.key.as_str()) {
                    continue;
                }
                written.push(&f.key);
            }
            if !first {
                out.push(b',');
            }
            first = false;
            write_key(out, &f.key);
            out.push(b':');
            if f.name == "__typename" {
                write_str(out, concrete);
                continue;
            }
            self.path.push(PathItem::Key(&f.key));
            let completed = self.value(
                out,
                f,
                &f.ty,
                value.get(&f.key).unwrap_or(&Value::Null),
                concrete,
            );
            self.path.pop();
            if completed.is_err() {
                out.truncate(start);
                return Err(Bubble);
            }
        }
        out.push(b'}');
        Ok(())
    }

    fn value(
        &mut self,
        out: &mut Vec<u8>,
        field: &'a Field,
        ty: &Type,
        value: &Value,
        parent_type: &str,
    ) -> Result<(), Bubble> {
        if value.is_null() {
            if ty.is_non_null() {
                self.errors.push(json!({"message": format!("Cannot return null for non-nullable field {parent_type}.{}.", field.name), "path": self.path_json()}));
                return Err(Bubble);
            }
            out.extend_from_slice(b"null");
            return Ok(());
        }
        let start = out.len();
        let result = match ty {
            Type::List(inner) | Type::NonNullList(inner) => match value {
                Value::Array(items) => {
                    out.push(b'[');
                    let mut result = Ok(());
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        self.path.push(PathItem::Index(i));
                        result = self.value(out, field, inner, item, parent_type);
                        self.path.pop();
                        if result.is_err() {
                            break;
                        }
                    }
                    out.push(b']');
                    result
                }
                _ => {
                    out.extend_from_slice(b"null");
                    Ok(())
                }
            },
            Type::Named(name) | Type::NonNullNamed(name) => {
                if field.children.is_empty() {
                    write_json(out, value);
                    Ok(())
                } else {
                    match value {
                        Value::Object(map) => self.object(out, &field.children, map, name.as_str()),
                        _ => {
                            out.extend_from_slice(b"null");
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
                    out.extend_from_slice(b"null");
                    Ok(())
                }
            }
        }
    }

    /// Writes the `data` of the response for the root selection.
    pub fn root(&mut self, out: &mut Vec<u8>, fields: &'a [Field], data: &Value, root_type: &str) {
        let empty = Object::new();
        let map = data.as_object().unwrap_or(&empty);
        if self.object(out, fields, map, root_type).is_err() {
            out.extend_from_slice(b"null");
        }
    }
}
