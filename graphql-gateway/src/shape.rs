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

    /// Writes the selection of an object of type `type_name`; Err (with
    /// `out` left as it was) if a non-null field came out null.
    ///
    /// `selections` are the sub-selections of every field merged into this
    /// one (one, unless the client selected the same response key more than
    /// once under different type conditions). As graphql-js's field
    /// collection does, the fields that apply to the object's type are
    /// grouped by response key in first-seen order, and each group is
    /// written once with the sub-selections of all its fields merged.
    fn object(
        &mut self,
        out: &mut Vec<u8>,
        selections: &[&'a [Field]],
        value: &Object,
        type_name: &str,
    ) -> Result<(), Bubble> {
        let start = out.len();
        let concrete = value
            .get("__typename")
            .and_then(Value::as_str)
            .unwrap_or(type_name);
        out.push(b'{');
        // The normaliser merged fields of one key and condition, so a single
        // selection without type conditions has no repeated key: the common
        // case, written without grouping.
        let simple = selections.len() == 1 && selections[0].iter().all(|f| f.condition.is_none());
        let completed = if simple {
            let mut result = Ok(());
            for (i, f) in selections[0].iter().enumerate() {
                result = self.member(out, i > 0, std::slice::from_ref(&f), value, concrete);
                if result.is_err() {
                    break;
                }
            }
            result
        } else {
            let mut groups: Vec<(&'a str, Vec<&'a Field>)> = Vec::new();
            for f in selections.iter().flat_map(|s| s.iter()) {
                if !self.applies(&f.condition, concrete) {
                    continue;
                }
                match groups.iter_mut().find(|(k, _)| *k == f.key) {
                    Some((_, group)) => group.push(f),
                    None => groups.push((&f.key, vec![f])),
                }
            }
            let mut result = Ok(());
            for (i, (_, group)) in groups.iter().enumerate() {
                result = self.member(out, i > 0, group, value, concrete);
                if result.is_err() {
                    break;
                }
            }
            result
        };
        if completed.is_err() {
            out.truncate(start);
            return Err(Bubble);
        }
        out.push(b'}');
        Ok(())
    }

    /// Writes `"key":value` for the fields `group` (one response key).
    fn member(
        &mut self,
        out: &mut Vec<u8>,
        comma: bool,
        group: &[&'a Field],
        value: &Object,
        concrete: &str,
    ) -> Result<(), Bubble> {
        let f = group[0];
        if comma {
            out.push(b',');
        }
        write_key(out, &f.key);
        out.push(b':');
        if f.name == "__typename" {
            write_str(out, concrete);
            return Ok(());
        }
        self.path.push(PathItem::Key(&f.key));
        let completed = self.value(
            out,
            group,
            &f.ty,
            value.get(&f.key).unwrap_or(&Value::Null),
            concrete,
        );
        self.path.pop();
        completed
    }

    fn value(
        &mut self,
        out: &mut Vec<u8>,
        group: &[&'a Field],
        ty: &Type,
        value: &Value,
        parent_type: &str,
    ) -> Result<(), Bubble> {
        let field = group[0];
        if value.is_null() {
            if ty.is_non_null() {
                self.errors.push(json!({"message": format!("Cannot return null for non-nullable field {parent_type}.{}.", field.name), "path": self.path_json()}));
                return Err(Bubble);
            }
            out.extend_from_slice(b"null");
            return Ok(());
        }
        // An object of a type clients cannot see (`@inaccessible`, so not in
        // the API schema) is not shown: null where the field is nullable, as
        // Apollo Router and Hive Router answer; an error where it is not.
        // (Only where the client selected fields: a custom scalar's JSON
        // object is a value, whatever keys it has.)
        if let (Value::Object(map), false) = (value, field.children.is_empty()) {
            if let Some(hidden) = map
                .get("__typename")
                .and_then(Value::as_str)
                .filter(|t| !self.schema.types.contains_key(*t))
            {
                if ty.is_non_null() {
                    self.errors.push(json!({"message": format!("{parent_type}.{} resolved to an object of type {hidden}, which is not part of the API schema.", field.name), "path": self.path_json()}));
                    return Err(Bubble);
                }
                out.extend_from_slice(b"null");
                return Ok(());
            }
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
                        result = self.value(out, group, inner, item, parent_type);
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
                    if field.is_enum {
                        self.enum_value(out, name.as_str(), value, ty.is_non_null())
                    } else {
                        write_json(out, value);
                        Ok(())
                    }
                } else {
                    match value {
                        Value::Object(map) if group.len() == 1 => {
                            let one = [field.children.as_slice()];
                            self.object(out, &one, map, name.as_str())
                        }
                        Value::Object(map) => {
                            let merged: Vec<&'a [Field]> =
                                group.iter().map(|f| f.children.as_slice()).collect();
                            self.object(out, &merged, map, name.as_str())
                        }
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

    /// Writes an enum value if the API schema has it. A value it does not
    /// have (`@inaccessible`, or unknown) is an error at this path, and the
    /// field is null, as graphql-js does when a resolver returns one.
    fn enum_value(
        &mut self,
        out: &mut Vec<u8>,
        enum_name: &str,
        value: &Value,
        non_null: bool,
    ) -> Result<(), Bubble> {
        let known = match (self.schema.types.get(enum_name), value.as_str()) {
            (Some(apollo_compiler::schema::ExtendedType::Enum(e)), Some(v)) => {
                e.values.contains_key(v)
            }
            _ => false,
        };
        if known {
            write_json(out, value);
            return Ok(());
        }
        let shown = serde_json::to_string(&Json::from(value.clone())).unwrap_or_default();
        self.errors.push(json!({
            "message": format!("Enum \"{enum_name}\" cannot represent value: {shown}"),
            "path": self.path_json(),
        }));
        if non_null {
            return Err(Bubble);
        }
        out.extend_from_slice(b"null");
        Ok(())
    }

    /// Writes the `data` of the response for the root selection.
    pub fn root(&mut self, out: &mut Vec<u8>, fields: &'a [Field], data: &Value, root_type: &str) {
        let empty = Object::new();
        let map = data.as_object().unwrap_or(&empty);
        if self.object(out, &[fields], map, root_type).is_err() {
            out.extend_from_slice(b"null");
        }
    }
}
