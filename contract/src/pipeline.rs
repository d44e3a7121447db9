//! Pipelines (contract: pipelines): a versioned graph of steps, each a call
//! of a function of the same tenant, wired together by references.
//!
//! A string `$.input…`, `$.steps.<id>…` or `$.item…` in a step's `input`,
//! `foreach` or the pipeline's `output` is a reference (a dotted path;
//! numeric segments index arrays); anything else is a literal. What this
//! module checks needs no I/O ([`check`]): references name the input, known
//! steps or (in a `foreach` step only) the item; no cycle; limits. That every
//! function exists in the tenant is the registry's check, and running the
//! graph is the router's (`router::pipelines`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::{DefinitionError, Syntax};
use crate::names::valid_name;
use crate::tensor::Violation;
use crate::{ApiError, ErrorCode};

/// Most steps in a pipeline.
pub const MAX_STEPS: usize = 32;
/// Most elements a `foreach` runs over.
pub const MAX_FOREACH_ITEMS: usize = 1024;
/// A `foreach` step's parallelism unless it says otherwise, and the most it may ask.
pub const DEFAULT_MAX_PARALLEL: u32 = 8;
pub const MAX_PARALLEL: u32 = 64;
/// The longest a pipeline may run.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Deepest nesting of a step's input template.
const MAX_TEMPLATE_DEPTH: usize = 16;

/// A pipeline document, as registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema the pipeline's input must satisfy (422 with pointers otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<Value>,
    pub steps: Vec<Step>,
    /// The answer, built from references (the whole input or steps' outputs).
    #[schema(value_type = Object)]
    pub output: Value,
    /// One deadline for the whole pipeline; each step gets what is left.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// One step: a call of `function` with an input built from references.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub id: String,
    pub function: String,
    /// Pin a version (default: the function's default, as a direct call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[schema(value_type = Object)]
    pub input: Value,
    /// A reference to an array: the step runs once per element (`$.item`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreach: Option<String>,
    /// How many of a `foreach` step's calls run at once (default 8, at most 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// Stops the pipeline with 422 `refused` when the output matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
}

/// `{"refuse_if": {"<output field>": <value or list of values>}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    #[schema(value_type = Object)]
    pub refuse_if: BTreeMap<String, Value>,
}

impl Guard {
    /// The first field of `output` that matches, with its value.
    pub fn refuses<'o>(&self, output: &'o Value) -> Option<(&str, &'o Value)> {
        self.refuse_if.iter().find_map(|(field, refused)| {
            let value = output.get(field)?;
            let hit = match refused {
                Value::Array(list) => list.contains(value),
                one => one == value,
            };
            hit.then_some((field.as_str(), value))
        })
    }
}

impl Step {
    pub fn max_parallel(&self) -> usize {
        self.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL) as usize
    }
}

/// A stored version of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineVersion {
    pub tenant: String,
    pub name: String,
    pub version: u32,
    pub created_at_ms: u64,
    pub definition: PipelineDefinition,
    /// The compiled `input_schema`, built on first use in this process.
    #[serde(skip)]
    pub schemas: crate::schema::CompiledSchemas,
}

impl PipelineVersion {
    /// The compiled `input_schema`, if the pipeline has one.
    pub fn input_validator(&self) -> Result<Option<Arc<jsonschema::Validator>>, ApiError> {
        self.schemas.input(self.definition.input_schema.as_ref())
    }
}

/// Where a reference starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    Input,
    Step(String),
    Item,
}

/// A parsed reference: its root and the path below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub root: Root,
    pub path: Vec<String>,
}

impl Reference {
    /// Parses `$.input.a.0`, `$.steps.id.field`, `$.item`; `None` when the
    /// string is not a reference (a literal). A string that starts with `$.`
    /// but names no root is an error.
    pub fn parse(text: &str) -> Option<Result<Reference, String>> {
        let rest = text.strip_prefix("$.")?;
        let mut parts = rest.split('.');
        let root = match parts.next() {
            Some("input") => Root::Input,
            Some("item") => Root::Item,
            Some("steps") => match parts.next() {
                Some(id) if !id.is_empty() => Root::Step(id.to_string()),
                _ => return Some(Err(format!("{text:?}: `$.steps.` must name a step"))),
            },
            _ => {
                return Some(Err(format!(
                    "{text:?}: a reference starts with $.input, $.steps.<id> or $.item"
                )))
            }
        };
        let path: Vec<String> = parts.map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Some(Err(format!("{text:?}: empty path segment")));
        }
        Some(Ok(Reference { root, path }))
    }

    /// The value below `base` along the path (a numeric segment indexes an array).
    pub fn walk<'v>(&self, base: &'v Value) -> Option<&'v Value> {
        self.path.iter().try_fold(base, |v, seg| match v {
            Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            Value::Object(map) => map.get(seg),
            _ => None,
        })
    }
}

/// Every reference string in a template, with its JSON pointer below `at`.
fn references(template: &Value, at: &str, depth: usize, out: &mut Vec<(String, String)>) {
    if depth > MAX_TEMPLATE_DEPTH {
        return;
    }
    match template {
        Value::String(s) if s.starts_with("$.") => out.push((at.to_string(), s.clone())),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                references(v, &format!("{at}/{i}"), depth + 1, out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let key = crate::names::escape(k);
                references(v, &format!("{at}/{key}"), depth + 1, out);
            }
        }
        _ => {}
    }
}

fn depth_of(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

/// Parses a pipeline document strictly (pointers on every refusal) and checks it.
pub fn parse(bytes: &[u8], syntax: Syntax) -> Result<PipelineDefinition, DefinitionError> {
    let definition: PipelineDefinition = crate::definition::deserialize(bytes, syntax)?;
    let violations = check(&definition);
    if violations.is_empty() {
        Ok(definition)
    } else {
        Err(DefinitionError { violations })
    }
}

/// The steps each step waits for (from its `input` and `foreach`).
pub fn dependencies(step: &Step) -> BTreeSet<String> {
    let mut refs = Vec::new();
    references(&step.input, "", 0, &mut refs);
    if let Some(f) = &step.foreach {
        refs.push((String::new(), f.clone()));
    }
    refs.iter()
        .filter_map(|(_, r)| match Reference::parse(r) {
            Some(Ok(Reference {
                root: Root::Step(id),
                ..
            })) => Some(id),
            _ => None,
        })
        .collect()
}

/// What each step waits for: the steps it references, and every guard step
/// listed before it (a guard runs in front of the steps after it, whether
/// they use its output or not).
pub fn waits(d: &PipelineDefinition) -> Vec<BTreeSet<String>> {
    let mut guards: Vec<String> = Vec::new();
    d.steps
        .iter()
        .map(|step| {
            let mut deps = dependencies(step);
            deps.extend(guards.iter().cloned());
            if step.guard.is_some() {
                guards.push(step.id.clone());
            }
            deps
        })
        .collect()
}

/// What can be checked without the registry: names, limits, references, cycles.
pub fn check(d: &PipelineDefinition) -> Vec<Violation> {
    let mut out = Vec::new();
    if !valid_name(&d.name) {
        out.push(Violation::new(
            "/name",
            "a lowercase letter, then up to 63 of a-z 0-9 - _",
        ));
    }
    if d.timeout_ms == 0 || d.timeout_ms > MAX_TIMEOUT_MS {
        out.push(Violation::new(
            "/timeout_ms",
            format!("must be 1..={MAX_TIMEOUT_MS}"),
        ));
    }
    if let Some(schema) = &d.input_schema {
        if let Err(v) = crate::schema::compile(schema, "/input_schema") {
            out.push(v);
        }
    }
    if d.steps.is_empty() || d.steps.len() > MAX_STEPS {
        out.push(Violation::new(
            "/steps",
            format!("a pipeline has 1 to {MAX_STEPS} steps"),
        ));
    }
    let mut ids = HashMap::new();
    for (i, step) in d.steps.iter().enumerate() {
        let at = format!("/steps/{i}");
        if !valid_name(&step.id) {
            out.push(Violation::new(
                format!("{at}/id"),
                "a lowercase letter, then up to 63 of a-z 0-9 - _",
            ));
        } else if ids.insert(step.id.clone(), i).is_some() {
            out.push(Violation::new(
                format!("{at}/id"),
                format!("step id {:?} is used twice", step.id),
            ));
        }
        if !valid_name(&step.function) {
            out.push(Violation::new(
                format!("{at}/function"),
                "must be a function name",
            ));
        }
        if depth_of(&step.input) > MAX_TEMPLATE_DEPTH {
            out.push(Violation::new(
                format!("{at}/input"),
                format!("nested deeper than {MAX_TEMPLATE_DEPTH}"),
            ));
        }
        if let Some(n) = step.max_parallel {
            if n == 0 || n > MAX_PARALLEL {
                out.push(Violation::new(
                    format!("{at}/max_parallel"),
                    format!("must be 1..={MAX_PARALLEL}"),
                ));
            }
            if step.foreach.is_none() {
                out.push(Violation::new(
                    format!("{at}/max_parallel"),
                    "only a foreach step runs in parallel",
                ));
            }
        }
        if let Some(guard) = &step.guard {
            if guard.refuse_if.is_empty() {
                out.push(Violation::new(
                    format!("{at}/guard/refuse_if"),
                    "names at least one output field",
                ));
            }
            if step.foreach.is_some() {
                out.push(Violation::new(
                    format!("{at}/guard"),
                    "a foreach step cannot be a guard (its output is a list)",
                ));
            }
        }
    }
    for (i, step) in d.steps.iter().enumerate() {
        let at = format!("/steps/{i}");
        let mut refs = Vec::new();
        references(&step.input, &format!("{at}/input"), 0, &mut refs);
        for (pointer, text) in &refs {
            check_reference(text, pointer, &ids, step.foreach.is_some(), &mut out);
        }
        if let Some(f) = &step.foreach {
            let pointer = format!("{at}/foreach");
            match Reference::parse(f) {
                Some(Ok(r)) if r.root == Root::Item => out.push(Violation::new(
                    pointer,
                    "foreach must reference the input or a step's output",
                )),
                Some(Ok(_)) => check_reference(f, &pointer, &ids, false, &mut out),
                Some(Err(e)) => out.push(Violation::new(pointer, e)),
                None => out.push(Violation::new(
                    pointer,
                    "foreach must be a reference to an array ($.input… or $.steps.<id>…)",
                )),
            }
        }
    }
    let mut refs = Vec::new();
    references(&d.output, "/output", 0, &mut refs);
    for (pointer, text) in &refs {
        check_reference(text, pointer, &ids, false, &mut out);
    }
    if out.is_empty() {
        if let Some(i) = cycle(d) {
            out.push(Violation::new(
                format!("/steps/{i}"),
                format!("step {:?} is part of a cycle", d.steps[i].id),
            ));
        }
    }
    out
}

fn check_reference(
    text: &str,
    pointer: &str,
    ids: &HashMap<String, usize>,
    item_allowed: bool,
    out: &mut Vec<Violation>,
) {
    match Reference::parse(text) {
        None => {}
        Some(Err(e)) => out.push(Violation::new(pointer, e)),
        Some(Ok(r)) => match r.root {
            Root::Step(id) if !ids.contains_key(&id) => {
                out.push(Violation::new(pointer, format!("no step {id:?}")))
            }
            Root::Item if !item_allowed => out.push(Violation::new(
                pointer,
                "$.item is only defined in a foreach step's input",
            )),
            _ => {}
        },
    }
}

/// A step on a cycle, if any (Kahn's algorithm: what never becomes ready).
fn cycle(d: &PipelineDefinition) -> Option<usize> {
    let deps = waits(d);
    let mut done: BTreeSet<String> = BTreeSet::new();
    loop {
        let ready: Vec<usize> = (0..d.steps.len())
            .filter(|&i| !done.contains(&d.steps[i].id) && deps[i].is_subset(&done))
            .collect();
        if ready.is_empty() {
            break;
        }
        for i in ready {
            done.insert(d.steps[i].id.clone());
        }
    }
    (0..d.steps.len()).find(|&i| !done.contains(&d.steps[i].id))
}

/// What references resolve against while a pipeline runs.
pub struct Scope<'a> {
    pub input: &'a Value,
    pub steps: &'a HashMap<String, Arc<Value>>,
    pub item: Option<&'a Value>,
}

/// A reference that found nothing: its text, and whether it points into the
/// caller's input (the caller's fault) or a step's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Missing {
    pub reference: String,
    pub in_input: bool,
}

impl Missing {
    pub fn error(&self) -> ApiError {
        let message = format!("the reference {} finds nothing", self.reference);
        let code = if self.in_input {
            ErrorCode::InvalidInput
        } else {
            ErrorCode::InvalidOutput
        };
        ApiError::new(code, message)
    }
}

/// Builds a value from a template: every reference replaced by what it names.
pub fn render(template: &Value, scope: &Scope<'_>) -> Result<Value, Missing> {
    Ok(match template {
        Value::String(s) => match Reference::parse(s) {
            Some(Ok(r)) => {
                let missing = || Missing {
                    reference: s.clone(),
                    in_input: r.root == Root::Input,
                };
                let base = match &r.root {
                    Root::Input => Some(scope.input),
                    Root::Item => scope.item,
                    Root::Step(id) => scope.steps.get(id).map(|v| v.as_ref()),
                };
                base.and_then(|b| r.walk(b)).ok_or_else(missing)?.clone()
            }
            _ => template.clone(),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render(v, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, scope)?)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pipeline(steps: Value, output: Value) -> Result<PipelineDefinition, Vec<(String, String)>> {
        let doc = json!({"name": "p", "steps": steps, "output": output});
        parse(doc.to_string().as_bytes(), Syntax::Json).map_err(|e| {
            e.violations
                .into_iter()
                .map(|v| (v.pointer, v.message))
                .collect()
        })
    }

    fn pointers(r: Result<PipelineDefinition, Vec<(String, String)>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn references_parse_and_walk() {
        let r = Reference::parse("$.steps.a.items.1.x").unwrap().unwrap();
        assert_eq!(r.root, Root::Step("a".into()));
        let v = json!({"items": [{"x": 1}, {"x": 2}]});
        assert_eq!(r.walk(&v), Some(&json!(2)));
        assert!(Reference::parse("plain").is_none());
        assert!(Reference::parse("$.nothing").unwrap().is_err());
        assert!(Reference::parse("$.input..a").unwrap().is_err());
        assert_eq!(
            Reference::parse("$.input").unwrap().unwrap().walk(&v),
            Some(&v)
        );
    }

    #[test]
    fn a_valid_graph_passes_and_knows_its_dependencies() {
        let d = pipeline(
            json!([
                {"id": "a", "function": "f", "input": {"x": "$.input.x"}},
                {"id": "b", "function": "g", "input": {"y": "$.steps.a.y", "k": 3}},
                {"id": "c", "function": "g", "foreach": "$.steps.a.list", "input": {"y": "$.item"}}
            ]),
            json!({"b": "$.steps.b", "c": "$.steps.c"}),
        )
        .unwrap();
        assert!(dependencies(&d.steps[0]).is_empty());
        assert_eq!(dependencies(&d.steps[2]), BTreeSet::from(["a".to_string()]));
        // A guard step holds back every step listed after it.
        let guarded = pipeline(
            json!([
                {"id": "check", "function": "f", "input": {}, "guard": {"refuse_if": {"ok": false}}},
                {"id": "main", "function": "g", "input": {"x": "$.input.x"}}
            ]),
            json!({"m": "$.steps.main"}),
        )
        .unwrap();
        assert_eq!(waits(&guarded)[1], BTreeSet::from(["check".to_string()]));
    }

    #[test]
    fn refusals_point_at_the_offending_place() {
        let unknown = pipeline(
            json!([{"id": "a", "function": "f", "input": {"x": "$.steps.zz.y"}}]),
            json!({}),
        );
        assert_eq!(pointers(unknown), ["/steps/0/input/x"]);
        let cycle = pipeline(
            json!([
                {"id": "a", "function": "f", "input": {"x": "$.steps.b"}},
                {"id": "b", "function": "f", "input": {"x": "$.steps.a"}}
            ]),
            json!({}),
        );
        assert_eq!(pointers(cycle), ["/steps/0"]);
        let bad_foreach = pipeline(
            json!([{"id": "a", "function": "f", "foreach": "not a ref", "input": {}}]),
            json!({}),
        );
        assert_eq!(pointers(bad_foreach), ["/steps/0/foreach"]);
        let stray_item = pipeline(
            json!([{"id": "a", "function": "f", "input": {"x": "$.item"}}]),
            json!({"o": "$.item"}),
        );
        assert_eq!(pointers(stray_item), ["/steps/0/input/x", "/output/o"]);
        let twice = pipeline(
            json!([
                {"id": "a", "function": "f", "input": {}},
                {"id": "a", "function": "f", "input": {}}
            ]),
            json!({}),
        );
        assert_eq!(pointers(twice), ["/steps/1/id"]);
        let unknown_field = pipeline(
            json!([{"id": "a", "function": "f", "input": {}, "oops": 1}]),
            json!({}),
        );
        assert!(unknown_field.unwrap_err()[0].1.contains("oops"));
    }

    #[test]
    fn templates_render_and_a_missing_reference_says_where() {
        let input = json!({"text": "hi", "list": [1, 2]});
        let mut steps = HashMap::new();
        steps.insert("a".to_string(), Arc::new(json!({"label": "cat"})));
        let scope = Scope {
            input: &input,
            steps: &steps,
            item: Some(&json!(7)),
        };
        let out = render(
            &json!({"t": "$.input.text", "l": "$.steps.a.label", "i": ["$.item", "lit"], "n": 1}),
            &scope,
        )
        .unwrap();
        assert_eq!(out, json!({"t": "hi", "l": "cat", "i": [7, "lit"], "n": 1}));
        let missing = render(&json!("$.input.nope"), &scope).unwrap_err();
        assert!(missing.in_input);
        assert_eq!(missing.error().code, ErrorCode::InvalidInput);
        assert!(
            !render(&json!("$.steps.a.nope"), &scope)
                .unwrap_err()
                .in_input
        );
    }

    #[test]
    fn guards_match_a_value_or_any_of_a_list() {
        let guard = Guard {
            refuse_if: BTreeMap::from([("lang".to_string(), json!(["de", "fr"]))]),
        };
        assert_eq!(
            guard.refuses(&json!({"lang": "fr"})),
            Some(("lang", &json!("fr")))
        );
        assert_eq!(guard.refuses(&json!({"lang": "en"})), None);
        let one = Guard {
            refuse_if: BTreeMap::from([("label".to_string(), json!(3))]),
        };
        assert!(one.refuses(&json!({"label": 3})).is_some());
        assert!(one.refuses(&json!({})).is_none());
    }
}
