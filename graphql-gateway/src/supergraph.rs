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
/// `@provides`): field names with optional nested selections. An inline
/// fragment is an entry named `... on Type` whose nested set is its
/// selection (see [`FieldSet::condition`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSet(pub Vec<(String, FieldSet)>);

const INLINE: &str = "... on ";

impl FieldSet {
    /// The type condition of an entry, if it is an inline fragment.
    pub fn condition(entry: &str) -> Option<&str> {
        entry.strip_prefix(INLINE)
    }

    /// Whether an entry of this set (at any depth) is an inline fragment:
    /// its objects then need `__typename` to be told apart.
    pub fn has_conditions(&self) -> bool {
        self.0.iter().any(|(n, _)| Self::condition(n).is_some())
    }

    /// Adds the entries of `other`, merging the sub-selections of entries
    /// both have (`data { a }` and `data { b }` make `data { a b }`), so a
    /// representation never carries one field twice.
    pub fn merge(&mut self, other: &FieldSet) {
        for (name, sub) in &other.0 {
            match self.0.iter_mut().find(|(n, _)| n == name) {
                Some((_, mine)) => mine.merge(sub),
                None => self.0.push((name.clone(), sub.clone())),
            }
        }
    }

    /// Whether a representation could not carry both sets: they select
    /// one field with different arguments (at any depth).
    pub fn conflicts_with(&self, other: &FieldSet) -> bool {
        self.0.iter().any(|(name, sub)| {
            other.0.iter().any(|(theirs, their_sub)| {
                if name == theirs {
                    sub.conflicts_with(their_sub)
                } else {
                    Self::condition(name).is_none()
                        && Self::field_name(name) == Self::field_name(theirs)
                }
            })
        })
    }

    /// The field an entry selects: `price` for `price(currency:"USD")`.
    pub fn field_name(entry: &str) -> &str {
        entry.split_once('(').map_or(entry, |(name, _)| name)
    }

    /// The arguments an entry gives its field, as (name, GraphQL literal).
    pub fn arguments(entry: &str) -> Vec<(String, String)> {
        let Some(inner) = entry
            .split_once('(')
            .and_then(|(_, rest)| rest.strip_suffix(')'))
        else {
            return Vec::new();
        };
        split_top_level(inner)
            .into_iter()
            .filter_map(|a| {
                a.split_once(':')
                    .map(|(n, v)| (n.to_string(), v.to_string()))
            })
            .collect()
    }

    /// The response key the gateway reads an entry's value under. A field
    /// with arguments gets an alias of its own: the client (or another
    /// `@requires`) may select the same field with other arguments.
    pub fn response_key(entry: &str) -> std::borrow::Cow<'_, str> {
        match entry.split_once('(') {
            None => entry.into(),
            Some((name, _)) => {
                // FNV-1a: stable across runs and builds, unlike `DefaultHasher`.
                let hash = entry.bytes().fold(0x811c_9dc5_u32, |h, b| {
                    (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
                });
                format!("_rq_{name}_{hash:08x}").into()
            }
        }
    }

    /// Parses a field set: names with optional arguments (constant values,
    /// no variables) and nested selections, and inline fragments. Entries
    /// with arguments are kept as `name(arg:value,…)`, written without
    /// insignificant white space so that equal selections compare equal.
    pub fn parse(text: &str) -> Result<FieldSet, String> {
        let mut parser = FieldSetParser { text, at: 0 };
        let set = parser.level(0)?;
        parser.skip_ignored();
        if parser.at != text.len() {
            return Err(format!(
                "unexpected {:?} in field set {text:?}",
                parser.rest_preview()
            ));
        }
        Ok(set)
    }
}

/// Splits `a:1,b:"x,y"` at the commas outside strings, lists and objects.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut from) = (0usize, false, false, 0);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '[' | '{' if !in_string => depth += 1,
            ']' | '}' if !in_string => depth = depth.saturating_sub(1),
            ',' if !in_string && depth == 0 => {
                parts.push(&text[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    if from < text.len() {
        parts.push(&text[from..]);
    }
    parts
}

/// How deep a field set may nest: a supergraph is trusted input, but a
/// malformed one must be refused, not overflow the stack.
const MAX_FIELD_SET_DEPTH: usize = 64;

struct FieldSetParser<'t> {
    text: &'t str,
    at: usize,
}

impl FieldSetParser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn rest_preview(&self) -> String {
        self.rest().chars().take(20).collect()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// White space, commas and comments are insignificant in GraphQL.
    fn skip_ignored(&mut self) {
        loop {
            let Some(c) = self.peek() else { return };
            if c.is_whitespace() || c == ',' || c == '\u{feff}' {
                self.at += c.len_utf8();
            } else if c == '#' {
                self.at += self.rest().find('\n').unwrap_or(self.rest().len());
            } else {
                return;
            }
        }
    }

    fn name(&mut self) -> &str {
        let start = self.at;
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        self.at += len;
        &self.text[start..self.at]
    }

    fn expect(&mut self, want: char, what: &str) -> Result<(), String> {
        self.skip_ignored();
        if self.peek() == Some(want) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!(
                "{what} in field set {:?} (at {:?})",
                self.text,
                self.rest_preview()
            ))
        }
    }

    fn level(&mut self, depth: usize) -> Result<FieldSet, String> {
        if depth > MAX_FIELD_SET_DEPTH {
            return Err(format!(
                "field set {:?} nests deeper than {MAX_FIELD_SET_DEPTH} levels",
                self.text
            ));
        }
        let mut fields = Vec::new();
        loop {
            self.skip_ignored();
            match self.peek() {
                None | Some('}') => return Ok(FieldSet(fields)),
                _ => {}
            }
            let entry = if self.rest().starts_with("...") {
                // `... on Type { ... }`: the selection applies to objects of Type.
                self.at += 3;
                self.skip_ignored();
                let on = self.name().to_string();
                self.skip_ignored();
                let type_name = self.name().to_string();
                if on != "on" || type_name.is_empty() {
                    return Err("an inline fragment in a field set needs a type condition (`... on Type { ... }`)".into());
                }
                format!("{INLINE}{type_name}")
            } else {
                let name = self.name().to_string();
                if name.is_empty() {
                    let found = self.rest_preview();
                    return Err(if found.starts_with('@') {
                        format!("unsupported field set syntax at {found:?} (directives are not supported in field sets)")
                    } else {
                        format!("unexpected {found:?} in field set {:?}", self.text)
                    });
                }
                self.skip_ignored();
                if self.peek() == Some('(') {
                    format!("{name}({})", self.arguments()?)
                } else {
                    name
                }
            };
            self.skip_ignored();
            if self.peek() == Some('@') {
                return Err(format!("unsupported field set syntax at {:?} (directives are not supported in field sets)", self.rest_preview()));
            }
            let mut sub = FieldSet::default();
            if self.peek() == Some('{') {
                self.at += 1;
                sub = self.level(depth + 1)?;
                self.expect('}', "unclosed {")?;
                if sub.0.is_empty() {
                    return Err(format!(
                        "{entry} in field set {:?} has an empty selection",
                        self.text
                    ));
                }
            } else if FieldSet::condition(&entry).is_some() {
                return Err(format!("{entry} in a field set has no selection"));
            }
            fields.push((entry, sub));
        }
    }

    /// `(a: 1, b: "x")` → `a:1,b:"x"`.
    fn arguments(&mut self) -> Result<String, String> {
        self.at += 1; // (
        let mut out = Vec::new();
        loop {
            self.skip_ignored();
            if self.peek() == Some(')') {
                self.at += 1;
                break;
            }
            out.push(self.named_value("an argument", 0)?);
        }
        if out.is_empty() {
            return Err(format!("empty argument list in field set {:?}", self.text));
        }
        Ok(out.join(","))
    }

    /// `name: value` (an argument, or a field of an object value) →
    /// `name:value`.
    fn named_value(&mut self, what: &str, depth: usize) -> Result<String, String> {
        let name = self.name().to_string();
        if name.is_empty() {
            return Err(format!(
                "{what} name was expected in field set {:?} (at {:?})",
                self.text,
                self.rest_preview()
            ));
        }
        self.expect(':', &format!("`:` after {what} name was expected"))?;
        Ok(format!("{name}:{}", self.value(depth)?))
    }

    /// A constant GraphQL value, written back without insignificant space.
    fn value(&mut self, depth: usize) -> Result<String, String> {
        if depth > MAX_FIELD_SET_DEPTH {
            return Err(format!(
                "a value in field set {:?} nests deeper than {MAX_FIELD_SET_DEPTH} levels",
                self.text
            ));
        }
        self.skip_ignored();
        match self.peek() {
            Some('"') => {
                if self.rest().starts_with("\"\"\"") {
                    return Err(format!(
                        "block strings are not supported in field set arguments ({:?})",
                        self.text
                    ));
                }
                let start = self.at;
                self.at += 1;
                let mut escaped = false;
                loop {
                    let Some(c) = self.peek() else {
                        return Err(format!("unterminated string in field set {:?}", self.text));
                    };
                    self.at += c.len_utf8();
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => break,
                        '\n' => {
                            return Err(format!(
                                "a line break in a string in field set {:?}",
                                self.text
                            ))
                        }
                        _ => {}
                    }
                }
                Ok(self.text[start..self.at].to_string())
            }
            Some(open @ ('[' | '{')) => {
                let close = if open == '[' { ']' } else { '}' };
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ignored();
                    if self.peek() == Some(close) {
                        self.at += 1;
                        break;
                    }
                    if self.peek().is_none() {
                        return Err(format!("unclosed {open} in field set {:?}", self.text));
                    }
                    if open == '{' {
                        items.push(self.named_value("an object field", depth + 1)?);
                    } else {
                        items.push(self.value(depth + 1)?);
                    }
                }
                Ok(format!("{open}{}{close}", items.join(",")))
            }
            Some('$') => Err(format!(
                "variables are not allowed in field set {:?}",
                self.text
            )),
            _ => {
                // Numbers, booleans, null and enum values.
                let start = self.at;
                let len = self
                    .rest()
                    .find(|c: char| {
                        !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.'))
                    })
                    .unwrap_or(self.rest().len());
                if len == 0 {
                    return Err(format!(
                        "a value was expected in field set {:?} (at {:?})",
                        self.text,
                        self.rest_preview()
                    ));
                }
                self.at += len;
                Ok(self.text[start..self.at].to_string())
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct TypeInfo {
    /// Graph id → the key field sets it resolves entities by (empty: the
    /// graph knows the type but has no such key).
    pub keys: BTreeMap<String, Vec<FieldSet>>,
    /// Graphs that can resolve entities of this type by key.
    pub resolvable: Vec<String>,
    pub is_abstract: bool,
    /// Object types that implement this interface or belong to this union.
    pub possible: Vec<String>,
    /// A union's members per graph (`@join__unionMember`): subgraphs may
    /// each know only some of them.
    pub members: BTreeMap<String, Vec<String>>,
    /// An interface's object implementations per graph
    /// (`@join__implements`): an object may implement it in one subgraph
    /// and not in another.
    pub implementations: BTreeMap<String, Vec<String>>,
    /// Graphs that know this interface as an object (`@interfaceObject`):
    /// they resolve its fields for every implementation, by its key.
    pub interface_objects: Vec<String>,
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
    /// The field's type (`[ID!]`) in the supergraph, and per graph where a
    /// graph declares it differently (`@join__field(type:)`: `ID!` in one
    /// subgraph, `ID` in the supergraph, say).
    pub ty: String,
    pub types_in: BTreeMap<String, String>,
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
    let kept: std::collections::HashSet<apollo_compiler::Name> = s.types.keys().cloned().collect();
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
                o.implements_interfaces.retain(|i| kept.contains(&i.name));
                clean_fields(&mut o.fields);
            }
            ExtendedType::Interface(i) => {
                let i = i.make_mut();
                i.directives.0.retain(|d| !machinery(&d.name));
                i.implements_interfaces.retain(|n| kept.contains(&n.name));
                clean_fields(&mut i.fields);
            }
            ExtendedType::Union(u) => {
                let u = u.make_mut();
                u.directives.0.retain(|d| !machinery(&d.name));
                // An inaccessible member is not a member to clients.
                u.members.retain(|m| kept.contains(&m.name));
            }
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

/// Whether a progressive `@override` label is on: `percent(100)` always,
/// `percent(0)` never, any other label (other percentages included) only
/// when the configuration's `overrideLabels` lists it. Plans are cached per
/// operation, so a percentage is not drawn per request: until a label is
/// listed, its fields stay with the subgraph they are being moved from.
fn label_on(label: &str, enabled: &[String]) -> bool {
    match label.replace(' ', "").as_str() {
        "percent(100)" => true,
        "percent(0)" => false,
        _ => enabled.iter().any(|l| l == label),
    }
}

impl Supergraph {
    pub fn parse(text: &str, path: &str) -> Result<Supergraph, SupergraphError> {
        Self::parse_with_labels(text, path, &[])
    }

    /// Parses with the progressive-override labels `override_labels` on.
    pub fn parse_with_labels(
        text: &str,
        path: &str,
        override_labels: &[String],
    ) -> Result<Supergraph, SupergraphError> {
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
        let mut types: HashMap<String, TypeInfo> = HashMap::new();
        let mut fields = HashMap::new();
        // interface → (graph, implementing object type), from the objects.
        let mut implementations: HashMap<String, Vec<(String, String)>> = HashMap::new();
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
                if bool_arg(d, "isInterfaceObject").unwrap_or(false)
                    && !info.interface_objects.contains(&graph)
                {
                    info.interface_objects.push(graph.clone());
                }
                let entry = info.keys.entry(graph.clone()).or_default();
                if let Some(key) = string_arg(d, "key") {
                    let key =
                        FieldSet::parse(&key).map_err(|message| SupergraphError::Directive {
                            coordinate: type_name.to_string(),
                            message,
                        })?;
                    // A key the graph cannot resolve entities by
                    // (`resolvable: false`) is never the key of a fetch
                    // to it: the graph only references the type with it.
                    if bool_arg(d, "resolvable").unwrap_or(true) {
                        entry.push(key);
                        if !info.resolvable.contains(&graph) {
                            info.resolvable.push(graph.clone());
                        }
                    }
                }
            }
            if matches!(ty, ExtendedType::Object(_)) {
                for d in ty.directives().get_all("join__implements") {
                    if let (Some(graph), Some(interface)) =
                        (enum_arg(d, "graph"), string_arg(d, "interface"))
                    {
                        implementations
                            .entry(interface)
                            .or_default()
                            .push((graph, type_name.to_string()));
                    }
                }
            }
            for d in ty.directives().get_all("join__unionMember") {
                if let (Some(graph), Some(member)) = (enum_arg(d, "graph"), string_arg(d, "member"))
                {
                    info.members.entry(graph).or_default().push(member);
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
                    ty: def.ty.to_string(),
                    ..Default::default()
                };
                let joins: Vec<_> = def.directives.get_all("join__field").collect();
                if joins.is_empty() {
                    f.graphs = type_graphs.clone();
                }
                for d in joins {
                    // Refused rather than planned without the argument.
                    if d.specified_argument_by_name("contextArguments").is_some() {
                        return Err(SupergraphError::Directive {
                            coordinate,
                            message: "@fromContext (join__field contextArguments) is not supported by this gateway".into(),
                        });
                    }
                    let Some(graph) = enum_arg(d, "graph") else {
                        continue;
                    };
                    if let Some(ty) = string_arg(d, "type") {
                        f.types_in.insert(graph.clone(), ty);
                    }
                    if bool_arg(d, "external").unwrap_or(false) {
                        f.external.push(graph);
                        continue;
                    }
                    // `@override`: the overridden subgraph keeps a
                    // `usedOverridden` entry only because other fields
                    // use it (a key); it no longer resolves the field.
                    if bool_arg(d, "usedOverridden").unwrap_or(false) {
                        continue;
                    }
                    // Progressive override: the entry with `override:` counts
                    // while the label is on, the bare one while it is off.
                    if let Some(label) = string_arg(d, "overrideLabel") {
                        let on = label_on(&label, override_labels);
                        let overriding = string_arg(d, "override").is_some();
                        if on != overriding {
                            continue;
                        }
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
        for (interface, list) in implementations {
            if let Some(info) = types.get_mut(&interface) {
                for (graph, object) in list {
                    info.implementations.entry(graph).or_default().push(object);
                }
            }
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

    /// The field an entry of a field set names also answers to its name
    /// with arguments (`price(currency:"USD")`).
    pub fn field(&self, type_name: &str, field: &str) -> Option<&FieldInfo> {
        let field = FieldSet::field_name(field);
        self.fields.get(&(type_name.to_string(), field.to_string()))
    }

    /// The type of `type_name.field` as `graph` declares it (the
    /// supergraph's type where the graph says nothing else).
    pub fn field_type_in(&self, graph: &str, type_name: &str, field: &str) -> Option<&str> {
        let f = self.field(type_name, field)?;
        Some(f.types_in.get(graph).unwrap_or(&f.ty))
    }

    /// Whether `graph` can resolve `type_name.field` itself.
    pub fn resolves(&self, graph: &str, type_name: &str, field: &str) -> bool {
        // An inline fragment of a field set selects on the type itself.
        if field == "__typename" || FieldSet::condition(field).is_some() {
            return true;
        }
        self.field(type_name, field)
            .is_some_and(|f| f.graphs.iter().any(|g| g == graph))
    }

    /// Whether `graph` defines the type (has a `@join__type` for it). A type
    /// without any `@join__type` counts as defined everywhere.
    pub fn defines(&self, graph: &str, type_name: &str) -> bool {
        self.types
            .get(type_name)
            .is_none_or(|t| t.keys.is_empty() || t.keys.contains_key(graph))
    }

    /// Whether `graph` knows the interface `type_name` as an object
    /// (`@interfaceObject`): it neither knows the implementations nor
    /// answers `__typename` with them.
    pub fn is_interface_object(&self, graph: &str, type_name: &str) -> bool {
        self.types
            .get(type_name)
            .is_some_and(|t| t.interface_objects.iter().any(|g| g == graph))
    }

    /// An interface that `concrete` implements and that `graph` knows as
    /// an object with a key: entities of `concrete` are fetched from
    /// `graph` as that interface.
    pub fn interface_object_for(&self, graph: &str, concrete: &str) -> Option<&str> {
        self.types
            .iter()
            .filter(|(_, t)| t.interface_objects.iter().any(|g| g == graph))
            .filter(|(_, t)| t.possible.iter().any(|p| p == concrete))
            .map(|(name, _)| name.as_str())
            .find(|name| self.key(graph, name).is_some())
    }

    /// The object types a value of `type_name` can have: its possible
    /// types if it is abstract, else itself.
    pub fn object_types<'t>(&'t self, type_name: &'t str) -> Vec<&'t str> {
        match self.types.get(type_name) {
            Some(t) if t.is_abstract => t.possible.iter().map(String::as_str).collect(),
            _ => vec![type_name],
        }
    }

    /// The object types a value of abstract `type_name` can have in
    /// `graph`: a union's members there, an interface's implementations
    /// there (for a supergraph without `@join__unionMember` or
    /// `@join__implements`, every possible type `graph` defines).
    pub fn possible_in(&self, graph: &str, type_name: &str) -> Vec<&str> {
        let Some(t) = self.types.get(type_name) else {
            return Vec::new();
        };
        if !t.implementations.is_empty() {
            return t
                .implementations
                .get(graph)
                .map(|m| m.iter().map(String::as_str).collect())
                .unwrap_or_default();
        }
        self.members_in(graph, type_name)
    }

    /// The members of union `union` that `graph` knows (all its possible
    /// types that `graph` defines, for a supergraph without
    /// `@join__unionMember`).
    pub fn members_in(&self, graph: &str, union: &str) -> Vec<&str> {
        let Some(t) = self.types.get(union) else {
            return Vec::new();
        };
        if t.members.is_empty() {
            return t
                .possible
                .iter()
                .map(String::as_str)
                .filter(|p| self.defines(graph, p))
                .collect();
        }
        t.members
            .get(graph)
            .map(|m| m.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// `set`, selected on objects of `parent`, with every inline fragment
    /// on an abstract type replaced by one per object type it can match
    /// (nested fragments flattened, fragments that cannot match dropped).
    /// An object's `__typename` then says exactly which fragments apply to
    /// it, which is how representations are written.
    pub fn concrete_field_set(&self, parent: &str, set: &FieldSet) -> FieldSet {
        let parent_types = self.object_types(parent);
        let parent_is_object = !self.types.get(parent).is_some_and(|t| t.is_abstract);
        let mut out = FieldSet::default();
        for (name, sub) in &set.0 {
            match FieldSet::condition(name) {
                Some(condition) => {
                    let matching: Vec<&str> = self
                        .object_types(condition)
                        .into_iter()
                        .filter(|t| parent_types.contains(t))
                        .collect();
                    if parent_is_object {
                        // The fragment applies to every object here, or to none.
                        if !matching.is_empty() {
                            out.merge(&self.concrete_field_set(parent, sub));
                        }
                    } else {
                        for object in matching {
                            let inner = self.concrete_field_set(object, sub);
                            out.merge(&FieldSet(vec![(format!("{INLINE}{object}"), inner)]));
                        }
                    }
                }
                None if sub.0.is_empty() => {
                    out.merge(&FieldSet(vec![(name.clone(), FieldSet::default())]))
                }
                None => {
                    let output = self
                        .field(parent, name)
                        .map(|f| f.output.clone())
                        .unwrap_or_default();
                    out.merge(&FieldSet(vec![(
                        name.clone(),
                        self.concrete_field_set(&output, sub),
                    )]));
                }
            }
        }
        out
    }

    /// The keys of `type_name` that `graph` can resolve entities by.
    pub fn keys(&self, graph: &str, type_name: &str) -> &[FieldSet] {
        match self.types.get(type_name) {
            Some(t) if t.resolvable.iter().any(|g| g == graph) => {
                t.keys.get(graph).map(Vec::as_slice).unwrap_or(&[])
            }
            _ => &[],
        }
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
        let inline = FieldSet::parse("pet { ... on Dog { barks } ...on Cat { meows } }")
            .expect("inline fragments");
        let pet = &inline.0[0].1;
        assert_eq!(pet.0[0].0, "... on Dog");
        assert_eq!(FieldSet::condition(&pet.0[1].0), Some("Cat"));
        assert_eq!(pet.0[1].1 .0[0].0, "meows");
        assert!(pet.has_conditions());
        assert!(FieldSet::parse("pet { ... { barks } }").is_err());
    }

    #[test]
    fn field_sets_carry_arguments_normalized_and_aliased() {
        let set = FieldSet::parse("price(currency: \"USD\") weight category { averagePrice(currency: \"U, S(D)\" , round: [1, 2], by: {unit: KG}) }")
            .expect("arguments");
        let names: Vec<&str> = set.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["price(currency:\"USD\")", "weight", "category"]);
        let nested = &set.0[2].1 .0[0].0;
        assert_eq!(
            nested,
            "averagePrice(currency:\"U, S(D)\",round:[1,2],by:{unit:KG})"
        );
        assert_eq!(FieldSet::field_name(nested), "averagePrice");
        assert_eq!(
            FieldSet::arguments(nested),
            [
                ("currency".to_string(), "\"U, S(D)\"".to_string()),
                ("round".into(), "[1,2]".into()),
                ("by".into(), "{unit:KG}".into())
            ]
        );
        // Written the same however it was spaced: one alias.
        let again = FieldSet::parse("price( currency:\"USD\" )").expect("spaced");
        assert_eq!(again.0[0].0, set.0[0].0);
        let key = FieldSet::response_key(&set.0[0].0);
        assert!(
            key.starts_with("_rq_price_") && key.len() == "_rq_price_".len() + 8,
            "{key}"
        );
        assert_ne!(key, FieldSet::response_key("price(currency:\"EUR\")"));
        assert_eq!(FieldSet::response_key("weight"), "weight");
        for bad in [
            "price(currency: $c)",
            "price(currency:)",
            "price()",
            "price(\"USD\")",
            "price(currency: \"USD)",
            "id @skip(if: true)",
            "id { }",
            "a(b: [1, 2)",
        ] {
            assert!(FieldSet::parse(bad).is_err(), "{bad} parsed");
        }
        let deep = format!("{}x{}", "a { ".repeat(100), " }".repeat(100));
        assert!(FieldSet::parse(&deep)
            .expect_err("too deep")
            .contains("deeper than"));
    }

    #[test]
    fn field_sets_conflict_when_they_give_one_field_other_arguments() {
        let set = |t: &str| FieldSet::parse(t).expect("set");
        assert!(
            set("price(currency: \"USD\") weight").conflicts_with(&set("price(currency: \"EUR\")"))
        );
        assert!(set("category { avg(c: 1) }").conflicts_with(&set("category { avg(c: 2) }")));
        assert!(!set("price(currency: \"USD\") weight")
            .conflicts_with(&set("weight price(currency: \"USD\")")));
        assert!(!set("category { avg(c: 1) } id").conflicts_with(&set("category { name } upc")));
    }

    #[test]
    fn keys_a_graph_cannot_resolve_by_are_never_fetch_keys() {
        let text = crate::test_data::supergraph_text("conditions-supergraph.graphql");
        let machinery = &text[..text.find("type Book").expect("Book")];
        // FILMS lists a key it cannot resolve by first; SEARCH only
        // references A.
        let sdl = format!(
            "{machinery}type A @join__type(graph: FILMS, key: \"pId\", resolvable: false) \
             @join__type(graph: FILMS, key: \"id\") @join__type(graph: SEARCH, key: \"id\", resolvable: false) {{\n  id: ID!\n  pId: ID!\n}}\n\
             type Query @join__type(graph: FILMS) @join__type(graph: SEARCH) {{\n  a: A @join__field(graph: SEARCH)\n}}\n"
        );
        let sg = Supergraph::parse(&sdl, "keys.graphql").expect("supergraph");
        let id = FieldSet::parse("id").expect("set");
        assert_eq!(sg.key("FILMS", "A"), Some(&id));
        assert_eq!(sg.keys("FILMS", "A"), [id]);
        assert_eq!(sg.key("SEARCH", "A"), None);
        assert!(sg.defines("SEARCH", "A"));
    }

    #[test]
    fn merged_field_sets_hold_each_field_once() {
        let mut set = FieldSet::parse("id data { a ... on X { b } }").expect("set");
        set.merge(&FieldSet::parse("data { c ... on X { d } } id").expect("set"));
        assert_eq!(
            set,
            FieldSet::parse("id data { a ... on X { b d } c }").expect("set")
        );
    }

    #[test]
    fn fragments_on_abstract_types_become_one_per_object_type() {
        let sg = Supergraph::parse(
            &crate::test_data::supergraph_text("fieldsets-supergraph.graphql"),
            "fieldsets-supergraph.graphql",
        )
        .expect("supergraph");
        let concrete = |parent: &str, text: &str| {
            sg.concrete_field_set(parent, &FieldSet::parse(text).expect("set"))
        };
        // Below an interface field: the fragment on the interface applies to
        // each implementation, and one on an implementation joins it.
        assert_eq!(
            concrete(
                "Owner",
                "id pet { ... on Pet { name } ... on Dog { barks } }"
            ),
            FieldSet::parse("id pet { ... on Dog { name barks } ... on Cat { name } }")
                .expect("set")
        );
        // On an object type: fragments that match it are inlined, nested
        // ones too, and the others dropped.
        assert_eq!(
            concrete(
                "Dog",
                "... on Pet { name ... on Dog { barks } ... on Cat { meows } }"
            ),
            FieldSet::parse("name barks").expect("set")
        );
        assert_eq!(concrete("Cat", "... on Dog { barks }"), FieldSet::default());
    }
}
