//! The registry service: registration, resolution and listing over a [`Store`]
//! (pipelines: [`pipelines`]).

pub mod pipelines;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use contract::definition::{
    self, DefinitionError, InputKind, ScalingBounds, Syntax, TaskDefinition,
};
use contract::names::escape;
use contract::ports::{Catalog, ModelInspector};
use contract::tensor::Violation;
use contract::version::{bind, FunctionVersion, ModelSignature};
use contract::{ApiError, ErrorCode, Qualifier};
use serde_json::json;

use crate::aliases::{self, AliasRecord, ALIAS_TTL};
use crate::cache::{MissBudget, ReadCache};
use crate::models::ModelStore;
use crate::store::{now_ms, store_error, FunctionSummary, Store};

type VersionKey = (String, String, u32);

/// How long a process trusts the latest version it read: a registration
/// made through another process is served everywhere within this time (the
/// process that registers it serves it at once).
pub const LATEST_TTL: std::time::Duration = std::time::Duration::from_millis(500);

/// (tenant, function) and (tenant, function, alias) entries kept per cache,
/// found or absent; a full cache drops its stale entries, then everything.
const MAX_CACHED_NAMES: usize = 65_536;

/// Store reads per second for names no cache knows: a flood of invented
/// names costs at most this; past it they get 503 `unavailable` with
/// `retry-after: 1` without a read (never a wrong version).
const MAX_UNKNOWN_NAME_READS_PER_S: u32 = 500;

/// Model signatures kept in memory; the map is cleared when it grows past this.
const MAX_CACHED_SIGNATURES: usize = 1024;

/// Registration and lookup of function versions.
///
/// Versions are immutable, so resolved versions are cached forever in memory;
/// "latest" is read from the store, whose reads are microseconds.
pub struct Registry {
    store: Arc<dyn Store>,
    models: ModelStore,
    /// Content-addressed artifacts (tokenizer.json files), beside the models.
    artifacts: ModelStore,
    inspector: Arc<dyn ModelInspector>,
    cache: RwLock<HashMap<VersionKey, Arc<FunctionVersion>>>,
    /// Latest version per (tenant, function) and when it was read.
    latest: ReadCache<(String, String), Option<u32>>,
    /// Serialises registrations so the model check and the append see one order.
    register_lock: tokio::sync::Mutex<()>,
    /// Signatures of models loaded by this process, so that an upload followed
    /// by a registration loads a model once (models are immutable by digest).
    signatures: RwLock<HashMap<String, ModelSignature>>,
    /// Called with each newly registered version (the node warms `min_instances`).
    listeners: RwLock<Vec<RegisterListener>>,
    /// Aliases (and their absence) per (tenant, function, alias), and when read.
    aliases: ReadCache<AliasKey, Option<Arc<AliasRecord>>>,
    /// Store reads for names no cache knows (invented names cost at most this).
    unknown_reads: MissBudget,
    /// The most a function may ask for in `scaling`.
    scaling_bounds: ScalingBounds,
    /// Pipelines read or registered by this process.
    pipelines: pipelines::PipelineCache,
}

type AliasKey = (String, String, String);

/// A callback run after each registration.
pub type RegisterListener = Box<dyn Fn(&Arc<FunctionVersion>) + Send + Sync>;

impl Registry {
    pub fn new(
        store: Arc<dyn Store>,
        models: ModelStore,
        inspector: Arc<dyn ModelInspector>,
    ) -> Self {
        Registry {
            store,
            artifacts: models.artifacts(),
            models,
            inspector,
            cache: RwLock::new(HashMap::new()),
            latest: ReadCache::new(LATEST_TTL, MAX_CACHED_NAMES),
            register_lock: tokio::sync::Mutex::new(()),
            signatures: RwLock::new(HashMap::new()),
            listeners: RwLock::new(Vec::new()),
            aliases: ReadCache::new(ALIAS_TTL, MAX_CACHED_NAMES),
            unknown_reads: MissBudget::new(MAX_UNKNOWN_NAME_READS_PER_S),
            scaling_bounds: ScalingBounds::default(),
            pipelines: Default::default(),
        }
    }

    /// Bounds every tenant's `scaling` by `bounds` (the default is
    /// [`ScalingBounds::default`]).
    pub fn with_scaling_bounds(mut self, bounds: ScalingBounds) -> Self {
        self.scaling_bounds = bounds;
        self
    }

    /// The store behind this registry.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Registers a callback for each new version.
    pub fn on_register(&self, listener: RegisterListener) {
        self.listeners
            .write()
            .expect("listeners lock")
            .push(listener);
    }

    pub fn models(&self) -> &ModelStore {
        &self.models
    }

    pub fn artifacts(&self) -> &ModelStore {
        &self.artifacts
    }

    /// Stores an artifact (any bytes, for example a tokenizer.json) by its digest.
    /// What it must be is checked when a definition refers to it.
    pub async fn upload_artifact(&self, bytes: &[u8]) -> Result<String, ApiError> {
        if bytes.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                "the artifact body is empty",
            ));
        }
        let hex = self
            .artifacts
            .put(bytes)
            .await
            .map_err(|e| internal(format!("writing artifact failed: {e}")))?;
        Ok(format!("sha256:{hex}"))
    }

    /// Checks that every text input's tokenizer was uploaded and loads as declared.
    async fn check_tokenizers(&self, definition: &TaskDefinition) -> Result<(), ApiError> {
        let mut violations = Vec::new();
        for (field, spec) in &definition.inputs {
            let InputKind::Text(text) = spec.kind() else {
                continue;
            };
            let pointer = format!("/inputs/{}/text/tokenizer", escape(field));
            let hex = text.tokenizer.trim_start_matches("sha256:");
            let stored = self
                .artifacts
                .stat(hex)
                .await
                .map_err(|e| internal(format!("looking up artifact failed: {e}")))?;
            if stored.is_none() {
                violations.push(Violation::new(
                    pointer,
                    format!(
                        "tokenizer {} has not been uploaded (POST /v1/artifacts)",
                        text.tokenizer
                    ),
                ));
                continue;
            }
            let bytes = self
                .artifacts
                .get(hex)
                .await
                .map_err(|e| internal(format!("reading artifact failed: {e}")))?;
            let text = text.clone();
            let inspector = self.inspector.clone();
            let loaded =
                tokio::task::spawn_blocking(move || inspector.check_tokenizer(&bytes, &text))
                    .await
                    .unwrap_or_else(|e| Err(format!("the tokenizer check failed: {e}")));
            if let Err(reason) = loaded {
                violations.push(Violation::new(pointer, reason));
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(definition_error(DefinitionError { violations }))
        }
    }

    /// Uploads model bytes after checking that ONNX Runtime can load them.
    pub async fn upload_model(&self, bytes: &[u8]) -> Result<String, ApiError> {
        if bytes.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                "the model body is empty",
            ));
        }
        // Uploaded models are untrusted: one that names a file on the host as
        // external data is refused before anything loads it.
        contract::onnx::check_self_contained(bytes).map_err(|reason| {
            ApiError::new(
                ErrorCode::InvalidInput,
                format!("not an acceptable ONNX model: {reason}"),
            )
        })?;
        let hex = crate::models::sha256_hex(bytes);
        let signature = match self.signature_of(&hex) {
            Some(known) => known,
            None => {
                let inspector = self.inspector.clone();
                let owned = bytes.to_vec();
                let checked = tokio::task::spawn_blocking(move || inspector.inspect(&owned))
                    .await
                    .map_err(|e| internal(format!("model check task failed: {e}")))?;
                checked.map_err(|reason| {
                    ApiError::new(
                        ErrorCode::InvalidInput,
                        format!("not a loadable ONNX model: {reason}"),
                    )
                })?
            }
        };
        // A no-op when the model is already stored (locally and in the remote).
        let hex = self
            .models
            .put(bytes)
            .await
            .map_err(|e| internal(format!("writing model failed: {e}")))?;
        self.remember_signature(&hex, signature);
        Ok(format!("sha256:{hex}"))
    }

    /// The signature of a model this process has already loaded, by hex digest.
    fn signature_of(&self, hex: &str) -> Option<ModelSignature> {
        self.signatures
            .read()
            .expect("signatures lock")
            .get(hex)
            .cloned()
    }

    fn remember_signature(&self, hex: &str, signature: ModelSignature) {
        let mut signatures = self.signatures.write().expect("signatures lock");
        if signatures.len() >= MAX_CACHED_SIGNATURES {
            signatures.clear();
        }
        signatures.insert(hex.to_string(), signature);
    }

    /// Parses, checks and stores a definition as the next version of its function.
    pub async fn register(
        &self,
        tenant: &str,
        body: &[u8],
        syntax: Syntax,
    ) -> Result<Arc<FunctionVersion>, ApiError> {
        let definition = definition::parse(body, syntax).map_err(definition_error)?;
        let over = self.scaling_bounds.check(&definition.scaling);
        if !over.is_empty() {
            return Err(definition_error(DefinitionError { violations: over }));
        }
        let hex = definition.model.trim_start_matches("sha256:").to_string();
        let model_size_bytes = self
            .models
            .stat(&hex)
            .await
            .map_err(|e| internal(format!("looking up model failed: {e}")))?
            .ok_or_else(|| {
                definition_error(DefinitionError::one(
                    "/model",
                    format!(
                        "model {} has not been uploaded (POST /v1/models)",
                        definition.model
                    ),
                ))
            })?;
        let signature = match self.signature_of(&hex) {
            Some(known) => known,
            None => {
                let bytes = self
                    .models
                    .get(&hex)
                    .await
                    .map_err(|e| internal(format!("reading model failed: {e}")))?;
                let inspector = self.inspector.clone();
                let signature = tokio::task::spawn_blocking(move || inspector.inspect(&bytes))
                    .await
                    .map_err(|e| internal(format!("model check task failed: {e}")))?
                    .map_err(|reason| {
                        definition_error(DefinitionError::one(
                            "/model",
                            format!("model does not load: {reason}"),
                        ))
                    })?;
                self.remember_signature(&hex, signature.clone());
                signature
            }
        };
        let (inputs, outputs) = bind(&definition, &signature)
            .map_err(|violations| definition_error(DefinitionError { violations }))?;
        self.check_tokenizers(&definition).await?;
        let schema_violations: Vec<_> = [
            ("/input_schema", &definition.input_schema),
            ("/output_schema", &definition.output_schema),
        ]
        .into_iter()
        .filter_map(|(pointer, schema)| {
            schema
                .as_ref()
                .and_then(|s| contract::schema::compile(s, pointer).err())
        })
        .collect();
        if !schema_violations.is_empty() {
            return Err(definition_error(DefinitionError {
                violations: schema_violations,
            }));
        }
        let record = FunctionVersion {
            tenant: tenant.to_string(),
            name: definition.name.clone(),
            version: 0,
            created_at_ms: now_ms(),
            definition,
            signature,
            inputs,
            outputs,
            model_size_bytes,
            schemas: Default::default(),
        };
        let _guard = self.register_lock.lock().await;
        let stored = Arc::new(
            self.store
                .append_version(record)
                .await
                .map_err(store_error)?,
        );
        self.remember(stored.clone());
        self.latest.insert(
            (stored.tenant.clone(), stored.name.clone()),
            Some(stored.version),
        );
        for listener in self.listeners.read().expect("listeners lock").iter() {
            listener(&stored);
        }
        tracing::info!(tenant, function = %stored.name, version = stored.version, "registered function version");
        Ok(stored)
    }

    /// Resolves a function and qualifier to a version, or 404. An alias
    /// picks with an empty routing key; calls use [`Registry::resolve_routed`].
    pub async fn resolve(
        &self,
        tenant: &str,
        name: &str,
        qualifier: &Qualifier,
    ) -> Result<Arc<FunctionVersion>, ApiError> {
        self.resolve_routed(tenant, name, qualifier, "")
            .await
            .map(|(version, _)| version)
    }

    /// Resolves a call: an alias (named, or `live` for the default) picks its
    /// version by hashing `routing_key` with the alias name
    /// (`policies::split`). Returns the version and the alias used, if any.
    pub async fn resolve_routed(
        &self,
        tenant: &str,
        name: &str,
        qualifier: &Qualifier,
        routing_key: &str,
    ) -> Result<(Arc<FunctionVersion>, Option<String>), ApiError> {
        // A name that could never be registered is not looked up anywhere.
        if !contract::names::valid_name(name) {
            return Err(ApiError::not_found(
                "function not found (not a valid function name)",
            ));
        }
        let (version, alias) = match qualifier {
            Qualifier::Version(v) => (*v, None),
            Qualifier::Alias(alias) => match self.alias(tenant, name, alias).await? {
                Some(record) => (pick(&record, routing_key)?, Some(alias.clone())),
                None => {
                    return Err(ApiError::not_found(format!(
                        "function {name:?} has no alias {alias:?}"
                    )))
                }
            },
            Qualifier::Default => match self.alias(tenant, name, aliases::LIVE).await? {
                Some(record) => (pick(&record, routing_key)?, Some(aliases::LIVE.to_string())),
                None => (self.latest(tenant, name).await?, None),
            },
        };
        let found = self.get(tenant, name, version).await?.ok_or_else(|| {
            ApiError::not_found(format!("function {name:?} has no version {version}"))
        })?;
        Ok((found, alias))
    }

    /// An alias, read from the store at most once per [`ALIAS_TTL`]; while
    /// the store is unreachable the last value read keeps serving.
    pub async fn alias(
        &self,
        tenant: &str,
        function: &str,
        alias: &str,
    ) -> Result<Option<Arc<AliasRecord>>, ApiError> {
        let key = (tenant.to_string(), function.to_string(), alias.to_string());
        let cached = self.aliases.get(&key);
        match &cached {
            Some((record, true)) => return Ok(record.clone()),
            Some(_) => {}
            None if !self.unknown_reads.try_take() => return Err(lookups_spent()),
            None => {}
        }
        match self.store.get_alias(tenant, function, alias).await {
            Ok(found) => {
                let found = found.map(Arc::new);
                self.aliases.insert(key, found.clone());
                Ok(found)
            }
            Err(e) => match cached {
                Some((record, _)) => {
                    tracing::debug!(error = %e, "store unreachable; serving the cached alias");
                    Ok(record)
                }
                None => Err(store_error(e)),
            },
        }
    }

    /// Checks that a function exists in the tenant (404 otherwise).
    pub async fn require_function(&self, tenant: &str, function: &str) -> Result<u32, ApiError> {
        match self.store.latest_version(tenant, function).await {
            Ok(Some(latest)) => Ok(latest),
            Ok(None) => Err(ApiError::not_found(format!(
                "function {function:?} not found"
            ))),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Creates or replaces an alias after checking its routes (422) and that
    /// no rollout is moving it (409).
    pub async fn put_alias(
        &self,
        tenant: &str,
        function: &str,
        alias: &str,
        routes: Vec<policies::split::Route>,
    ) -> Result<AliasRecord, ApiError> {
        aliases::check_name(alias)?;
        aliases::check_routes(&routes)?;
        let latest = self.require_function(tenant, function).await?;
        let missing: Vec<usize> = routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.version > latest)
            .map(|(i, _)| i)
            .collect();
        if !missing.is_empty() {
            return Err(aliases::missing_versions(&routes, &missing));
        }
        self.refuse_during_rollout(tenant, function, alias).await?;
        self.write_alias(tenant, function, alias, routes).await
    }

    /// Writes an alias without the rollout check (the rollout driver's path).
    pub async fn write_alias(
        &self,
        tenant: &str,
        function: &str,
        alias: &str,
        routes: Vec<policies::split::Route>,
    ) -> Result<AliasRecord, ApiError> {
        let record = AliasRecord {
            tenant: tenant.to_string(),
            function: function.to_string(),
            name: alias.to_string(),
            routes,
            updated_at_ms: now_ms(),
        };
        self.store.put_alias(&record).await.map_err(store_error)?;
        self.aliases.insert(
            (tenant.to_string(), function.to_string(), alias.to_string()),
            Some(Arc::new(record.clone())),
        );
        tracing::info!(tenant, function, alias, routes = ?record.routes, "alias set");
        Ok(record)
    }

    /// 409 while an active rollout moves the alias.
    async fn refuse_during_rollout(
        &self,
        tenant: &str,
        function: &str,
        alias: &str,
    ) -> Result<(), ApiError> {
        let rollouts = self
            .store
            .list_rollouts(tenant, function)
            .await
            .map_err(store_error)?;
        if let Some(active) = rollouts.iter().find(|r| r.is_active() && r.alias == alias) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "alias {alias:?} is being moved by rollout {}; abort it first",
                    active.id
                ),
            ));
        }
        Ok(())
    }

    /// Removes an alias (404 when there is none; 409 during a rollout).
    pub async fn delete_alias(
        &self,
        tenant: &str,
        function: &str,
        alias: &str,
    ) -> Result<(), ApiError> {
        self.require_function(tenant, function).await?;
        self.refuse_during_rollout(tenant, function, alias).await?;
        let removed = self
            .store
            .delete_alias(tenant, function, alias)
            .await
            .map_err(store_error)?;
        self.aliases.insert(
            (tenant.to_string(), function.to_string(), alias.to_string()),
            None,
        );
        if removed {
            Ok(())
        } else {
            Err(ApiError::not_found(format!(
                "function {function:?} has no alias {alias:?}"
            )))
        }
    }

    /// A function's aliases (404 for an unknown function).
    pub async fn list_aliases(
        &self,
        tenant: &str,
        function: &str,
    ) -> Result<Vec<AliasRecord>, ApiError> {
        self.require_function(tenant, function).await?;
        self.store
            .list_aliases(tenant, function)
            .await
            .map_err(store_error)
    }

    /// The latest version number, read from the store at most once per
    /// [`LATEST_TTL`] per function; while the store is unreachable the last
    /// number read keeps serving (so do the immutable versions cached).
    async fn latest(&self, tenant: &str, name: &str) -> Result<u32, ApiError> {
        let key = (tenant.to_string(), name.to_string());
        let not_found = || ApiError::not_found(format!("function {name:?} not found"));
        let cached = self.latest.get(&key);
        match cached {
            Some((Some(version), true)) => return Ok(version),
            Some((None, true)) => return Err(not_found()),
            Some(_) => {}
            None if !self.unknown_reads.try_take() => return Err(lookups_spent()),
            None => {}
        }
        match self.store.latest_version(tenant, name).await {
            Ok(found) => {
                self.latest.insert(key, found);
                found.ok_or_else(not_found)
            }
            Err(e) => match cached {
                Some((Some(version), _)) => {
                    tracing::debug!(error = %e, "store unreachable; serving the cached latest version");
                    Ok(version)
                }
                _ => Err(store_error(e)),
            },
        }
    }

    /// One version by number.
    pub async fn get(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<Option<Arc<FunctionVersion>>, ApiError> {
        let key = (tenant.to_string(), name.to_string(), version);
        if let Some(hit) = self.cache.read().expect("cache lock").get(&key) {
            return Ok(Some(hit.clone()));
        }
        match self
            .store
            .get_version(tenant, name, version)
            .await
            .map_err(store_error)?
        {
            Some(record) => {
                let record = Arc::new(record);
                self.remember(record.clone());
                Ok(Some(record))
            }
            None => Ok(None),
        }
    }

    pub async fn list(&self, tenant: &str) -> Result<Vec<FunctionSummary>, ApiError> {
        self.store.list_functions(tenant).await.map_err(store_error)
    }

    fn remember(&self, record: Arc<FunctionVersion>) {
        let key = (record.tenant.clone(), record.name.clone(), record.version);
        self.cache.write().expect("cache lock").insert(key, record);
    }
}

/// The data plane's view of the registry (router and node).
#[async_trait::async_trait]
impl Catalog for Registry {
    async fn resolve(
        &self,
        tenant: &str,
        name: &str,
        qualifier: &Qualifier,
    ) -> Result<Arc<FunctionVersion>, ApiError> {
        Registry::resolve(self, tenant, name, qualifier).await
    }

    async fn resolve_routed(
        &self,
        tenant: &str,
        name: &str,
        qualifier: &Qualifier,
        routing_key: &str,
    ) -> Result<(Arc<FunctionVersion>, Option<String>), ApiError> {
        Registry::resolve_routed(self, tenant, name, qualifier, routing_key).await
    }

    async fn versions(&self, tenant: &str, name: &str) -> Result<Vec<u32>, ApiError> {
        Ok(self
            .list(tenant)
            .await?
            .into_iter()
            .find(|f| f.name == name)
            .map(|f| f.versions)
            .unwrap_or_default())
    }

    async fn pipeline(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<contract::pipeline::PipelineVersion>, ApiError> {
        Registry::pipeline(self, tenant, name, version).await
    }
}

/// The answer while this second's reads of uncached names are spent (a flood
/// of invented names): try again in a second, never a wrong version.
fn lookups_spent() -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        "too many lookups of names this process has not seen; try again shortly",
    )
    .with_retry_after(1)
}

fn pick(record: &AliasRecord, routing_key: &str) -> Result<u32, ApiError> {
    policies::split::pick(&record.routes, &record.name, routing_key)
        .ok_or_else(|| ApiError::not_found(format!("alias {:?} routes to no version", record.name)))
}

fn definition_error(err: DefinitionError) -> ApiError {
    let summary = err
        .violations
        .iter()
        .map(|v| format!("{}: {}", v.pointer, v.message))
        .collect::<Vec<_>>()
        .join("; ");
    ApiError::new(
        ErrorCode::InvalidInput,
        format!("invalid definition: {summary}"),
    )
    .with_details(json!(err.violations))
}

fn internal(message: String) -> ApiError {
    tracing::error!(%message, "registry internal error");
    ApiError::new(ErrorCode::Internal, "internal registry error")
}
