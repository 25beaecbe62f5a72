//! A validated operation, normalised for planning and response shaping:
//! fragments are inlined, `@skip`/`@include` are applied, variables are
//! substituted into arguments, and fields with the same response key are merged.

use apollo_compiler::ast::{Type, Value};
use apollo_compiler::executable::{Operation, Selection, SelectionSet};
use apollo_compiler::validation::Valid;
use apollo_compiler::{ExecutableDocument, Schema};
use serde_json::{Map, Value as Json};

/// One field selection after normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The response key (alias or name).
    pub key: String,
    pub name: String,
    /// Arguments with variables substituted, as GraphQL literals typed by
    /// the schema (enum values bare), in the order written.
    pub args: Vec<(String, String)>,
    /// The field's type as the schema declares it (for null propagation).
    pub ty: Type,
    /// Applies only when the object's type is this one (or implements it);
    /// set under abstract parents.
    pub condition: Option<String>,
    pub children: Vec<Field>,
    /// The output is an enum: values from subgraphs are checked against the
    /// API schema's values (an `@inaccessible` value must not reach a client).
    pub is_enum: bool,
}

impl Field {
    pub fn output(&self) -> &str {
        self.ty.inner_named_type().as_str()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("{0}")]
    Request(String),
}

pub fn json_of(value: &Value, variables: &Map<String, Json>) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Enum(e) => Json::String(e.to_string()),
        Value::Variable(v) => variables.get(v.as_str()).cloned().unwrap_or(Json::Null),
        Value::String(s) => Json::String(s.clone()),
        Value::Float(f) => f
            .try_to_f64()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Json::Null, Json::Number),
        Value::Int(i) => i
            .as_str()
            .parse::<i64>()
            .map(Json::from)
            .unwrap_or(Json::Null),
        Value::Boolean(b) => Json::Bool(*b),
        Value::List(items) => Json::Array(items.iter().map(|i| json_of(i, variables)).collect()),
        Value::Object(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), json_of(v, variables)))
                .collect(),
        ),
    }
}

/// A GraphQL literal for a JSON value of type `ty`: strings of enum types are
/// written bare, input objects and lists recurse with their field and item
/// types.
pub fn typed_literal(schema: &Schema, value: &Json, ty: &Type, out: &mut String) {
    use apollo_compiler::schema::ExtendedType;
    match (value, ty) {
        (Json::Array(items), Type::List(inner) | Type::NonNullList(inner)) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                typed_literal(schema, item, inner, out);
            }
            out.push(']');
        }
        (_, Type::List(inner) | Type::NonNullList(inner)) => {
            typed_literal(schema, value, inner, out)
        }
        (Json::String(s), Type::Named(n) | Type::NonNullNamed(n))
            if matches!(schema.types.get(n), Some(ExtendedType::Enum(_))) =>
        {
            out.push_str(s)
        }
        (Json::Object(fields), Type::Named(n) | Type::NonNullNamed(n)) => {
            let input = match schema.types.get(n) {
                Some(ExtendedType::InputObject(i)) => Some(i),
                _ => None,
            };
            out.push('{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push(':');
                match input.and_then(|i| i.fields.get(k.as_str())) {
                    Some(field) => typed_literal(schema, v, &field.ty, out),
                    None => crate::plan::literal(v, out),
                }
            }
            out.push('}');
        }
        _ => crate::plan::literal(value, out),
    }
}

fn included(
    directives: &apollo_compiler::executable::DirectiveList,
    variables: &Map<String, Json>,
) -> bool {
    let flag = |name: &str| {
        directives
            .get(name)
            .and_then(|d| d.specified_argument_by_name("if"))
            .map(|v| json_of(v, variables))
    };
    let skip = flag("skip").is_some_and(|v| v == Json::Bool(true));
    let include = flag("include").is_none_or(|v| v == Json::Bool(true));
    !skip && include
}

pub struct Normaliser<'a> {
    pub schema: &'a Valid<Schema>,
    pub document: &'a Valid<ExecutableDocument>,
    pub variables: &'a Map<String, Json>,
}

impl Normaliser<'_> {
    /// The selection of `set` on objects of `parent` (an object, interface or union type).
    pub fn fields(
        &self,
        set: &SelectionSet,
        parent: &str,
        condition: Option<&str>,
        out: &mut Vec<Field>,
    ) {
        for selection in &set.selections {
            match selection {
                Selection::Field(f) => {
                    if !included(&f.directives, self.variables) {
                        continue;
                    }
                    let mut children = Vec::new();
                    let output = f.definition.ty.inner_named_type();
                    if !f.selection_set.selections.is_empty() {
                        self.fields(&f.selection_set, output.as_str(), None, &mut children);
                    }
                    let field = Field {
                        key: f.response_key().to_string(),
                        name: f.name.to_string(),
                        args: f
                            .arguments
                            .iter()
                            .map(|a| {
                                let value = json_of(&a.value, self.variables);
                                let mut text = String::new();
                                match f.definition.argument_by_name(&a.name) {
                                    Some(def) => {
                                        typed_literal(self.schema, &value, &def.ty, &mut text)
                                    }
                                    None => crate::plan::literal(&value, &mut text),
                                }
                                (a.name.to_string(), text)
                            })
                            .collect(),
                        ty: f.definition.ty.clone(),
                        condition: condition.map(str::to_string),
                        children,
                        is_enum: matches!(
                            self.schema.types.get(output),
                            Some(apollo_compiler::schema::ExtendedType::Enum(_))
                        ),
                    };
                    merge_into(out, field);
                }
                Selection::FragmentSpread(spread) => {
                    if !included(&spread.directives, self.variables) {
                        continue;
                    }
                    if let Some(fragment) = self.document.fragments.get(&spread.fragment_name) {
                        self.conditional(
                            &fragment.selection_set,
                            parent,
                            Some(fragment.type_condition().as_str()),
                            condition,
                            out,
                        );
                    }
                }
                Selection::InlineFragment(inline) => {
                    if !included(&inline.directives, self.variables) {
                        continue;
                    }
                    self.conditional(
                        &inline.selection_set,
                        parent,
                        inline.type_condition.as_ref().map(|t| t.as_str()),
                        condition,
                        out,
                    );
                }
            }
        }
    }

    fn conditional(
        &self,
        set: &SelectionSet,
        parent: &str,
        on: Option<&str>,
        outer: Option<&str>,
        out: &mut Vec<Field>,
    ) {
        match on {
            // Always true on this parent: no condition to carry.
            None => self.fields(set, parent, outer, out),
            Some(t)
                if t == parent
                    || self.schema.is_subtype(t, parent) && !self.is_abstract(parent) =>
            {
                self.fields(set, parent, outer, out)
            }
            Some(t) => self.fields(set, parent, Some(t), out),
        }
    }

    fn is_abstract(&self, name: &str) -> bool {
        matches!(
            self.schema.types.get(name),
            Some(
                apollo_compiler::schema::ExtendedType::Interface(_)
                    | apollo_compiler::schema::ExtendedType::Union(_)
            )
        )
    }
}

/// Adds a field, merging it with an earlier one of the same response key and condition.
fn merge_into(out: &mut Vec<Field>, field: Field) {
    if let Some(existing) = out
        .iter_mut()
        .find(|f| f.key == field.key && f.condition == field.condition)
    {
        for child in field.children {
            merge_into(&mut existing.children, child);
        }
    } else {
        out.push(field);
    }
}

/// Picks the operation a request names.
pub fn operation<'d>(
    document: &'d Valid<ExecutableDocument>,
    name: Option<&str>,
) -> Result<&'d apollo_compiler::Node<Operation>, OperationError> {
    document.operations.get(name).map_err(|_| match name {
        Some(n) => OperationError::Request(format!("Unknown operation named \"{n}\".")),
        None => OperationError::Request(
            "Must provide operation name if query contains multiple operations.".into(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_write_enums_bare_inside_lists_and_input_objects() {
        let schema = Schema::parse_and_validate(
            "type Query { items(order: Order, filter: Filter, tags: [String!]): [Int] }\nenum Order { ASC DESC }\ninput Filter { order: Order, name: String }\n",
            "s.graphql",
        )
        .expect("schema");
        let ty = |text: &str| Type::Named(apollo_compiler::Name::new(text).expect("name"));
        let mut out = String::new();
        typed_literal(&schema, &serde_json::json!("ASC"), &ty("Order"), &mut out);
        assert_eq!(out, "ASC");
        out.clear();
        typed_literal(
            &schema,
            &serde_json::json!({"order": "DESC", "name": "a \"b\""}),
            &ty("Filter"),
            &mut out,
        );
        assert_eq!(out, r#"{name:"a \"b\"",order:DESC}"#);
        out.clear();
        let list = Type::List(Box::new(Type::NonNullNamed(
            apollo_compiler::Name::new("String").expect("name"),
        )));
        typed_literal(&schema, &serde_json::json!(["x", "y"]), &list, &mut out);
        assert_eq!(out, r#"["x","y"]"#);
    }
}
