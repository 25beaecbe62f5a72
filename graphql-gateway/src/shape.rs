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

/// An ordered JSON value (objects keep the client's field order).
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    Null,
    Leaf(Json),
    List(Vec<Out>),
    Object(Vec<(String, Out)>),
}

impl Out {
    pub fn write(&self, out: &mut String) {
        match self {
            Out::Null => out.push_str("null"),
            Out::Leaf(v) => out.push_str(&v.to_string()),
            Out::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Out::Object(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Json::String(k.clone()).to_string());
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
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

    /// The selection `fields` of an object of type `type_name`; Err if a
    /// non-null field came out null.
    fn object(&mut self, fields: &[Field], value: &serde_json::Map<String, Json>, type_name: &str, parent_type: &str) -> Result<Out, Bubble> {
        let concrete = value.get("__typename").and_then(Json::as_str).unwrap_or(type_name).to_string();
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            if !self.applies(&f.condition, &concrete) {
                continue;
            }
            if out.iter().any(|(k, _): &(String, Out)| *k == f.key) {
                continue;
            }
            if f.name == "__typename" {
                out.push((f.key.clone(), Out::Leaf(Json::String(concrete.clone()))));
                continue;
            }
            self.path.push(PathItem::Key(f.key.clone()));
            let completed = self.value(f, &f.ty, value.get(&f.key).unwrap_or(&Json::Null), &concrete);
            self.path.pop();
            match completed {
                Ok(v) => out.push((f.key.clone(), v)),
                Err(Bubble) => return Err(Bubble),
            }
        }
        let _ = parent_type;
        Ok(Out::Object(out))
    }

    fn value(&mut self, field: &Field, ty: &Type, value: &Json, parent_type: &str) -> Result<Out, Bubble> {
        if value.is_null() {
            if ty.is_non_null() {
                self.errors.push(json!({"message": format!("Cannot return null for non-nullable field {parent_type}.{}.", field.name), "path": self.path_json()}));
                return Err(Bubble);
            }
            return Ok(Out::Null);
        }
        let result = match ty {
            Type::List(inner) | Type::NonNullList(inner) => match value {
                Json::Array(items) => {
                    let mut out = Vec::with_capacity(items.len());
                    let mut failed = false;
                    for (i, item) in items.iter().enumerate() {
                        self.path.push(PathItem::Index(i));
                        let r = self.value(field, inner, item, parent_type);
                        self.path.pop();
                        match r {
                            Ok(v) => out.push(v),
                            Err(Bubble) => {
                                failed = true;
                                break;
                            }
                        }
                    }
                    if failed { Err(Bubble) } else { Ok(Out::List(out)) }
                }
                _ => Ok(Out::Null),
            },
            Type::Named(name) | Type::NonNullNamed(name) => {
                if field.children.is_empty() {
                    Ok(Out::Leaf(value.clone()))
                } else {
                    match value {
                        Json::Object(map) => self.object(&field.children, map, name.as_str(), parent_type),
                        _ => Ok(Out::Null),
                    }
                }
            }
        };
        match result {
            Err(Bubble) if !ty.is_non_null() => Ok(Out::Null),
            other => other,
        }
    }

    /// The `data` of the response for the root selection.
    pub fn root(&mut self, fields: &[Field], data: &Json, root_type: &str) -> Out {
        let empty = serde_json::Map::new();
        let map = data.as_object().unwrap_or(&empty);
        self.object(fields, map, root_type, root_type).unwrap_or(Out::Null)
    }
}
