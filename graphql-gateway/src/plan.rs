//! Query planning: the normalised operation is split by field ownership into
//! fetches that form a dependency graph.
//!
//! * Root fields are grouped by the subgraph that owns them: one root fetch
//!   per subgraph, run in parallel.
//! * A field that the current subgraph cannot resolve starts an entity fetch
//!   to a subgraph that can. That fetch goes through `_entities` with the
//!   type's `@key` in that subgraph, and the current fetch also asks for the
//!   key fields (and `__typename` below an abstract parent).
//! * `@requires` fields join the representation. When the current subgraph
//!   cannot provide them, they come from another entity fetch, and the
//!   requiring fetch waits for it.
//! * `@provides` lets a subgraph answer fields of a nested entity it would
//!   otherwise not own.
//!
//! Planning is pure and its result is cached per operation.

use crate::operation::Field;
use crate::supergraph::{FieldSet, Supergraph};
use serde_json::Value as Json;
use std::collections::BTreeMap;

/// What one fetch asks its subgraph for.
#[derive(Debug, Clone, PartialEq)]
pub struct SubField {
    pub key: String,
    pub name: String,
    /// (name, GraphQL literal)
    pub args: Vec<(String, String)>,
    /// Inline fragment type condition (abstract parents).
    pub condition: Option<String>,
    pub children: Vec<SubField>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FetchKind {
    /// A root operation fetch (query or mutation).
    Root { operation: &'static str },
    /// `_entities` for objects of `type_name` at `path` (response keys; lists are walked).
    Entity {
        type_name: String,
        path: Vec<String>,
        key: FieldSet,
        requires: FieldSet,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fetch {
    pub id: usize,
    pub graph: String,
    pub kind: FetchKind,
    pub selection: Vec<SubField>,
    /// Fetches that must finish first.
    pub deps: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub fetches: Vec<Fetch>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no subgraph resolves {0}")]
    Unowned(String),
    #[error("{type_name} has no @key in {graph}, so {field} cannot be fetched from there")]
    NoKey {
        type_name: String,
        graph: String,
        field: String,
    },
}

fn typename() -> SubField {
    SubField {
        key: "__typename".into(),
        name: "__typename".into(),
        args: Vec::new(),
        condition: None,
        children: Vec::new(),
    }
}

fn add_unique(out: &mut Vec<SubField>, field: SubField) {
    if let Some(existing) = out
        .iter_mut()
        .find(|f| f.key == field.key && f.condition == field.condition)
    {
        for c in field.children {
            add_unique(&mut existing.children, c);
        }
    } else {
        out.push(field);
    }
}

fn fieldset_selection(set: &FieldSet) -> Vec<SubField> {
    set.0
        .iter()
        .map(|(name, sub)| SubField {
            key: name.clone(),
            name: name.clone(),
            args: Vec::new(),
            condition: None,
            children: fieldset_selection(sub),
        })
        .collect()
}

struct Planner<'s> {
    sg: &'s Supergraph,
    fetches: Vec<Fetch>,
}

impl Planner<'_> {
    fn new_fetch(&mut self, graph: &str, kind: FetchKind, deps: Vec<usize>) -> usize {
        let id = self.fetches.len();
        self.fetches.push(Fetch {
            id,
            graph: graph.into(),
            kind,
            selection: Vec::new(),
            deps,
        });
        id
    }

    /// Plans `fields` of objects of `parent` reached by fetch `fetch` from
    /// `graph`, at `path`; returns what that fetch must select.
    fn fields(
        &mut self,
        fetch: usize,
        graph: &str,
        parent: &str,
        fields: &[Field],
        path: &[String],
        provided: Option<&FieldSet>,
    ) -> Result<Vec<SubField>, PlanError> {
        let mut out = Vec::new();
        // Fields to fetch elsewhere, by owning subgraph and concrete type (an
        // abstract parent needs one entity fetch per type), in first-seen order.
        let mut elsewhere: Vec<((String, String), Vec<Field>)> = Vec::new();
        let is_abstract = self.sg.types.get(parent).is_some_and(|t| t.is_abstract);
        if is_abstract {
            out.push(typename());
        }
        for f in fields {
            let owner_type = f.condition.as_deref().unwrap_or(parent);
            let provided_here = provided.and_then(|p| p.0.iter().find(|(n, _)| *n == f.name));
            if f.name == "__typename"
                || self.sg.resolves(graph, owner_type, &f.name)
                || provided_here.is_some()
            {
                let mut path_next = path.to_vec();
                path_next.push(f.key.clone());
                let provides_next = provided_here.map(|(_, sub)| sub.clone()).or_else(|| {
                    self.sg
                        .field(owner_type, &f.name)
                        .and_then(|i| i.provides.get(graph).cloned())
                });
                let children = if f.children.is_empty() {
                    Vec::new()
                } else {
                    self.fields(
                        fetch,
                        graph,
                        f.output(),
                        &f.children,
                        &path_next,
                        provides_next.as_ref(),
                    )?
                };
                add_unique(
                    &mut out,
                    SubField {
                        key: f.key.clone(),
                        name: f.name.clone(),
                        args: f.args.clone(),
                        condition: f.condition.clone(),
                        children,
                    },
                );
                continue;
            }
            let info = self
                .sg
                .field(owner_type, &f.name)
                .ok_or_else(|| PlanError::Unowned(format!("{owner_type}.{}", f.name)))?;
            let owner = elsewhere
                .iter()
                .filter(|((_, t), _)| t == owner_type)
                .map(|((g, _), _)| g.clone())
                .find(|g| info.graphs.contains(g))
                .or_else(|| info.graphs.first().cloned())
                .ok_or_else(|| PlanError::Unowned(format!("{owner_type}.{}", f.name)))?;
            let group = (owner, owner_type.to_string());
            match elsewhere.iter_mut().find(|(g, _)| *g == group) {
                Some((_, list)) => list.push(f.clone()),
                None => elsewhere.push((group, vec![f.clone()])),
            }
        }
        if elsewhere.is_empty() {
            return Ok(out);
        }
        // Required fields of the entity fetches come first: they may need
        // fetches of their own, which the requiring fetch then waits for.
        let mut required_from_here: Vec<SubField> = Vec::new();
        let mut requires_of: BTreeMap<(String, String), FieldSet> = BTreeMap::new();
        for (group, list) in &elsewhere {
            let (owner, owner_type) = group;
            let mut req = FieldSet::default();
            for f in list {
                if let Some(r) = self
                    .sg
                    .field(owner_type, &f.name)
                    .and_then(|i| i.requires.get(owner))
                {
                    for item in &r.0 {
                        if !req.0.contains(item) {
                            req.0.push(item.clone());
                        }
                    }
                }
            }
            requires_of.insert(group.clone(), req);
        }
        // Plan the fetches in an order where the providers of required fields exist first.
        let mut created: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut order: Vec<((String, String), Vec<Field>)> = elsewhere.clone();
        order.sort_by_key(|(g, _)| !requires_of.get(g).is_some_and(|r| r.0.is_empty()));
        for ((owner, type_name), list) in order {
            // Below an abstract parent, what this fetch adds for the entity
            // fetch (key, required fields) is asked under `... on Type`.
            let condition = (type_name != parent).then(|| type_name.clone());
            let under_condition = |fields: Vec<SubField>| -> Vec<SubField> {
                fields
                    .into_iter()
                    .map(|f| SubField {
                        condition: condition.clone(),
                        ..f
                    })
                    .collect()
            };
            let key = self
                .sg
                .key(&owner, &type_name)
                .cloned()
                .ok_or_else(|| PlanError::NoKey {
                    type_name: type_name.clone(),
                    graph: owner.clone(),
                    field: list[0].name.clone(),
                })?;
            let requires = requires_of
                .remove(&(owner.clone(), type_name.clone()))
                .unwrap_or_default();
            let mut deps = vec![fetch];
            for (name, sub) in &requires.0 {
                if self.sg.resolves(graph, &type_name, name) {
                    add_unique(
                        &mut required_from_here,
                        SubField {
                            key: name.clone(),
                            name: name.clone(),
                            args: Vec::new(),
                            condition: condition.clone(),
                            children: fieldset_selection(sub),
                        },
                    );
                } else {
                    // Fetched by a sibling entity fetch, which this one waits for.
                    let provider = self
                        .sg
                        .field(&type_name, name)
                        .and_then(|i| i.graphs.iter().find(|g| **g != owner).cloned())
                        .ok_or_else(|| PlanError::Unowned(format!("{type_name}.{name}")))?;
                    let pid = match created.get(&(provider.clone(), type_name.clone())) {
                        Some(id) => *id,
                        None => {
                            let pkey =
                                self.sg.key(&provider, &type_name).cloned().ok_or_else(|| {
                                    PlanError::NoKey {
                                        type_name: type_name.clone(),
                                        graph: provider.clone(),
                                        field: name.clone(),
                                    }
                                })?;
                            let id = self.new_fetch(
                                &provider,
                                FetchKind::Entity {
                                    type_name: type_name.clone(),
                                    path: path.to_vec(),
                                    key: pkey.clone(),
                                    requires: FieldSet::default(),
                                },
                                vec![fetch],
                            );
                            required_from_here.extend(under_condition(fieldset_selection(&pkey)));
                            created.insert((provider.clone(), type_name.clone()), id);
                            id
                        }
                    };
                    add_unique(
                        &mut self.fetches[pid].selection,
                        SubField {
                            key: name.clone(),
                            name: name.clone(),
                            args: Vec::new(),
                            condition: None,
                            children: fieldset_selection(sub),
                        },
                    );
                    if !deps.contains(&pid) {
                        deps.push(pid);
                    }
                }
            }
            for k in under_condition(fieldset_selection(&key)) {
                add_unique(&mut required_from_here, k);
            }
            let id = match created.get(&(owner.clone(), type_name.clone())) {
                Some(id) => {
                    let existing = &mut self.fetches[*id];
                    for d in deps {
                        if !existing.deps.contains(&d) {
                            existing.deps.push(d);
                        }
                    }
                    if let FetchKind::Entity { requires: r, .. } = &mut existing.kind {
                        *r = requires.clone();
                    }
                    *id
                }
                None => {
                    let id = self.new_fetch(
                        &owner,
                        FetchKind::Entity {
                            type_name: type_name.clone(),
                            path: path.to_vec(),
                            key,
                            requires,
                        },
                        deps,
                    );
                    created.insert((owner.clone(), type_name.clone()), id);
                    id
                }
            };
            let selection = self.fields(id, &owner, &type_name, &list, path, None)?;
            for s in selection {
                add_unique(&mut self.fetches[id].selection, s);
            }
        }
        // `__typename` tells entity types apart only below an abstract parent
        // (asked for above); a concrete parent's type is known here, and the
        // representations name it without asking the subgraph.
        for f in required_from_here {
            add_unique(&mut out, f);
        }
        Ok(out)
    }
}

impl Plan {
    /// One line per fetch, for the debug log: id, subgraph, what it fetches
    /// and what it waits for.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for f in &self.fetches {
            let what = match &f.kind {
                FetchKind::Root { operation } => format!("{operation} root"),
                FetchKind::Entity {
                    type_name, path, ..
                } => format!("{type_name} entities at /{}", path.join("/")),
            };
            out.push_str(&format!(
                "#{} {} {} after {:?}; ",
                f.id, f.graph, what, f.deps
            ));
        }
        out
    }
}

/// Plans an operation on the root type `root` (`Query` or `Mutation`).
pub fn plan(
    sg: &Supergraph,
    root: &str,
    operation: &'static str,
    fields: &[Field],
) -> Result<Plan, PlanError> {
    let mut planner = Planner {
        sg,
        fetches: Vec::new(),
    };
    // Root fields by owner, in the order the client wrote them.
    let mut by_graph: Vec<(String, Vec<Field>)> = Vec::new();
    for f in fields {
        if f.name.starts_with("__") {
            continue; // introspection and __typename are answered by the gateway
        }
        let info = sg
            .field(root, &f.name)
            .ok_or_else(|| PlanError::Unowned(format!("{root}.{}", f.name)))?;
        let graph = by_graph
            .iter()
            .map(|(g, _)| g.clone())
            .find(|g| info.graphs.contains(g))
            .or_else(|| info.graphs.first().cloned())
            .ok_or_else(|| PlanError::Unowned(format!("{root}.{}", f.name)))?;
        match by_graph.iter_mut().find(|(g, _)| *g == graph) {
            Some((_, list)) => list.push(f.clone()),
            None => by_graph.push((graph, vec![f.clone()])),
        }
    }
    let mut previous: Option<usize> = None;
    for (graph, list) in by_graph {
        // Mutations run in the order written; queries in parallel.
        let deps = if operation == "mutation" {
            previous.into_iter().collect()
        } else {
            Vec::new()
        };
        let id = planner.new_fetch(&graph, FetchKind::Root { operation }, deps);
        let selection = planner.fields(id, &graph, root, &list, &[], None)?;
        planner.fetches[id].selection = selection;
        previous = Some(id);
    }
    Ok(Plan {
        fetches: planner.fetches,
    })
}

/// A GraphQL literal for a JSON value (arguments are inlined into subgraph queries).
pub fn literal(value: &Json, out: &mut String) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => out.push_str(&n.to_string()),
        Json::String(s) => out.push_str(&Json::String(s.clone()).to_string()),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                literal(item, out);
            }
            out.push(']');
        }
        Json::Object(fields) => {
            out.push('{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push(':');
                literal(v, out);
            }
            out.push('}');
        }
    }
}

/// The selection set text of a fetch.
pub fn selection_text(fields: &[SubField], out: &mut String) {
    out.push('{');
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if let Some(c) = &f.condition {
            out.push_str("... on ");
            out.push_str(c);
            out.push('{');
        }
        if f.key != f.name {
            out.push_str(&f.key);
            out.push(':');
        }
        out.push_str(&f.name);
        if !f.args.is_empty() {
            out.push('(');
            for (j, (name, value)) in f.args.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(name);
                out.push(':');
                out.push_str(value);
            }
            out.push(')');
        }
        if !f.children.is_empty() {
            selection_text(&f.children, out);
        }
        if f.condition.is_some() {
            out.push('}');
        }
    }
    out.push('}');
}

/// The operation text of a root fetch.
pub fn root_text(operation: &str, selection: &[SubField]) -> String {
    let mut text = String::from(operation);
    selection_text(selection, &mut text);
    text
}

/// What an entity fetch selects below `_entities`: `... on Type{...}`.
/// Entity fetches to one subgraph with the same fragment share one
/// `_entities` field (and its representation list) when batched.
pub fn entity_fragment(type_name: &str, selection: &[SubField]) -> String {
    let mut text = String::from("... on ");
    text.push_str(type_name);
    selection_text(selection, &mut text);
    text
}
