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
use std::time::Instant;

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
    /// Set when `key` is an alias the gateway chose because the subgraph
    /// would refuse two fields of one response key with different types
    /// (`... on User{id} ... on Admin{id}`, `ID!` and `ID` there): the key
    /// the value goes back under in the response.
    pub response_key: Option<String>,
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
        /// The `__typename`s of the objects this fetch takes, when they are
        /// not `type_name`: the implementations of an interface fetched from
        /// a subgraph that knows it as an object (`@interfaceObject`). Their
        /// representations name the interface.
        accepts: Vec<String>,
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
    /// Whether a field of `selection` has an alias the gateway chose
    /// (`SubField::response_key`): only then is the answer walked to put
    /// values back under the client's keys.
    pub aliased: bool,
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
    #[error(
        "{field} is needed to fetch from subgraph {to}, and no subgraph can supply it to {from}"
    )]
    Unreachable {
        field: String,
        from: String,
        to: String,
    },
    #[error("{field}: a chain of @requires through more than {limit} subgraphs is not supported")]
    RequiresChain { field: String, limit: usize },
    #[error("planning the operation ran past the planning budget (limits.planningBudget); simplify the operation or raise the budget")]
    Budget,
}

fn typename() -> SubField {
    SubField {
        key: "__typename".into(),
        name: "__typename".into(),
        args: Vec::new(),
        condition: None,
        children: Vec::new(),
        response_key: None,
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
    let mut out = Vec::new();
    if set.has_conditions() {
        out.push(typename());
    }
    for (name, sub) in &set.0 {
        match FieldSet::condition(name) {
            // An inline fragment: its fields under its type condition. A
            // fragment nested in it keeps its own, narrower condition (the
            // objects it selects are of both types).
            Some(type_name) => {
                // (`__typename` is asked once, above, for the whole object.)
                for f in fieldset_selection(sub)
                    .into_iter()
                    .filter(|f| f.name != "__typename")
                {
                    add_unique(
                        &mut out,
                        SubField {
                            condition: f.condition.clone().or_else(|| Some(type_name.to_string())),
                            ..f
                        },
                    );
                }
            }
            None => add_unique(&mut out, fieldset_field(name, sub)),
        }
    }
    out
}

/// The field an entry of a field set asks for. A field with arguments is
/// asked under an alias of its own (`FieldSet::response_key`), which the
/// representation is then written from.
fn fieldset_field(entry: &str, sub: &FieldSet) -> SubField {
    SubField {
        key: FieldSet::response_key(entry).into_owned(),
        name: FieldSet::field_name(entry).to_string(),
        args: FieldSet::arguments(entry),
        condition: None,
        children: fieldset_selection(sub),
        response_key: None,
    }
}

/// Fields one subgraph answers on entities of one type, fetched together
/// with the fields their `@requires` needs.
struct Batch {
    /// (owner graph, entity type)
    group: (String, String),
    fields: Vec<Field>,
    requires: FieldSet,
    /// Whether this is the group's first batch, which may share a fetch
    /// already made for the group (a provider of required fields); later
    /// batches conflict with it and get fetches of their own.
    first_of_group: bool,
}

/// The number of fields in `fields`, through their sub-selections.
fn count(fields: &[Field]) -> usize {
    fields.iter().map(|f| 1 + count(&f.children)).sum()
}

/// How many subgraphs a chain of `@requires` may pass through (each
/// required field needing fields from the next) before planning gives up.
const MAX_REQUIRES_CHAIN: usize = 8;

/// Where fields for an entity fetch's representation are being gathered:
/// objects of `type_name` at `path`, below fetch `fetch` from `graph`.
struct Supplying<'a> {
    fetch: usize,
    graph: &'a str,
    type_name: &'a str,
    path: &'a [String],
    /// Set below an abstract parent: what the parent fetch adds is asked
    /// under `... on Type`.
    condition: &'a Option<String>,
    /// What the parent fetch's subgraph `@provides` on these objects: it
    /// answers those fields here though it declares them `@external`.
    provided: Option<&'a FieldSet>,
}

impl Supplying<'_> {
    /// Whether the parent fetch's subgraph answers `name { sub }` on these
    /// objects: it resolves the field, or provides it here.
    fn answers(&self, sg: &Supergraph, name: &str, sub: &FieldSet) -> bool {
        sg.resolves(self.graph, self.type_name, name)
            || self.provided.is_some_and(|p| {
                p.0.iter()
                    .any(|(n, s)| n == name && (sub.0.is_empty() || s == sub))
            })
    }
}

struct Planner<'s> {
    sg: &'s Supergraph,
    fetches: Vec<Fetch>,
    deadline: Instant,
}

impl Planner<'_> {
    /// How many of `fields` (of objects of `parent`), counted through their
    /// sub-selections, `graph` can answer without another fetch. Used to pick,
    /// among the subgraphs that can resolve a field, one that can resolve
    /// the whole path below it.
    fn coverage(&self, graph: &str, parent: &str, fields: &[Field]) -> (usize, usize) {
        let mut covered = 0;
        let mut total = 0;
        for f in fields {
            // A fragment on types `graph` does not have selects nothing it
            // returns: it neither counts for it nor against it.
            if f.condition.as_deref().is_some_and(|c| {
                !self
                    .sg
                    .object_types(c)
                    .iter()
                    .any(|t| self.sg.defines(graph, t))
            }) {
                continue;
            }
            total += 1;
            let owner_type = f.condition.as_deref().unwrap_or(parent);
            if self.sg.resolves(graph, owner_type, &f.name) {
                covered += 1;
                let (c, t) = self.coverage(graph, f.output(), &f.children);
                covered += c;
                total += t;
            } else {
                total += count(&f.children);
            }
        }
        (covered, total)
    }

    /// Among `candidates` (subgraphs that resolve `field`), one that leaves
    /// none of the field's sub-selection stranded (see [`Self::stranded`]),
    /// then the one that answers most of it itself; on a tie, the first of
    /// `preferred` (subgraphs already fetched from), then the first candidate.
    fn choose(&self, candidates: &[String], field: &Field, preferred: &[String]) -> Option<String> {
        let mut best: Option<(&String, (bool, usize, bool))> = None;
        for g in candidates {
            let (covered, _) = self.coverage(g, field.output(), &field.children);
            let strands = field
                .children
                .iter()
                .any(|c| self.stranded(g, field.output(), c));
            let score = (!strands, covered, preferred.contains(g));
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((g, score));
            }
        }
        best.map(|(g, _)| g.clone())
    }

    /// Makes the fields `needed` available on the objects before an entity
    /// fetch to `target` runs (its representation carries them). Those the
    /// parent fetch's subgraph answers are asked from it (`from_here`).
    /// Each other one comes from a sibling entity fetch to a subgraph that
    /// resolves it and whose key the parent's subgraph answers; when that
    /// subgraph `@requires` fields for it in turn, they are supplied the same
    /// way (chained `@requires`). Returns the sibling fetches to wait for.
    fn supply(
        &mut self,
        at: &Supplying,
        needed: &FieldSet,
        target: &str,
        created: &mut BTreeMap<(String, String), usize>,
        from_here: &mut Vec<SubField>,
        chain: usize,
    ) -> Result<Vec<usize>, PlanError> {
        let type_name = at.type_name;
        let mut deps = Vec::new();
        for (name, sub) in &needed.0 {
            if self.in_representation(at, name, sub) {
                continue;
            }
            // A field the parent's subgraph computes from fields it
            // `@requires` is fetched from it as an entity, like any other.
            let computed_there =
                self.requires_representation(at.fetch, at.graph, type_name, name, at.path);
            if at.answers(self.sg, name, sub) && !computed_there {
                for d in self.supply_here(at, name, sub, target, from_here, chain)? {
                    if !deps.contains(&d) {
                        deps.push(d);
                    }
                }
                continue;
            }
            if chain >= MAX_REQUIRES_CHAIN {
                return Err(PlanError::RequiresChain {
                    field: format!("{type_name}.{name}"),
                    limit: MAX_REQUIRES_CHAIN,
                });
            }
            let graphs = self
                .sg
                .field(type_name, name)
                .map(|i| i.graphs.clone())
                .unwrap_or_default();
            let answered_key =
                |g: &str| self.answered_key(g, type_name, |n, sub| at.answers(self.sg, n, sub));
            let reachable =
                |g: &&String| (**g != at.graph || computed_there) && answered_key(g).is_some();
            // The target itself answers a field it needs in its own
            // representation (`author` for `byNovice @requires(fields:
            // "author { yearsOfExperience }")`, where only another subgraph
            // has `yearsOfExperience`) through an earlier fetch of its own,
            // if it does not require fields for it in turn.
            let target_supplies = |g: &&String| {
                **g == target
                    && self
                        .sg
                        .field(type_name, name)
                        .and_then(|i| i.requires.get(target))
                        .is_none_or(|r| r.0.is_empty())
            };
            let provider = graphs
                .iter()
                .filter(|g| **g != target)
                .find(reachable)
                .or_else(|| graphs.iter().filter(target_supplies).find(reachable))
                .cloned()
                .ok_or_else(|| PlanError::Unreachable {
                    field: format!("{type_name}.{name}"),
                    from: at.graph.to_string(),
                    to: target.to_string(),
                })?;
            // A supplying fetch to the target is not the target's own fetch,
            // which waits for it: it is kept apart under its own name.
            let created_key = if provider == target {
                (provider.clone(), format!("{type_name} (supplies {target})"))
            } else {
                (provider.clone(), type_name.to_string())
            };
            let pid = match created.get(&created_key) {
                Some(id) => *id,
                None => {
                    let pkey = answered_key(&provider).ok_or_else(|| PlanError::NoKey {
                        type_name: type_name.to_string(),
                        graph: provider.clone(),
                        field: name.clone(),
                    })?;
                    let id = self.new_fetch(
                        &provider,
                        FetchKind::Entity {
                            type_name: type_name.to_string(),
                            path: at.path.to_vec(),
                            key: pkey.clone(),
                            requires: FieldSet::default(),
                            accepts: Vec::new(),
                        },
                        vec![at.fetch],
                    );
                    // The key's own nested fields may need a fetch first
                    // (`products { id pid }` where `pid` is elsewhere).
                    let mut key_deps = Vec::new();
                    for (n, sub) in &pkey.0 {
                        key_deps.extend(self.supply_here(at, n, sub, &provider, from_here, chain)?);
                    }
                    for d in key_deps {
                        if !self.fetches[id].deps.contains(&d) && d != id {
                            self.fetches[id].deps.push(d);
                        }
                    }
                    created.insert(created_key, id);
                    id
                }
            };
            // The provider may itself require fields for this one.
            let provider_requires = self
                .sg
                .field(type_name, name)
                .and_then(|i| i.requires.get(&provider))
                .cloned()
                .unwrap_or_default();
            if !provider_requires.0.is_empty() {
                let more = self.supply(
                    at,
                    &provider_requires,
                    &provider,
                    created,
                    from_here,
                    chain + 1,
                )?;
                let p = &mut self.fetches[pid];
                for d in more {
                    if !p.deps.contains(&d) && d != pid {
                        p.deps.push(d);
                    }
                }
                if let FetchKind::Entity { requires, .. } = &mut p.kind {
                    requires.merge(&self.sg.concrete_field_set(type_name, &provider_requires));
                }
            }
            // Nested fields the provider cannot answer (`author {
            // yearsOfExperience }`) come from entity fetches of the nested
            // objects after it, which the target's fetch waits for too.
            let mut selection = Vec::new();
            let nested = self.supply_here(
                &Supplying {
                    fetch: pid,
                    graph: &provider,
                    type_name,
                    path: at.path,
                    condition: &None,
                    provided: None,
                },
                name,
                sub,
                target,
                &mut selection,
                chain + 1,
            )?;
            for f in selection {
                add_unique(&mut self.fetches[pid].selection, f);
            }
            for d in std::iter::once(pid).chain(nested) {
                if !deps.contains(&d) {
                    deps.push(d);
                }
            }
        }
        Ok(deps)
    }

    /// Whether the objects at `at` already hold `name { sub }` because the
    /// parent fetch is an entity fetch of them that was sent it in its
    /// representation: the objects had it before that fetch (a key field
    /// the parent's subgraph declares `@external`, say).
    fn in_representation(&self, at: &Supplying, name: &str, sub: &FieldSet) -> bool {
        match &self.fetches[at.fetch].kind {
            FetchKind::Entity {
                type_name,
                path,
                key,
                requires,
                ..
            } if type_name == at.type_name && path.as_slice() == at.path => [key, requires]
                .iter()
                .any(|set| set.0.iter().any(|(n, s)| n == name && s == sub)),
            _ => false,
        }
    }

    /// Asks `name { sub }`, which the parent fetch's subgraph resolves,
    /// of that fetch. A nested field of `sub` it does not resolve (a key
    /// `products { id pid }` where only another subgraph has `pid`) is
    /// supplied one level down the same way as at the top: from an entity
    /// fetch of the nested objects, which the fetch needing them waits for
    /// (returned).
    fn supply_here(
        &mut self,
        at: &Supplying,
        name: &str,
        sub: &FieldSet,
        target: &str,
        from_here: &mut Vec<SubField>,
        chain: usize,
    ) -> Result<Vec<usize>, PlanError> {
        let output = self.sg.field(at.type_name, name).map(|i| i.output.clone());
        let nested_elsewhere = output.as_deref().filter(|o| {
            !sub.0.is_empty()
                && self.sg.types.get(*o).is_some_and(|t| !t.is_abstract)
                && sub.0.iter().all(|(n, _)| FieldSet::condition(n).is_none())
                && sub.0.iter().any(|(n, _)| !self.sg.resolves(at.graph, o, n))
        });
        let Some(output) = nested_elsewhere else {
            for f in fieldset_selection(&FieldSet(vec![(name.to_string(), sub.clone())])) {
                add_unique(
                    from_here,
                    SubField {
                        condition: at.condition.clone(),
                        ..f
                    },
                );
            }
            return Ok(Vec::new());
        };
        let field = fieldset_field(name, &FieldSet::default());
        let mut path = at.path.to_vec();
        path.push(field.key.clone());
        let mut children = Vec::new();
        let mut created = BTreeMap::new();
        let deps = self.supply(
            &Supplying {
                fetch: at.fetch,
                graph: at.graph,
                type_name: output,
                path: &path,
                condition: &None,
                provided: None,
            },
            sub,
            target,
            &mut created,
            &mut children,
            chain,
        )?;
        add_unique(
            from_here,
            SubField {
                condition: at.condition.clone(),
                children,
                ..field
            },
        );
        Ok(deps)
    }

    /// Whether a field `graph` resolves is better fetched from another
    /// subgraph: `graph` cannot answer all of its sub-selection (a value type
    /// without `@key` cannot be continued elsewhere), and another subgraph
    /// that resolves the field, and can be reached by a key of the parent,
    /// answers more of it.
    fn better_elsewhere(&self, graph: &str, parent: &str, field: &Field) -> bool {
        if field.children.is_empty() {
            return false;
        }
        let (here, total) = self.coverage(graph, field.output(), &field.children);
        if here == total {
            return false;
        }
        let Some(info) = self.sg.field(parent, &field.name) else {
            return false;
        };
        info.graphs.iter().any(|g| {
            g != graph
                && self.sg.key(g, parent).is_some()
                && self.coverage(g, field.output(), &field.children).0 > here
                && !field
                    .children
                    .iter()
                    .any(|c| self.stranded(g, field.output(), c))
        })
    }

    /// Whether `child`, selected on objects of `parent` that `graph`
    /// returns, can be answered neither by `graph` nor by an entity fetch
    /// from it: no subgraph resolving it has a key of the (object) type whose
    /// fields `graph` answers. Such a field can only come through the
    /// parent's parent (see [`Self::parent_hop`]).
    fn stranded(&self, graph: &str, parent: &str, child: &Field) -> bool {
        let owner = child.condition.as_deref().unwrap_or(parent);
        if child.name == "__typename" || self.sg.resolves(graph, owner, &child.name) {
            return false;
        }
        // Abstract owners are planned per implementation or through
        // interface objects; a fragment on types `graph` lacks selects nothing.
        if self.sg.types.get(owner).is_none_or(|t| t.is_abstract) || !self.sg.defines(graph, owner)
        {
            return false;
        }
        let Some(info) = self.sg.field(owner, &child.name) else {
            return false;
        };
        !info.graphs.iter().any(|g| {
            self.sg.interface_object_for(g, owner).is_some()
                || self
                    .sg
                    .keys(g, owner)
                    .iter()
                    .any(|k| k.0.iter().all(|(n, _)| self.sg.resolves(graph, owner, n)))
        })
    }

    /// For a field `graph` answers on objects of `owner_type` whose
    /// sub-selection has stranded fields (a value type, say, whose other
    /// fields only another subgraph has): that other subgraph, when it
    /// resolves the field, has a key of `owner_type` and resolves or can
    /// reach the stranded fields, and the field with only those fields, to
    /// fetch from it as an entity of `owner_type`. The field's object is then answered by
    /// both subgraphs and merged. The rest of the sub-selection stays here.
    fn parent_hop(
        &self,
        graph: &str,
        owner_type: &str,
        field: &Field,
    ) -> Option<(String, Field, Vec<Field>)> {
        let output = field.output();
        let (stranded, kept): (Vec<Field>, Vec<Field>) = field
            .children
            .iter()
            .cloned()
            .partition(|c| self.stranded(graph, output, c));
        if stranded.is_empty() {
            return None;
        }
        let info = self.sg.field(owner_type, &field.name)?;
        // A subgraph that resolves every stranded field, or else one that
        // can reach each of them: it answers a key of the field's object
        // that a subgraph having the field resolves by (`category { id }`
        // there, and `name` then from the subgraph with `Category @key(id)`).
        let resolves_all = |g: &&String| {
            stranded.iter().all(|c| {
                self.sg
                    .resolves(g, c.condition.as_deref().unwrap_or(output), &c.name)
            })
        };
        let reaches_all = |g: &&String| stranded.iter().all(|c| !self.stranded(g, output, c));
        let candidates = || {
            info.graphs
                .iter()
                .filter(|g| *g != graph && self.sg.key(g, owner_type).is_some())
        };
        let hop = candidates()
            .find(resolves_all)
            .or_else(|| candidates().find(reaches_all))?;
        Some((
            hop.clone(),
            Field {
                children: stranded,
                ..field.clone()
            },
            kept,
        ))
    }

    /// A query's root field that several subgraphs resolve (`@shareable`),
    /// answered by `graph`, whose sub-selection has fields `graph` cannot
    /// answer or reach by a key (a value type whose fields are spread over
    /// the subgraphs): each such field is asked, under the same root
    /// field, of another of `candidates` that resolves it, and the answers
    /// are merged (the parent of a root field is the query itself, which
    /// every subgraph serves). Returns the pieces by subgraph, `graph`'s
    /// first; the field whole when nothing is stranded. Never used for
    /// mutations: a mutation field must run once.
    fn split_shared_root(
        &self,
        graph: &str,
        candidates: &[String],
        field: &Field,
    ) -> Vec<(String, Field)> {
        let output = field.output();
        let mut kept = Vec::new();
        let mut moved: Vec<(String, Vec<Field>)> = Vec::new();
        for child in &field.children {
            let owner = child.condition.as_deref().unwrap_or(output);
            let elsewhere = self.stranded(graph, output, child).then(|| {
                candidates
                    .iter()
                    .find(|g| *g != graph && self.sg.resolves(g, owner, &child.name))
            });
            match elsewhere.flatten() {
                Some(g) => match moved.iter_mut().find(|(m, _)| m == g) {
                    Some((_, list)) => list.push(child.clone()),
                    None => moved.push((g.clone(), vec![child.clone()])),
                },
                None => kept.push(child.clone()),
            }
        }
        if moved.is_empty() || kept.is_empty() {
            return vec![(graph.to_string(), field.clone())];
        }
        let mut pieces = vec![(
            graph.to_string(),
            Field {
                children: kept,
                ..field.clone()
            },
        )];
        pieces.extend(moved.into_iter().map(|(g, children)| {
            (
                g,
                Field {
                    children,
                    ..field.clone()
                },
            )
        }));
        pieces
    }

    /// Whether `field`, which `graph` resolves, `@requires` fields there
    /// that only an entity fetch's representation can bring: the current
    /// fetch is not already that entity fetch (of `owner_type` at `path`).
    /// Asked in a root or nested selection, the subgraph would compute the
    /// field without the required fields, so it goes through `_entities`
    /// to the same subgraph instead.
    fn requires_representation(
        &self,
        fetch: usize,
        graph: &str,
        owner_type: &str,
        field: &str,
        path: &[String],
    ) -> bool {
        let requires = self
            .sg
            .field(owner_type, field)
            .and_then(|i| i.requires.get(graph));
        if requires.is_none_or(|r| r.0.is_empty()) {
            return false;
        }
        !matches!(&self.fetches[fetch].kind, FetchKind::Entity { type_name, path: at, accepts, .. }
            if at.as_slice() == path && (type_name == owner_type || accepts.iter().any(|a| a == owner_type)))
    }

    /// The subgraphs that could answer `owner_type.field` on objects that
    /// `alternatives` could answer, `graph` asked: `graph`, and those that
    /// resolve the field and either could have answered the objects or can
    /// fetch them by a key.
    fn alternatives_below(
        &self,
        graph: &str,
        owner_type: &str,
        field: &str,
        alternatives: &[String],
    ) -> Vec<String> {
        let Some(info) = self.sg.field(owner_type, field) else {
            return vec![graph.to_string()];
        };
        let mut next: Vec<String> = info
            .graphs
            .iter()
            .filter(|g| {
                *g == graph || alternatives.contains(g) || self.sg.key(g, owner_type).is_some()
            })
            .cloned()
            .collect();
        if !next.iter().any(|g| g == graph) {
            next.push(graph.to_string());
        }
        next
    }

    /// How `field`, under a type condition below `parent`, is sent to
    /// `graph` when not as it is (None): conditions must name types the
    /// subgraph defines, with the type relations the subgraph has.
    /// * A type it does not define: the object types of the condition it
    ///   does define, one fragment each (none for an object type).
    /// * An interface that some of its objects implement in the supergraph
    ///   and not in this subgraph: one fragment per object type, so those
    ///   objects are matched too (`... on Node` below a union whose `Oven`
    ///   is a `Node` only in another subgraph).
    /// * An object type that is not a possible type of the abstract
    ///   `parent` in this subgraph: dropped, nothing it returns is one (and
    ///   the subgraph would refuse the fragment).
    fn condition_for(&self, graph: &str, parent: &str, field: &Field) -> Option<Vec<Field>> {
        let condition = field.condition.as_deref()?;
        let parent_possible = (self.sg.types.get(parent).is_some_and(|t| t.is_abstract)
            && self.sg.defines(graph, parent))
        .then(|| self.sg.possible_in(graph, parent));
        let fits_parent = |t: &str| parent_possible.as_ref().is_none_or(|p| p.contains(&t));
        let info = self.sg.types.get(condition);
        let is_abstract = info.is_some_and(|t| t.is_abstract);
        let defined_objects: Vec<&str> = info
            .map(|t| t.possible.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| self.sg.defines(graph, p))
            .collect();
        let relations_differ = is_abstract && {
            let here = self.sg.possible_in(graph, condition);
            defined_objects.iter().any(|p| !here.contains(p))
        };
        if !self.sg.defines(graph, condition) || relations_differ {
            return Some(
                defined_objects
                    .into_iter()
                    .filter(|p| fits_parent(p))
                    .map(|p| Field {
                        condition: Some(p.to_string()),
                        ..field.clone()
                    })
                    .collect(),
            );
        }
        (!is_abstract && !fits_parent(condition)).then(Vec::new)
    }

    /// The members of union `parent` that every subgraph in `alternatives`
    /// knows, when some know members others do not; None otherwise.
    fn common_union_members(&self, parent: &str, alternatives: &[String]) -> Option<Vec<&str>> {
        let t = self.sg.types.get(parent)?;
        if !t.is_abstract || t.members.is_empty() || alternatives.len() < 2 {
            return None;
        }
        let per_graph: Vec<Vec<&str>> = alternatives
            .iter()
            .filter(|g| self.sg.defines(g, parent))
            .map(|g| self.sg.members_in(g, parent))
            .collect();
        let first = per_graph.first()?;
        let common: Vec<&str> = first
            .iter()
            .copied()
            .filter(|m| per_graph.iter().all(|ms| ms.contains(m)))
            .collect();
        (common.len() < t.possible.len()).then_some(common)
    }

    /// The key of `type_name` to fetch entities from `target` by: one whose
    /// fields `from` can answer itself if there is one (no extra hop).
    fn key_for(&self, target: &str, type_name: &str, from: &str) -> Option<FieldSet> {
        self.answered_key(target, type_name, |n, _| {
            self.sg.resolves(from, type_name, n)
        })
        .or_else(|| self.sg.keys(target, type_name).first().cloned())
    }

    /// A key of `type_name` in `target` whose every field `answers`.
    fn answered_key(
        &self,
        target: &str,
        type_name: &str,
        answers: impl Fn(&str, &FieldSet) -> bool,
    ) -> Option<FieldSet> {
        self.sg
            .keys(target, type_name)
            .iter()
            .find(|k| k.0.iter().all(|(n, sub)| answers(n, sub)))
            .cloned()
    }

    fn new_fetch(&mut self, graph: &str, kind: FetchKind, deps: Vec<usize>) -> usize {
        let id = self.fetches.len();
        self.fetches.push(Fetch {
            id,
            graph: graph.into(),
            kind,
            selection: Vec::new(),
            deps,
            aliased: false,
        });
        id
    }

    /// An interface field that no subgraph can fetch as the interface (none
    /// has a key for it or knows it as an `@interfaceObject`) is fetched per
    /// implementation when this subgraph does not resolve it, or does not
    /// resolve it for one of the implementations it returns (the field was
    /// `@override`n there, say): the field is asked once under a type
    /// condition for each possible type, so each goes to the subgraph
    /// resolving it for that type, through that type's key. None when
    /// nothing needs it.
    fn per_implementation(
        &self,
        graph: &str,
        parent: &str,
        fields: &[Field],
        provided: Option<&FieldSet>,
    ) -> Option<Vec<Field>> {
        let info = self.sg.types.get(parent)?;
        if !info.is_abstract || !info.interface_objects.is_empty() {
            return None;
        }
        let needs = |f: &Field| {
            f.condition.is_none()
                && f.name != "__typename"
                && !provided.is_some_and(|p| p.0.iter().any(|(n, _)| *n == f.name))
                && (!self.sg.resolves(graph, parent, &f.name)
                    || info
                        .possible
                        .iter()
                        .any(|t| self.sg.defines(graph, t) && !self.sg.resolves(graph, t, &f.name)))
                && self
                    .sg
                    .field(parent, &f.name)
                    .is_some_and(|i| i.graphs.iter().all(|g| self.sg.key(g, parent).is_none()))
        };
        if !fields.iter().any(needs) {
            return None;
        }
        Some(
            fields
                .iter()
                .flat_map(|f| {
                    if needs(f) {
                        info.possible
                            .iter()
                            .map(|t| Field {
                                condition: Some(t.clone()),
                                ..f.clone()
                            })
                            .collect()
                    } else {
                        vec![f.clone()]
                    }
                })
                .collect(),
        )
    }

    /// Plans `fields` of objects of `parent` reached by fetch `fetch` from
    /// `graph`, at `path`; returns what that fetch must select.
    /// `alternatives`: the subgraphs that could have answered the field
    /// these objects are the value of (`@shareable`, or reachable by a key).
    fn fields(
        &mut self,
        fetch: usize,
        graph: &str,
        parent: &str,
        fields: &[Field],
        path: &[String],
        provided: Option<&FieldSet>,
        alternatives: &[String],
    ) -> Result<Vec<SubField>, PlanError> {
        if Instant::now() >= self.deadline {
            return Err(PlanError::Budget);
        }
        // A union whose members differ between the subgraphs that could
        // answer it: shareable fields answer alike whichever subgraph is
        // asked, so only members every one of them has are selected, as the
        // reference routers plan it. An object of another member keeps its
        // `__typename`, and its fields come out null.
        let common_members: Vec<Field>;
        let fields = match self.common_union_members(parent, alternatives) {
            Some(common)
                if fields.iter().any(|f| {
                    f.condition.as_deref().is_some_and(|c| {
                        self.sg.types.get(c).is_some_and(|t| !t.is_abstract) && !common.contains(&c)
                    })
                }) =>
            {
                common_members = fields
                    .iter()
                    .filter(|f| {
                        f.condition.as_deref().is_none_or(|c| {
                            self.sg.types.get(c).is_none_or(|t| t.is_abstract)
                                || common.contains(&c)
                        })
                    })
                    .cloned()
                    .collect();
                &common_members[..]
            }
            _ => fields,
        };
        // A subgraph is only sent type conditions on types it defines. A
        // condition on a type it does not define cannot match anything it
        // returns, except through an abstract type it does not know: that
        // one is asked as the concrete types it defines that belong to it.
        // Below an interface this subgraph knows as an object, conditions
        // are routed to a subgraph that knows the implementations (below).
        let parent_is_object_here = self.sg.is_interface_object(graph, parent);
        let expanded: Vec<Field>;
        let fields = match self.per_implementation(graph, parent, fields, provided) {
            Some(list) => {
                expanded = list;
                &expanded[..]
            }
            None => fields,
        };
        let rewritten: Vec<Field>;
        let fields = if !parent_is_object_here
            && fields
                .iter()
                .any(|f| self.condition_for(graph, parent, f).is_some())
        {
            rewritten = fields
                .iter()
                .flat_map(|f| {
                    self.condition_for(graph, parent, f)
                        .unwrap_or_else(|| vec![f.clone()])
                })
                .collect();
            &rewritten[..]
        } else {
            fields
        };
        let mut out = Vec::new();
        // Fields to fetch elsewhere, by owning subgraph and concrete type (an
        // abstract parent needs one entity fetch per type), in first-seen order.
        let mut elsewhere: Vec<((String, String), Vec<Field>)> = Vec::new();
        // (group → the `__typename`s its objects may have, see `accepts`)
        let mut accepts_of: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let is_abstract = self.sg.types.get(parent).is_some_and(|t| t.is_abstract);
        if is_abstract && !parent_is_object_here {
            out.push(typename());
        }
        for f in fields {
            let owner_type = f.condition.as_deref().unwrap_or(parent);
            let provided_here = provided.and_then(|p| p.0.iter().find(|(n, _)| *n == f.name));
            if parent_is_object_here && (f.name == "__typename" || owner_type != parent) {
                // The real type, and fields under its type conditions, come
                // from a subgraph that knows the interface as an interface.
                let owner = self
                    .sg
                    .types
                    .get(parent)
                    .map(|t| t.keys.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
                    .into_iter()
                    .find(|g| {
                        !self.sg.is_interface_object(g, parent)
                            && self.sg.key(g, parent).is_some()
                            && self.sg.defines(g, owner_type)
                    })
                    .ok_or_else(|| PlanError::NoKey {
                        type_name: parent.to_string(),
                        graph: graph.to_string(),
                        field: f.name.clone(),
                    })?;
                let group = (owner, parent.to_string());
                match elsewhere.iter_mut().find(|(g, _)| *g == group) {
                    Some((_, list)) => list.push(f.clone()),
                    None => elsewhere.push((group, vec![f.clone()])),
                }
                continue;
            }
            if f.name == "__typename"
                || provided_here.is_some()
                || self.sg.resolves(graph, owner_type, &f.name)
                    && !self.better_elsewhere(graph, owner_type, f)
                    && !self.requires_representation(fetch, graph, owner_type, &f.name, path)
            {
                let mut path_next = path.to_vec();
                path_next.push(f.key.clone());
                let provides_next = provided_here.map(|(_, sub)| sub.clone()).or_else(|| {
                    self.sg
                        .field(owner_type, &f.name)
                        .and_then(|i| i.provides.get(graph).cloned())
                });
                let hop = if provided_here.is_some() {
                    None
                } else {
                    self.parent_hop(graph, owner_type, f)
                };
                let kept_children = match hop {
                    Some((hop_graph, hop_field, kept)) => {
                        let group = (hop_graph, owner_type.to_string());
                        match elsewhere.iter_mut().find(|(g, _)| *g == group) {
                            Some((_, list)) => list.push(hop_field),
                            None => elsewhere.push((group, vec![hop_field])),
                        }
                        kept
                    }
                    None => f.children.clone(),
                };
                let children = if f.children.is_empty() {
                    Vec::new()
                } else if kept_children.is_empty() {
                    // Everything below comes from the other subgraph: this
                    // one only says whether the object is there.
                    vec![typename()]
                } else {
                    let next = self.alternatives_below(graph, owner_type, &f.name, alternatives);
                    self.fields(
                        fetch,
                        graph,
                        f.output(),
                        &kept_children,
                        &path_next,
                        provides_next.as_ref(),
                        &next,
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
                        response_key: None,
                    },
                );
                continue;
            }
            let info = self
                .sg
                .field(owner_type, &f.name)
                .ok_or_else(|| PlanError::Unowned(format!("{owner_type}.{}", f.name)))?;
            let already: Vec<String> = elsewhere
                .iter()
                .filter(|((_, t), _)| t == owner_type)
                .map(|((g, _), _)| g.clone())
                .collect();
            // Only subgraphs that can fetch the entity by a key qualify,
            // directly or as an interface they know as an object.
            let mut candidates: Vec<String> = info
                .graphs
                .iter()
                .filter(|g| self.sg.key(g, owner_type).is_some())
                .cloned()
                .collect();
            // A field that implementations get through an `@interfaceObject`
            // (a bare `@join__field` on the implementation).
            for (name, t) in &self.sg.types {
                if !t.possible.iter().any(|p| p == owner_type) {
                    continue;
                }
                for g in &t.interface_objects {
                    if self.sg.resolves(g, name, &f.name)
                        && self.sg.key(g, name).is_some()
                        && !candidates.contains(g)
                    {
                        candidates.push(g.clone());
                    }
                }
            }
            let owner =
                self.choose(&candidates, f, &already)
                    .ok_or_else(|| match info.graphs.first() {
                        Some(g) => PlanError::NoKey {
                            type_name: owner_type.to_string(),
                            graph: g.clone(),
                            field: f.name.clone(),
                        },
                        None => PlanError::Unowned(format!("{owner_type}.{}", f.name)),
                    })?;
            let (entity_type, field) = match self.sg.key(&owner, owner_type) {
                Some(_) => (owner_type.to_string(), f.clone()),
                // Fetched as the interface: the subgraph knows no
                // implementations, so no type condition goes with it.
                None => match self.sg.interface_object_for(&owner, owner_type) {
                    Some(interface) => (
                        interface.to_string(),
                        Field {
                            condition: None,
                            ..f.clone()
                        },
                    ),
                    None => {
                        return Err(PlanError::NoKey {
                            type_name: owner_type.to_string(),
                            graph: owner,
                            field: f.name.clone(),
                        })
                    }
                },
            };
            let group = (owner, entity_type.clone());
            if self.sg.is_interface_object(&group.0, &entity_type) {
                let accepts = accepts_of.entry(group.clone()).or_default();
                let takes: Vec<String> = if entity_type == owner_type {
                    self.sg
                        .types
                        .get(owner_type)
                        .map(|t| t.possible.clone())
                        .unwrap_or_default()
                } else {
                    vec![owner_type.to_string()]
                };
                for t in takes {
                    if !accepts.contains(&t) {
                        accepts.push(t);
                    }
                }
            }
            match elsewhere.iter_mut().find(|(g, _)| *g == group) {
                Some((_, list)) => list.push(field),
                None => elsewhere.push((group, vec![field])),
            }
        }
        if elsewhere.is_empty() {
            return Ok(out);
        }
        // Fields of one group whose required fields conflict (one field with
        // other arguments: `price(currency:"USD")`, `price(currency:"EUR")`)
        // cannot share a representation: each such batch is its own fetch.
        let mut batches: Vec<Batch> = Vec::new();
        for (group, list) in elsewhere {
            let first = batches.len();
            for f in list {
                let req = self
                    .sg
                    .field(&group.1, &f.name)
                    .and_then(|i| i.requires.get(&group.0))
                    .cloned()
                    .unwrap_or_default();
                match batches[first..]
                    .iter_mut()
                    .find(|b| !b.requires.conflicts_with(&req))
                {
                    Some(b) => {
                        b.fields.push(f);
                        b.requires.merge(&req);
                    }
                    None => batches.push(Batch {
                        group: group.clone(),
                        fields: vec![f],
                        requires: req,
                        first_of_group: batches.len() == first,
                    }),
                }
            }
        }
        // Required fields of the entity fetches come first: they may need
        // fetches of their own, which the requiring fetch then waits for.
        let mut required_from_here: Vec<SubField> = Vec::new();
        // Plan the fetches in an order where the providers of required fields exist first.
        let mut created: BTreeMap<(String, String), usize> = BTreeMap::new();
        batches.sort_by_key(|b| !b.requires.0.is_empty());
        for batch in batches {
            let Batch {
                group: (owner, type_name),
                fields: list,
                requires,
                first_of_group,
            } = batch;
            // Below an abstract parent, what this fetch adds for the entity
            // fetch (key, required fields) is asked under `... on Type`.
            let condition = (type_name != parent).then(|| type_name.clone());
            let key = self
                .key_for(&owner, &type_name, graph)
                .ok_or_else(|| PlanError::NoKey {
                    type_name: type_name.clone(),
                    graph: owner.clone(),
                    field: list[0].name.clone(),
                })?;
            let mut deps = vec![fetch];
            // The representation needs the key and the required fields.
            // What this subgraph cannot answer comes from a sibling entity
            // fetch (a subgraph whose key this one can answer), which the
            // entity fetch then waits for.
            let mut needed = key.clone();
            needed.merge(&requires);
            // What the representation is written from: fragments on
            // abstract types become one per object type (see
            // `Supergraph::concrete_field_set`).
            let requires = self.sg.concrete_field_set(&type_name, &requires);
            let supplied = self.supply(
                &Supplying {
                    fetch,
                    graph,
                    type_name: &type_name,
                    path,
                    condition: &condition,
                    provided,
                },
                &needed,
                &owner,
                &mut created,
                &mut required_from_here,
                0,
            )?;
            for d in supplied {
                if !deps.contains(&d) {
                    deps.push(d);
                }
            }
            // The group's fetch made earlier (a provider of required fields)
            // is shared only if the representations would not conflict.
            let shared = created
                .get(&(owner.clone(), type_name.clone()))
                .filter(|_| first_of_group)
                .filter(|id| match &self.fetches[**id].kind {
                    FetchKind::Entity { requires: r, .. } => !r.conflicts_with(&requires),
                    FetchKind::Root { .. } => true,
                });
            let id = match shared {
                Some(id) => {
                    let existing = &mut self.fetches[*id];
                    for d in deps {
                        if !existing.deps.contains(&d) {
                            existing.deps.push(d);
                        }
                    }
                    if let FetchKind::Entity { requires: r, .. } = &mut existing.kind {
                        r.merge(&requires);
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
                            accepts: accepts_of
                                .get(&(owner.clone(), type_name.clone()))
                                .cloned()
                                .unwrap_or_default(),
                        },
                        deps,
                    );
                    if first_of_group {
                        created
                            .entry((owner.clone(), type_name.clone()))
                            .or_insert(id);
                    }
                    id
                }
            };
            let selection = self.fields(id, &owner, &type_name, &list, path, None, alternatives)?;
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
/// Planning stops with [`PlanError::Budget`] once `deadline` has passed.
pub fn plan(
    sg: &Supergraph,
    root: &str,
    operation: &'static str,
    fields: &[Field],
    deadline: Instant,
) -> Result<Plan, PlanError> {
    let mut planner = Planner {
        sg,
        fetches: Vec::new(),
        deadline,
    };
    let is_mutation = operation == "mutation";
    // Root fields by subgraph, in the order the client wrote them. A query
    // groups all fields of one subgraph into one fetch. A mutation's fields
    // run one after the other in document order, so only adjacent fields of
    // one subgraph share a fetch: a field is never moved past another
    // subgraph's field.
    let mut groups: Vec<(String, Vec<Field>)> = Vec::new();
    for f in fields {
        if f.name.starts_with("__") {
            continue; // introspection and __typename are answered by the gateway
        }
        let info = sg
            .field(root, &f.name)
            .ok_or_else(|| PlanError::Unowned(format!("{root}.{}", f.name)))?;
        let preferred: Vec<String> = if is_mutation {
            groups.last().map(|(g, _)| g.clone()).into_iter().collect()
        } else {
            groups.iter().map(|(g, _)| g.clone()).collect()
        };
        let graph = planner
            .choose(&info.graphs, f, &preferred)
            .ok_or_else(|| PlanError::Unowned(format!("{root}.{}", f.name)))?;
        if is_mutation {
            match groups.last_mut().filter(|(g, _)| *g == graph) {
                Some((_, list)) => list.push(f.clone()),
                None => groups.push((graph, vec![f.clone()])),
            }
            continue;
        }
        for (graph, piece) in planner.split_shared_root(&graph, &info.graphs, f) {
            match groups.iter_mut().find(|(g, _)| *g == graph) {
                Some((_, list)) => list.push(piece),
                None => groups.push((graph, vec![piece])),
            }
        }
    }
    for (graph, list) in groups {
        // A mutation group starts when everything before it, entity
        // fetches of earlier fields included, is done; query groups run in
        // parallel.
        let deps = if is_mutation {
            (0..planner.fetches.len()).collect()
        } else {
            Vec::new()
        };
        let id = planner.new_fetch(&graph, FetchKind::Root { operation }, deps);
        let every_graph: Vec<String> = sg.graphs.keys().cloned().collect();
        let selection = planner.fields(id, &graph, root, &list, &[], None, &every_graph)?;
        planner.fetches[id].selection = selection;
    }
    let mut fetches = planner.fetches;
    for fetch in &mut fetches {
        let parent = match &fetch.kind {
            FetchKind::Root { .. } => root.to_string(),
            FetchKind::Entity { type_name, .. } => type_name.clone(),
        };
        let mut aliases = 0;
        alias_conflicts(
            sg,
            &fetch.graph,
            vec![(parent, fetch.selection.as_mut_slice())],
            &mut aliases,
        );
        fetch.aliased = aliases > 0;
    }
    Ok(Plan { fetches })
}

/// A subgraph validates the query it is sent: two fields of one response
/// key must have the same type shape even when they sit in fragments on
/// different types (graphql-js's "fields conflict"). The supergraph may
/// allow what a subgraph does not: `User.id` is `ID!` there and `Admin.id`
/// is `ID`, so `... on User{id} ... on Admin{id}` is refused. Such fields
/// get an alias of their own for the subgraph (`response_key` keeps the
/// client's key; the executor puts the values back under it), as Apollo's
/// query planner does.
///
/// `sets` are selections whose fields the subgraph merges into one set: a
/// fetch's selection, or the children of same-key fields one level down
/// (each with the type its fields are selected on).
fn alias_conflicts(
    sg: &Supergraph,
    graph: &str,
    mut sets: Vec<(String, &mut [SubField])>,
    aliases: &mut usize,
) {
    let keys: std::collections::BTreeSet<String> = sets
        .iter()
        .flat_map(|(_, set)| set.iter().map(|f| f.key.clone()))
        .collect();
    // Response key → the type its first field has; (key, type) → alias.
    let mut first_type: BTreeMap<String, String> = BTreeMap::new();
    let mut alias_of: BTreeMap<(String, String), String> = BTreeMap::new();
    for (parent, set) in sets.iter_mut() {
        for f in set.iter_mut() {
            let on = f.condition.as_deref().unwrap_or(parent.as_str());
            let Some(ty) = sg.field_type_in(graph, on, &f.name) else {
                continue; // __typename, or a field the planner adds itself
            };
            let first = first_type
                .entry(f.key.clone())
                .or_insert_with(|| ty.to_string());
            if first == ty {
                continue;
            }
            let alias = alias_of
                .entry((f.key.clone(), ty.to_string()))
                .or_insert_with(|| loop {
                    let candidate = format!("_rm_alias_{aliases}");
                    *aliases += 1;
                    if !keys.contains(&candidate) {
                        break candidate;
                    }
                })
                .clone();
            f.response_key = Some(std::mem::replace(&mut f.key, alias));
        }
    }
    // One level down: the children of fields that now share a key are
    // merged by the subgraph too.
    let mut below: BTreeMap<String, Vec<(String, &mut [SubField])>> = BTreeMap::new();
    for (parent, set) in sets {
        for f in set.iter_mut() {
            if f.children.is_empty() {
                continue;
            }
            let on = f.condition.as_deref().unwrap_or(parent.as_str());
            let Some(output) = sg.field(on, &f.name).map(|i| i.output.clone()) else {
                continue;
            };
            below
                .entry(f.key.clone())
                .or_default()
                .push((output, f.children.as_mut_slice()));
        }
    }
    for (_, sets) in below {
        alias_conflicts(sg, graph, sets, aliases);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use apollo_compiler::ast::Type;
    use std::time::Duration;

    fn supergraph(file: &str) -> Supergraph {
        Supergraph::parse(&crate::test_data::supergraph_text(file), file).expect("supergraph")
    }

    fn field(key: &str, name: &str) -> Field {
        Field {
            key: key.into(),
            name: name.into(),
            args: Vec::new(),
            ty: Type::NonNullNamed(apollo_compiler::Name::new("Int").expect("name")),
            condition: None,
            children: Vec::new(),
            is_enum: false,
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn mutation_fields_keep_document_order_and_only_adjacent_ones_share_a_fetch() {
        let sg = supergraph("mutations-supergraph.graphql");
        let fields = [
            field("a", "deposit"),
            field("b", "note"),
            field("c", "withdraw"),
            field("d", "deposit"),
            field("e", "note"),
        ];
        let planned = super::plan(&sg, "Mutation", "mutation", &fields, later()).expect("plan");
        let summary: Vec<(&str, Vec<&str>, Vec<usize>)> = planned
            .fetches
            .iter()
            .map(|f| {
                (
                    f.graph.as_str(),
                    f.selection.iter().map(|s| s.key.as_str()).collect(),
                    f.deps.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("LEDGER", vec!["a"], vec![]),
                ("AUDIT", vec!["b"], vec![0]),
                ("LEDGER", vec!["c", "d"], vec![0, 1]),
                ("AUDIT", vec!["e"], vec![0, 1, 2]),
            ]
        );
        // The same fields as a query: one fetch per subgraph, in parallel.
        let query = [
            field("x", "balance"),
            field("y", "notes"),
            field("z", "balance"),
        ];
        let planned = super::plan(&sg, "Query", "query", &query, later()).expect("plan");
        assert_eq!(planned.fetches.len(), 2);
        assert!(planned.fetches.iter().all(|f| f.deps.is_empty()));
    }

    /// (subgraph, selection text) of each fetch of the plan of `query`.
    /// The plan of `query`, validated and normalised as the gateway does.
    fn planned(sg: &Supergraph, query: &str) -> Plan {
        let document = apollo_compiler::ExecutableDocument::parse_and_validate(
            &sg.schema,
            query,
            "query.graphql",
        )
        .expect("valid query");
        let operation = crate::operation::operation(&document, None).expect("operation");
        let variables = serde_json::Map::new();
        let normaliser = crate::operation::Normaliser {
            schema: &sg.schema,
            document: &document,
            variables: &variables,
        };
        let mut fields = Vec::new();
        normaliser.fields(&operation.selection_set, "Query", None, &mut fields);
        super::plan(sg, "Query", "query", &fields, later()).expect("plan")
    }

    fn fetch_texts(sg: &Supergraph, query: &str) -> Vec<(String, String)> {
        planned(sg, query)
            .fetches
            .iter()
            .map(|f| {
                let mut text = String::new();
                selection_text(&f.selection, &mut text);
                (f.graph.clone(), text)
            })
            .collect()
    }

    #[test]
    fn fields_of_one_key_that_a_subgraph_types_differently_get_an_alias_there() {
        let sg = supergraph("type-mismatch-supergraph.graphql");
        let texts = |q: &str| fetch_texts(&sg, q);
        // ID! (User) and ID (Bot) in ACCOUNTS: the second gets an alias.
        // One level down, where both friends lists are merged into one set,
        // Bot's `id` comes first, so User's gets one; `friends` has one
        // type in both and keeps its key.
        assert_eq!(
            texts("{ accounts { ... on User { id friends { ... on Bot { id } } } ... on Bot { id friends { ... on User { id } ... on Bot { id } } } } }"),
            [(
                "ACCOUNTS".to_string(),
                "{accounts{__typename ... on User{id} ... on User{friends{__typename ... on Bot{id}}} ... on Bot{_rm_alias_0:id} ... on Bot{friends{__typename ... on User{_rm_alias_1:id} ... on Bot{id}}}}}".to_string()
            )]
        );
        // Types that agree need nothing, and a directory fetch is left alone.
        assert_eq!(
            texts("{ accounts { ... on User { friends { __typename } } ... on Bot { friends { __typename } } } users { id } }"),
            [
                ("ACCOUNTS".to_string(), "{accounts{__typename ... on User{friends{__typename}} ... on Bot{friends{__typename}}}}".to_string()),
                ("DIRECTORY".to_string(), "{users{id}}".to_string()),
            ]
        );
    }

    #[test]
    fn type_conditions_follow_the_type_relations_of_the_subgraph_asked() {
        // In SHOP, Kettle implements Node and Lamp does not (it is a Node
        // in WARRANTY only).
        let sg = supergraph("implements-per-graph-supergraph.graphql");
        let texts = |q: &str| fetch_texts(&sg, q);
        // `... on Node` below a union: asked as each member, so Lamps get
        // their id too.
        assert_eq!(
            texts("{ items { ... on Node { id } } }"),
            [(
                "SHOP".to_string(),
                "{items{__typename ... on Kettle{id} ... on Lamp{id}}}".to_string()
            )]
        );
        // `... on Lamp` below Node: SHOP returns no Lamp as a Node (and
        // would refuse the fragment), so it is not sent.
        assert_eq!(
            texts("{ nodes { ... on Lamp { id } ... on Kettle { volume } } }"),
            [(
                "SHOP".to_string(),
                "{nodes{__typename ... on Kettle{volume}}}".to_string()
            )]
        );
    }

    #[test]
    fn a_nested_key_field_the_parent_subgraph_lacks_is_fetched_for_the_nested_objects_first() {
        // LABELS resolves a Shelf by `items { id code }`; STORE returns the
        // shelf and its items' ids, CODES has `code` (by Item's `id`).
        let sg = supergraph("nested-key-supergraph.graphql");
        let planned = planned(&sg, "{ shelf { label } }");
        let summary: Vec<(String, String, Vec<usize>)> = planned
            .fetches
            .iter()
            .map(|f| {
                let mut text = String::new();
                selection_text(&f.selection, &mut text);
                (f.graph.clone(), text, f.deps.clone())
            })
            .collect();
        let at = |graph: &str| {
            summary
                .iter()
                .position(|(g, _, _)| g == graph)
                .expect(graph)
        };
        let (store, codes, labels) = (at("STORE"), at("CODES"), at("LABELS"));
        // STORE is asked only for what it has: never for `code`.
        assert_eq!(summary[store].1, "{shelf{items{id}}}", "{summary:?}");
        assert_eq!(summary[codes].1, "{code}", "{summary:?}");
        assert!(
            matches!(&planned.fetches[codes].kind, FetchKind::Entity { path, .. } if path == &["shelf".to_string(), "items".to_string()])
        );
        assert_eq!(summary[labels].1, "{label}", "{summary:?}");
        assert!(
            summary[labels].2.contains(&codes),
            "LABELS waits for the codes: {summary:?}"
        );
    }

    #[test]
    fn a_union_that_several_subgraphs_may_answer_is_asked_only_for_their_common_members() {
        let sg = supergraph("partial-union-supergraph.graphql");
        let texts = |q: &str| fetch_texts(&sg, q);
        // wrapper may come from A or B (Container has a key in both): only
        // Common is a member in both.
        assert_eq!(
            texts("{ rootA { wrapper { actions { ... on Common { label } ... on OnlyA { a } ... on OnlyB { b } } } } }"),
            [("A".to_string(), "{rootA{wrapper{actions{__typename ... on Common{label}}}}}".to_string())]
        );
        // A fragment on a member A does not have is no reason to ask B.
        assert_eq!(
            texts("{ rootA { wrapper { actions { __typename ... on OnlyB { b } } } } }"),
            [(
                "A".to_string(),
                "{rootA{wrapper{actions{__typename}}}}".to_string()
            )]
        );
        // Only B answers bWrapper: all of B's members are asked.
        let hop = texts(
            "{ rootA { bWrapper { actions { ... on Common { label } ... on OnlyB { b } } } } }",
        );
        assert_eq!(hop.len(), 2, "{hop:?}");
        assert_eq!(
            hop[1],
            (
                "B".to_string(),
                "{bWrapper{actions{__typename ... on Common{label} ... on OnlyB{b}}}}".to_string()
            )
        );
    }

    #[test]
    fn fields_only_a_parent_entity_reaches_are_fetched_through_the_parent() {
        let sg = supergraph("parent-hop-supergraph.graphql");
        // Category has no key in C, where details is: details comes from C
        // through the Product, and id stays with A, which returned it.
        let texts = fetch_texts(
            &sg,
            "{ products { id category { id details { products } } } }",
        );
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert_eq!(
            texts[0],
            (
                "A".to_string(),
                "{products{id category{id} pid}}".to_string()
            )
        );
        assert_eq!(
            texts[1],
            ("C".to_string(), "{category{details{products}}}".to_string())
        );
    }

    #[test]
    fn nested_fragments_of_a_field_set_keep_their_own_condition() {
        let set =
            FieldSet::parse("data { foo ... on Bar { bar ... on Baz { baz } } }").expect("set");
        let selection = fieldset_selection(&set);
        let data: Vec<(Option<&str>, &str)> = selection[0]
            .children
            .iter()
            .map(|f| (f.condition.as_deref(), f.name.as_str()))
            .collect();
        assert_eq!(
            data,
            [
                (None, "__typename"),
                (None, "foo"),
                (Some("Bar"), "bar"),
                (Some("Baz"), "baz")
            ]
        );
    }

    #[test]
    fn planning_past_its_deadline_is_refused() {
        let sg = supergraph("mutations-supergraph.graphql");
        let past = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(
            super::plan(&sg, "Query", "query", &[field("x", "balance")], past),
            Err(PlanError::Budget)
        );
    }

    #[test]
    fn a_field_no_plan_can_reach_is_a_planning_error_naming_it() {
        // The machinery of a two-subgraph supergraph, with a type that
        // only `AUDIT` knows fields of and that has no key there.
        let text = crate::test_data::supergraph_text("mutations-supergraph.graphql");
        let machinery = &text[..text.find("type Query").expect("Query")];
        let sdl = format!(
            "{machinery}type Account @join__type(graph: AUDIT) @join__type(graph: LEDGER) {{\n  id: ID!\n  flagged: Boolean @join__field(graph: AUDIT)\n}}\n\
             type Query @join__type(graph: AUDIT) @join__type(graph: LEDGER) {{\n  account: Account @join__field(graph: LEDGER)\n}}\n"
        )
        .replace("  mutation: Mutation\n", "");
        let sg = Supergraph::parse(&sdl, "unreachable.graphql").expect("supergraph");
        let account = Field {
            ty: Type::Named(apollo_compiler::Name::new("Account").expect("name")),
            children: vec![field("flagged", "flagged")],
            ..field("account", "account")
        };
        let error = super::plan(&sg, "Query", "query", &[account], later()).expect_err("no plan");
        assert_eq!(
            error.to_string(),
            "Account has no @key in AUDIT, so flagged cannot be fetched from there"
        );
    }

    #[test]
    fn a_chain_of_requires_waits_for_each_step() {
        let sg = supergraph("requires-supergraph.graphql");
        let products = Field {
            ty: Type::NonNullList(Box::new(Type::NonNullNamed(
                apollo_compiler::Name::new("Product").expect("name"),
            ))),
            children: vec![field("cost", "cost")],
            ..field("products", "products")
        };
        let planned = super::plan(&sg, "Query", "query", &[products], later()).expect("plan");
        let by_graph = |g: &str| planned.fetches.iter().find(|f| f.graph == g).expect(g);
        let (catalog, physics, shipping) = (
            by_graph("CATALOG"),
            by_graph("PHYSICS"),
            by_graph("SHIPPING"),
        );
        // catalog's root fetch asks for what physics needs: the key and size.
        let mut text = String::new();
        selection_text(&catalog.selection, &mut text);
        assert_eq!(text, "{products{id size}}");
        assert!(
            matches!(&physics.kind, FetchKind::Entity { requires, .. } if requires.0[0].0 == "size")
        );
        assert_eq!(physics.deps, [catalog.id]);
        assert!(
            shipping.deps.contains(&physics.id),
            "{}",
            planned.describe()
        );
    }
}
