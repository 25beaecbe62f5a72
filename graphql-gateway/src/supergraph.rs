//! The supergraph: a Federation v2 schema whose `join__` directives say which
//! subgraph owns each type and field. Loaded once per file version into
//! [`Supergraph`], the planner's view of ownership.

use apollo_compiler::ast::Value;
use apollo_compiler::schema::ExtendedType;
use apollo_compiler::validation::Valid;
use apollo_compiler::Schema;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, thiserror::Error)]
pub enum SupergraphError {
    #[error("the supergraph is not a valid GraphQL schema:\n{0}")]
    Invalid(String),
    #[error("the supergraph has no join__Graph enum: is it a composed Federation v2 supergraph?")]
    NotFederated,
    #[error("join__Graph value {0} has no @join__graph(name:, url:)")]
    GraphWithoutUrl(String),
    #[error("{coordinate}: {message}")]
    Directive { coordinate: String, message: String },
}

/// One subgraph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// The join__Graph enum value, e.g. `ACCOUNTS`.
    pub id: String,
    pub name: String,
    pub url: String,
}

/// A selection written in a directive argument (`@key`, `@requires`,
/// `@provides`): field names with optional nested selections.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSet(pub Vec<(String, FieldSet)>);

impl FieldSet {
    pub fn parse(text: &str) -> Result<FieldSet, String> {
        let tokens: Vec<String> = text
            .replace('{', " { ")
            .replace('}', " } ")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let mut at = 0;
        let set = Self::parse_level(&tokens, &mut at)?;
        if at != tokens.len() {
            return Err(format!("unexpected {:?} in field set {text:?}", tokens[at]));
        }
        Ok(set)
    }

    fn parse_level(tokens: &[String], at: &mut usize) -> Result<FieldSet, String> {
        let mut fields = Vec::new();
        while *at < tokens.len() && tokens[*at] != "}" {
            let name = tokens[*at].clone();
            if name == "{" || name.starts_with("...") {
                return Err(format!("unsupported field set syntax at {name:?}"));
            }
            *at += 1;
            let mut sub = FieldSet::default();
            if tokens.get(*at).map(String::as_str) == Some("{") {
                *at += 1;
                sub = Self::parse_level(tokens, at)?;
                if tokens.get(*at).map(String::as_str) != Some("}") {
                    return Err("unclosed { in field set".into());
                }
                *at += 1;
            }
            fields.push((name, sub));
        }
        Ok(FieldSet(fields))
    }
}

#[derive(Debug, Clone, Default)]
pub struct TypeInfo {
    /// Graph id → key field sets (empty: the graph knows the type but has no key).
    pub keys: BTreeMap<String, Vec<FieldSet>>,
    /// Graphs that can resolve entities of this type by key.
    pub resolvable: Vec<String>,
    pub is_abstract: bool,
    /// Object types that implement this interface or belong to this union.
    pub possible: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct FieldInfo {
    /// Graphs that resolve this field themselves.
    pub graphs: Vec<String>,
    pub requires: BTreeMap<String, FieldSet>,
    pub provides: BTreeMap<String, FieldSet>,
    /// Graphs where the field is declared `external`.
    pub external: Vec<String>,
    /// The named type of the field's output.
    pub output: String,
}

pub struct Supergraph {
    pub schema: Valid<Schema>,
    pub graphs: BTreeMap<String, Graph>,
    pub types: HashMap<String, TypeInfo>,
    /// (type, field) → ownership
    pub fields: HashMap<(String, String), FieldInfo>,
    pub query_type: String,
    pub mutation_type: Option<String>,
}

fn string_arg(d: &apollo_compiler::ast::Directive, name: &str) -> Option<String> {
    match d.specified_argument_by_name(name).map(|v| &**v) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn enum_arg(d: &apollo_compiler::ast::Directive, name: &str) -> Option<String> {
    match d.specified_argument_by_name(name).map(|v| &**v) {
        Some(Value::Enum(e)) => Some(e.to_string()),
        _ => None,
    }
}

fn bool_arg(d: &apollo_compiler::ast::Directive, name: &str) -> Option<bool> {
    match d.specified_argument_by_name(name).map(|v| &**v) {
        Some(Value::Boolean(b)) => Some(*b),
        _ => None,
    }
}

/// Federation machinery that clients never see.
fn machinery(name: &str) -> bool {
    name.starts_with("join__")
        || name.starts_with("link__")
        || name == "link"
        || name == "inaccessible"
}

fn inaccessible(directives: &apollo_compiler::ast::DirectiveList) -> bool {
    directives.iter().any(|d| d.name == "inaccessible")
}

/// The API schema: what clients validate against and introspect. The
/// supergraph without `join__`/`link__` types and directives, `@link`, and
/// anything marked `@inaccessible` (the ownership tables were read before).
fn api_schema(full: &Valid<Schema>) -> Result<Valid<Schema>, SupergraphError> {
    let mut s: Schema = full.clone().into_inner();
    s.types.retain(|name, ty| {
        !machinery(name) && !ty.directives().iter().any(|d| d.name == "inaccessible")
    });
    s.directive_definitions.retain(|name, _| !machinery(name));
    s.schema_definition
        .make_mut()
        .directives
        .0
        .retain(|d| !machinery(&d.name));
    let clean_fields = |fields: &mut apollo_compiler::collections::IndexMap<
        apollo_compiler::Name,
        apollo_compiler::schema::Component<apollo_compiler::ast::FieldDefinition>,
    >| {
        fields.retain(|_, f| !inaccessible(&f.directives));
        for f in fields.values_mut() {
            let f = f.make_mut();
            f.directives.0.retain(|d| !machinery(&d.name));
            f.arguments.retain(|a| !inaccessible(&a.directives));
        }
    };
    for ty in s.types.values_mut() {
        match ty {
            ExtendedType::Object(o) => {
                let o = o.make_mut();
                o.directives.0.retain(|d| !machinery(&d.name));
                clean_fields(&mut o.fields);
            }
            ExtendedType::Interface(i) => {
                let i = i.make_mut();
                i.directives.0.retain(|d| !machinery(&d.name));
                clean_fields(&mut i.fields);
            }
            ExtendedType::Union(u) => u.make_mut().directives.0.retain(|d| !machinery(&d.name)),
            ExtendedType::Enum(e) => {
                let e = e.make_mut();
                e.directives.0.retain(|d| !machinery(&d.name));
                e.values.retain(|_, v| !inaccessible(&v.directives));
                for v in e.values.values_mut() {
                    v.make_mut().directives.0.retain(|d| !machinery(&d.name));
                }
            }
            ExtendedType::InputObject(i) => {
                let i = i.make_mut();
                i.directives.0.retain(|d| !machinery(&d.name));
                i.fields.retain(|_, f| !inaccessible(&f.directives));
                for f in i.fields.values_mut() {
                    f.make_mut().directives.0.retain(|d| !machinery(&d.name));
                }
            }
            ExtendedType::Scalar(sc) => sc.make_mut().directives.0.retain(|d| !machinery(&d.name)),
        }
    }
    s.validate().map_err(|e| {
        SupergraphError::Invalid(format!(
            "the API schema derived from the supergraph is invalid: {}",
            e.errors
        ))
    })
}

impl Supergraph {
    pub fn parse(text: &str, path: &str) -> Result<Supergraph, SupergraphError> {
        let schema = Schema::parse_and_validate(text, path)
            .map_err(|e| SupergraphError::Invalid(e.errors.to_string()))?;
        let Some(ExtendedType::Enum(graph_enum)) = schema.types.get("join__Graph") else {
            return Err(SupergraphError::NotFederated);
        };
        let mut graphs = BTreeMap::new();
        for (id, value) in &graph_enum.values {
            let d = value
                .directives
                .get("join__graph")
                .ok_or_else(|| SupergraphError::GraphWithoutUrl(id.to_string()))?;
            let (Some(name), Some(url)) = (string_arg(d, "name"), string_arg(d, "url")) else {
                return Err(SupergraphError::GraphWithoutUrl(id.to_string()));
            };
            graphs.insert(
                id.to_string(),
                Graph {
                    id: id.to_string(),
                    name,
                    url,
                },
            );
        }
        let all_graphs: Vec<String> = graphs.keys().cloned().collect();
        let mut types = HashMap::new();
        let mut fields = HashMap::new();
        for (type_name, ty) in &schema.types {
            if type_name.starts_with("join__")
                || type_name.starts_with("link__")
                || ty.is_built_in()
            {
                continue;
            }
            let mut info = TypeInfo {
                is_abstract: matches!(ty, ExtendedType::Interface(_) | ExtendedType::Union(_)),
                ..Default::default()
            };
            for d in ty.directives().get_all("join__type") {
                let graph = enum_arg(d, "graph").ok_or_else(|| SupergraphError::Directive {
                    coordinate: type_name.to_string(),
                    message: "@join__type without graph".into(),
                })?;
                let entry = info.keys.entry(graph.clone()).or_default();
                if let Some(key) = string_arg(d, "key") {
                    entry.push(FieldSet::parse(&key).map_err(|message| {
                        SupergraphError::Directive {
                            coordinate: type_name.to_string(),
                            message,
                        }
                    })?);
                    if bool_arg(d, "resolvable").unwrap_or(true)
                        && !info.resolvable.contains(&graph)
                    {
                        info.resolvable.push(graph.clone());
                    }
                }
            }
            if info.is_abstract {
                info.possible = schema
                    .types
                    .iter()
                    .filter(|(_, t)| matches!(t, ExtendedType::Object(_)))
                    .filter(|(n, _)| schema.is_subtype(type_name, n))
                    .map(|(n, _)| n.to_string())
                    .collect();
            }
            let type_graphs: Vec<String> = if info.keys.is_empty() {
                all_graphs.clone()
            } else {
                info.keys.keys().cloned().collect()
            };
            let field_defs: Vec<(
                &apollo_compiler::Name,
                &apollo_compiler::schema::FieldDefinition,
            )> = match ty {
                ExtendedType::Object(o) => o.fields.iter().map(|(n, f)| (n, &***f)).collect(),
                ExtendedType::Interface(i) => i.fields.iter().map(|(n, f)| (n, &***f)).collect(),
                _ => Vec::new(),
            };
            for (field_name, def) in field_defs {
                let coordinate = format!("{type_name}.{field_name}");
                let mut f = FieldInfo {
                    output: def.ty.inner_named_type().to_string(),
                    ..Default::default()
                };
                let joins: Vec<_> = def.directives.get_all("join__field").collect();
                if joins.is_empty() {
                    f.graphs = type_graphs.clone();
                }
                for d in joins {
                    let Some(graph) = enum_arg(d, "graph") else {
                        continue;
                    };
                    if bool_arg(d, "external").unwrap_or(false) {
                        f.external.push(graph);
                        continue;
                    }
                    if let Some(req) = string_arg(d, "requires") {
                        f.requires.insert(
                            graph.clone(),
                            FieldSet::parse(&req).map_err(|message| {
                                SupergraphError::Directive {
                                    coordinate: coordinate.clone(),
                                    message,
                                }
                            })?,
                        );
                    }
                    if let Some(prov) = string_arg(d, "provides") {
                        f.provides.insert(
                            graph.clone(),
                            FieldSet::parse(&prov).map_err(|message| {
                                SupergraphError::Directive {
                                    coordinate: coordinate.clone(),
                                    message,
                                }
                            })?,
                        );
                    }
                    f.graphs.push(graph);
                }
                fields.insert((type_name.to_string(), field_name.to_string()), f);
            }
            types.insert(type_name.to_string(), info);
        }
        let query_type = schema
            .schema_definition
            .query
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "Query".into());
        let mutation_type = schema
            .schema_definition
            .mutation
            .as_ref()
            .map(|n| n.to_string());
        let schema = api_schema(&schema)?;
        Ok(Supergraph {
            schema,
            graphs,
            types,
            fields,
            query_type,
            mutation_type,
        })
    }

    pub fn field(&self, type_name: &str, field: &str) -> Option<&FieldInfo> {
        self.fields.get(&(type_name.to_string(), field.to_string()))
    }

    /// Whether `graph` can resolve `type_name.field` itself.
    pub fn resolves(&self, graph: &str, type_name: &str, field: &str) -> bool {
        if field == "__typename" {
            return true;
        }
        self.field(type_name, field)
            .is_some_and(|f| f.graphs.iter().any(|g| g == graph))
    }

    /// A key of `type_name` that `graph` can resolve entities by.
    pub fn key(&self, graph: &str, type_name: &str) -> Option<&FieldSet> {
        let t = self.types.get(type_name)?;
        if !t.resolvable.iter().any(|g| g == graph) {
            return None;
        }
        t.keys.get(graph)?.first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_sets_parse_flat_and_nested() {
        assert_eq!(
            FieldSet::parse("price weight")
                .expect("flat")
                .0
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["price", "weight"]
        );
        let nested = FieldSet::parse("id organization { id }").expect("nested");
        assert_eq!(nested.0[1].0, "organization");
        assert_eq!(nested.0[1].1 .0[0].0, "id");
        assert!(FieldSet::parse("id {").is_err());
    }
}
