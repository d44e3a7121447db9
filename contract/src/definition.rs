//! The task definition format (contract) and its strict parsing.
//!
//! Unknown fields are rejected everywhere (`deny_unknown_fields`), so a typo in
//! a definition is a 422 at registration instead of a setting that silently
//! does nothing. Every optional block has a documented default.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::tensor::{DType, Violation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::{escape, valid_digest, valid_name};

pub use crate::cache::CachePolicy;
pub use crate::cost::{CostMeasure, CostPolicy};
use crate::processing::{image, post, text, Post, TextTensors};
pub use crate::processing::{ImageDecode, ImageSpec, Layout, Padding, TextSpec};
pub use crate::scaling::{ScalingBounds, ScalingPolicy};

/// Current definition format version; `format` may be omitted and means this.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDefinition {
    #[serde(default = "default_format")]
    pub format: u32,
    pub name: String,
    /// `sha256:<hex>` of a model uploaded with `POST /v1/models`.
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// JSON field of the input object → model input tensor.
    pub inputs: BTreeMap<String, InputSpec>,
    /// JSON field of the output object → model output tensor.
    pub outputs: BTreeMap<String, OutputSpec>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaPolicy>,
    #[serde(default)]
    pub scaling: ScalingPolicy,
    #[serde(default)]
    pub resources: Resources,
    /// Dynamic batching of concurrent calls (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingPolicy>,
    /// The router's result cache (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CachePolicy>,
    /// What one call weighs (`crate::cost`); every call costs 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostPolicy>,
    /// This function's bounded-load spill policy (the router's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementPolicy>,
}

/// How far a function's calls may pile up on their owner node before they
/// spill to the next one on the ring (`policies::ring::Bounds`). A function
/// whose cold start is expensive sets a larger `epsilon` (or `floor`) to spill
/// less; a field left out is the router's (`--placement-epsilon`; floor 4).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementPolicy {
    /// 0..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// 0..=100000 calls in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<u64>,
}

/// The most `PlacementPolicy::epsilon` and `floor` may be.
pub const MAX_PLACEMENT_EPSILON: f64 = 100.0;
pub const MAX_PLACEMENT_FLOOR: u64 = 100_000;

/// Combine concurrent calls of one version into one run along the first dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingPolicy {
    /// Most rows (first-dimension entries) in one run, 2..=1024.
    pub max_batch_size: u32,
    /// Longest a call waits for others to join its batch, in microseconds (0..=1000000).
    #[serde(default)]
    pub max_delay_us: u64,
}

/// One JSON input field. Its kind is read from its keys (see [`InputSpec::kind`]):
/// `text` makes it a text input, `image` an image input, neither a tensor input.
/// Keys that do not belong to the kind are refused at registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The model input tensor this field fills (tensor and image inputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor: Option<String>,
    /// Element type; defaults to the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<DType>,
    /// Shape, `-1` for a dynamic dimension; defaults to the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<i64>>,
    /// Tokenize a string into `ids`, `attention_mask` and `type_ids`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSpec>,
    /// Decode a base64 PNG or JPEG into `tensor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// Text inputs: the token ids tensor (default `input_ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<String>,
    /// Text inputs: the attention mask tensor (default `attention_mask`, if the model has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_mask: Option<String>,
    /// Text inputs: the token type ids tensor (default `token_type_ids`, if the model has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_ids: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub tensor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<DType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub take: Option<Take>,
    // Post-processing, applied in this order before `take` (see `processing::post::check_against`).
    /// Mean over the sequence axis of `[batch, sequence, hidden]`, weighted by
    /// this attention mask tensor of a text input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_pool: Option<String>,
    /// Softmax along the last axis.
    #[serde(default, skip_serializing_if = "is_false")]
    pub softmax: bool,
    /// L2 normalisation along the last axis.
    #[serde(default, skip_serializing_if = "is_false")]
    pub normalize: bool,
    /// Index of the largest value along the last axis.
    #[serde(default, skip_serializing_if = "is_false")]
    pub argmax: bool,
    /// Class names for the indices (from `argmax`, or an integer tensor of class indices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How an output tensor becomes a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Take {
    /// Index 0 of the first (batch) dimension: `[1, 10]` → 10 numbers, `[1]` → a scalar.
    First,
    /// The whole tensor as nested arrays (the default).
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff_ms: 20,
            max_backoff_ms: 1000,
            multiplier: 2.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerPolicy {
    pub failure_rate: f64,
    pub minimum_calls: u32,
    pub window_s: u64,
    pub open_s: u64,
    pub half_open_calls: u32,
}

impl Default for CircuitBreakerPolicy {
    fn default() -> Self {
        CircuitBreakerPolicy {
            failure_rate: 0.5,
            minimum_calls: 20,
            window_s: 10,
            open_s: 5,
            half_open_calls: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    pub per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_month: Option<u64>,
    /// Concurrent invocations one client may have in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub gpu: bool,
}

fn default_format() -> u32 {
    FORMAT_VERSION
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// Why a definition document was refused; every variant becomes a 422 with details.
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionError {
    pub violations: Vec<Violation>,
}

impl DefinitionError {
    pub fn one(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        DefinitionError {
            violations: vec![Violation::new(pointer, message)],
        }
    }
}

/// Document syntax of a definition body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Json,
    Yaml,
}

impl Syntax {
    /// Picks the syntax from a `content-type` header (JSON unless it names YAML).
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        match content_type {
            Some(ct) if ct.contains("yaml") => Syntax::Yaml,
            _ => Syntax::Json,
        }
    }
}

/// Parses a definition strictly; errors carry the JSON pointer of the offending field.
pub fn parse(bytes: &[u8], syntax: Syntax) -> Result<TaskDefinition, DefinitionError> {
    let definition: TaskDefinition = deserialize(bytes, syntax)?;
    let violations = check_fields(&definition);
    if violations.is_empty() {
        Ok(definition)
    } else {
        Err(DefinitionError { violations })
    }
}

/// Deserializes a document strictly; an error carries the JSON pointer of
/// the offending field.
pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    syntax: Syntax,
) -> Result<T, DefinitionError> {
    let result = match syntax {
        Syntax::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let pointer = path_to_pointer(e.path());
                (pointer, e.into_inner().to_string())
            })
        }
        Syntax::Yaml => {
            let de = serde_yaml::Deserializer::from_slice(bytes);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let pointer = path_to_pointer(e.path());
                (pointer, e.into_inner().to_string())
            })
        }
    };
    result.map_err(|(pointer, message)| DefinitionError::one(pointer, message))
}

fn path_to_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push('/');
                pointer.push_str(&escape(key));
            }
            Segment::Unknown => {}
        }
    }
    pointer
}

/// What an input declaration is, read from which key it has.
#[derive(Debug, Clone, Copy)]
pub enum InputKind<'a> {
    /// `{"tensor", "dtype"?, "shape"?}`: JSON numbers into one tensor.
    Tensor,
    /// `{"text": {...}, "ids"?, "attention_mask"?, "type_ids"?}`.
    Text(&'a TextSpec),
    /// `{"image": {...}, "tensor"}`.
    Image(&'a ImageSpec),
}

impl InputSpec {
    /// The kind of this input: `text` or `image` when that key is present, else a tensor.
    pub fn kind(&self) -> InputKind<'_> {
        match (&self.text, &self.image) {
            (Some(text), _) => InputKind::Text(text),
            (None, Some(image)) => InputKind::Image(image),
            (None, None) => InputKind::Tensor,
        }
    }
}

impl InputSpec {
    /// The tensor names declared beside a `text`.
    pub fn text_tensors(&self) -> TextTensors<'_> {
        TextTensors {
            ids: self.ids.as_deref(),
            attention_mask: self.attention_mask.as_deref(),
            type_ids: self.type_ids.as_deref(),
        }
    }
}

impl OutputSpec {
    /// The declared post-processing.
    pub fn post(&self) -> Post<'_> {
        Post {
            mean_pool: self.mean_pool.as_deref(),
            softmax: self.softmax,
            normalize: self.normalize,
            argmax: self.argmax,
            labels: self.labels.as_deref(),
        }
    }

    /// Whether any post-processing is declared.
    pub fn has_post(&self) -> bool {
        self.post().any()
    }
}

/// Field checks of one input that need no model.
fn check_input(field: &str, spec: &InputSpec) -> Vec<Violation> {
    let p = format!("/inputs/{}", escape(field));
    let mut v = Vec::new();
    let not_here = |v: &mut Vec<Violation>, key: &str, present: bool, why: &str| {
        if present {
            v.push(Violation::new(format!("{p}/{key}"), why.to_string()));
        }
    };
    let text_keys = [
        ("ids", spec.ids.is_some()),
        ("attention_mask", spec.attention_mask.is_some()),
        ("type_ids", spec.type_ids.is_some()),
    ];
    match (&spec.text, &spec.image) {
        (Some(_), Some(_)) => v.push(Violation::new(
            p.clone(),
            "an input is a tensor, a text or an image: give \"text\" or \"image\", not both",
        )),
        (Some(text), None) => {
            let why = "a text input names its tensors with ids, attention_mask and type_ids";
            not_here(&mut v, "tensor", spec.tensor.is_some(), why);
            not_here(&mut v, "dtype", spec.dtype.is_some(), why);
            not_here(&mut v, "shape", spec.shape.is_some(), why);
            v.extend(text::check(&p, text, spec.text_tensors()));
        }
        (None, Some(image)) => {
            for (key, present) in text_keys {
                not_here(&mut v, key, present, "only a text input has this field");
            }
            let why = "an image input takes its tensor's type and shape from the model";
            not_here(&mut v, "dtype", spec.dtype.is_some(), why);
            not_here(&mut v, "shape", spec.shape.is_some(), why);
            if spec.tensor.is_none() {
                v.push(Violation::new(
                    format!("{p}/tensor"),
                    "an image input needs the name of the tensor it fills",
                ));
            }
            v.extend(image::check(&format!("{p}/image"), image));
        }
        (None, None) => {
            for (key, present) in text_keys {
                not_here(&mut v, key, present, "only a text input has this field");
            }
            if spec.tensor.is_none() {
                v.push(Violation::new(
                    format!("{p}/tensor"),
                    "required: the model input tensor this field fills (or declare \"text\" or \"image\")",
                ));
            }
        }
    }
    v
}

/// Field checks of one output that need no model.
fn check_output(field: &str, spec: &OutputSpec) -> Vec<Violation> {
    post::check(field, spec.post())
}

/// Field checks that need no model: names, ranges, shapes.
fn check_fields(d: &TaskDefinition) -> Vec<Violation> {
    let mut v = Vec::new();
    if d.format != FORMAT_VERSION {
        v.push(Violation::new(
            "/format",
            format!(
                "unsupported format {}; this registry reads format {FORMAT_VERSION}",
                d.format
            ),
        ));
    }
    if !valid_name(&d.name) {
        v.push(Violation::new(
            "/name",
            format!("invalid name {:?}: 1-64 characters, a lowercase letter first, then lowercase letters, digits, '-' or '_'", d.name),
        ));
    }
    if !valid_digest(&d.model) {
        v.push(Violation::new(
            "/model",
            format!(
                "invalid model digest {:?}: expected sha256:<64 lowercase hex digits>",
                d.model
            ),
        ));
    }
    if d.inputs.is_empty() {
        v.push(Violation::new("/inputs", "at least one input is required"));
    }
    if d.outputs.is_empty() {
        v.push(Violation::new(
            "/outputs",
            "at least one output is required",
        ));
    }
    for (field, spec) in &d.inputs {
        v.extend(check_input(field, spec));
    }
    for (field, spec) in &d.outputs {
        v.extend(check_output(field, spec));
    }
    for (field, spec) in &d.inputs {
        if let Some(shape) = &spec.shape {
            if shape.iter().any(|x| *x < -1) {
                v.push(Violation::new(
                    format!("/inputs/{field}/shape"),
                    format!("invalid shape {shape:?}: dimensions are -1 (dynamic) or >= 0"),
                ));
            }
        }
    }
    for (pointer, schema) in [
        ("/input_schema", &d.input_schema),
        ("/output_schema", &d.output_schema),
    ] {
        if let Some(schema) = schema {
            if !schema.is_object() && !schema.is_boolean() {
                v.push(Violation::new(
                    pointer,
                    "a JSON Schema must be an object or a boolean",
                ));
            }
        }
    }
    if d.timeout_ms == 0 || d.timeout_ms > 600_000 {
        v.push(Violation::new(
            "/timeout_ms",
            format!("{} is out of range 1..=600000", d.timeout_ms),
        ));
    }
    if d.max_body_bytes == Some(0)
        || d.max_body_bytes
            .is_some_and(|b| b > crate::limits::MAX_MODEL_BYTES)
    {
        v.push(Violation::new(
            "/max_body_bytes",
            "out of range 1..=536870912",
        ));
    }
    // Policy parameters are checked once, here, by the code that will enforce them.
    if d.retry.max_attempts == 0 || d.retry.max_attempts > 10 {
        v.push(Violation::new(
            "/retry/max_attempts",
            format!("{} is out of range 1..=10", d.retry.max_attempts),
        ));
    }
    if let Err(e) = policies::retry::Backoff::try_new(
        Duration::from_millis(d.retry.initial_backoff_ms),
        Duration::from_millis(d.retry.max_backoff_ms),
        d.retry.multiplier,
    ) {
        v.push(Violation::new("/retry", e.to_string()));
    }
    let cb = &d.circuit_breaker;
    if let Err(e) = policies::breaker::BreakerConfig::try_new(
        cb.failure_rate,
        cb.minimum_calls,
        Duration::from_secs(cb.window_s),
        Duration::from_secs(cb.open_s),
        cb.half_open_calls,
    ) {
        v.push(Violation::new("/circuit_breaker", e.to_string()));
    }
    if let Some(rl) = &d.rate_limit {
        v.extend(check_rate_limit(rl, "/rate_limit"));
    }
    if let Some(b) = &d.batching {
        if !(2..=1024).contains(&b.max_batch_size) || b.max_delay_us > 1_000_000 {
            v.push(Violation::new(
                "/batching",
                format!(
                    "max_batch_size {} must be in 2..=1024 and max_delay_us {} at most 1000000",
                    b.max_batch_size, b.max_delay_us
                ),
            ));
        }
        if d.inputs
            .values()
            .any(|i| i.shape.as_ref().is_some_and(|s| s.first() != Some(&-1)))
        {
            v.push(Violation::new(
                "/batching",
                "batching needs every declared input shape to start with a dynamic (-1) batch dimension",
            ));
        }
    }
    if let Some(q) = &d.quota {
        v.extend(check_quota(q, "/quota"));
    }
    if let Some(cost) = &d.cost {
        let has_text = d.inputs.values().any(|spec| spec.text.is_some());
        let has_image = d.inputs.values().any(|spec| spec.image.is_some());
        v.extend(crate::cost::check(cost, has_text, has_image, "/cost"));
    }
    if let Some(cache) = &d.cache {
        v.extend(crate::cache::check(cache, "/cache"));
    }
    if let Some(p) = &d.placement {
        if p.epsilon
            .is_some_and(|e| !(0.0..=MAX_PLACEMENT_EPSILON).contains(&e))
        {
            v.push(Violation::new(
                "/placement/epsilon",
                format!("must be 0 to {MAX_PLACEMENT_EPSILON}"),
            ));
        }
        if p.floor.is_some_and(|f| f > MAX_PLACEMENT_FLOOR) {
            v.push(Violation::new(
                "/placement/floor",
                format!("must be 0 to {MAX_PLACEMENT_FLOOR}"),
            ));
        }
    }
    let s = &d.scaling;
    if s.max_instances == 0 || s.min_instances > s.max_instances || s.concurrency == 0 {
        v.push(Violation::new(
            "/scaling",
            "max_instances >= 1, min_instances <= max_instances and concurrency >= 1 are required",
        ));
    }
    v
}

/// Checks a rate limit with the limiter's own rules.
pub fn check_rate_limit(rl: &RateLimitPolicy, pointer: &str) -> Option<Violation> {
    policies::ratelimit::RateLimitConfig::try_new(rl.per_second, rl.burst)
        .err()
        .map(|e| Violation::new(pointer, e.to_string()))
}

/// Checks a quota: every limit present is at least 1.
pub fn check_quota(q: &QuotaPolicy, pointer: &str) -> Option<Violation> {
    policies::quota::QuotaLimits::try_new(q.per_day, q.per_month, q.max_in_flight)
        .err()
        .map(|e| Violation::new(pointer, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn minimal() -> String {
        format!(
            r#"{{"name": "digits", "model": "{DIGEST}",
                "inputs": {{"pixels": {{"tensor": "float_input", "dtype": "float32", "shape": [1, 64]}}}},
                "outputs": {{"label": {{"tensor": "label", "take": "first"}}}}}}"#
        )
    }

    #[test]
    fn minimal_definition_gets_documented_defaults() {
        let d = parse(minimal().as_bytes(), Syntax::Json).unwrap();
        assert_eq!(d.timeout_ms, 30_000);
        assert_eq!(d.retry.max_attempts, 3);
        assert_eq!(d.scaling.max_instances, 4);
        assert_eq!(d.outputs["label"].take, Some(Take::First));
    }

    #[test]
    fn unknown_fields_are_refused_with_their_pointer() {
        let body = minimal().replace(r#""take": "first""#, r#""take": "first", "tak": 1"#);
        let err = parse(body.as_bytes(), Syntax::Json).unwrap_err();
        assert_eq!(err.violations[0].pointer, "/outputs/label/tak");
        assert!(
            err.violations[0].message.contains("unknown field `tak`"),
            "{err:?}"
        );
        let body = minimal().replacen('{', r#"{"scaling": {"max_instance": 2}, "#, 1);
        let err = parse(body.as_bytes(), Syntax::Json).unwrap_err();
        assert_eq!(err.violations[0].pointer, "/scaling/max_instance");
    }

    #[test]
    fn yaml_is_accepted() {
        let yaml = format!(
            "name: iris\nmodel: \"{DIGEST}\"\ninputs:\n  features: {{tensor: float_input, shape: [1, 4]}}\noutputs:\n  label: {{tensor: label}}\n"
        );
        let d = parse(yaml.as_bytes(), Syntax::Yaml).unwrap();
        assert_eq!(d.name, "iris");
        assert_eq!(d.inputs["features"].shape, Some(vec![1, 4]));
    }

    #[test]
    fn field_checks_name_every_problem() {
        let body = minimal()
            .replace("\"digits\"", "\"Digits!\"")
            .replace(DIGEST, "sha256:xyz")
            .replacen('{', r#"{"timeout_ms": 0, "#, 1);
        let err = parse(body.as_bytes(), Syntax::Json).unwrap_err();
        let pointers: Vec<&str> = err.violations.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(pointers, vec!["/name", "/model", "/timeout_ms"]);
    }

    #[test]
    fn a_placement_policy_is_bounded() {
        let with = |p: &str| minimal().replacen('{', &format!(r#"{{"placement": {p}, "#), 1);
        let d = parse(with(r#"{"epsilon": 2.5}"#).as_bytes(), Syntax::Json).unwrap();
        let placement = d.placement.unwrap();
        assert_eq!((placement.epsilon, placement.floor), (Some(2.5), None));
        let err = parse(
            with(r#"{"epsilon": -1, "floor": 1000001}"#).as_bytes(),
            Syntax::Json,
        )
        .unwrap_err();
        let pointers: Vec<&str> = err.violations.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(pointers, ["/placement/epsilon", "/placement/floor"]);
        let err = parse(with(r#"{"eps": 1}"#).as_bytes(), Syntax::Json).unwrap_err();
        assert_eq!(err.violations[0].pointer, "/placement/eps");
    }
}
