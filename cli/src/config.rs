//! The CLI's configuration: defaults, then `taskmesh.toml`, then `TASKMESH_*`
//! environment variables, then flags (figment merges them in that order).

use std::net::SocketAddr;
use std::path::PathBuf;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Config {
    /// The process's main listener: the router's (default 127.0.0.1:8080),
    /// or in cluster mode the registry's (8081) or the node's (9000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Registry admin API listener.
    pub admin_listen: SocketAddr,
    /// Runtime node listener (internal traffic; port 0 picks a free port).
    pub node_listen: SocketAddr,
    /// Data directory of the embedded store and model store.
    pub data_dir: PathBuf,
    /// Folder of example functions registered by `taskmesh up` (empty: none).
    pub examples: Option<PathBuf>,
    /// Router URL the CLI's `invoke` talks to.
    pub router_url: String,
    /// Registry admin URL the CLI's `fn` commands talk to.
    pub admin_url: String,
    /// Runtime nodes running elsewhere that the router also routes to.
    #[serde(default)]
    pub extra_nodes: Vec<SocketAddr>,
    /// API key the CLI sends (never logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Router worker threads (default: sized to the cores; see [`Config::router_threads`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_threads: Option<usize>,
    /// Memory the node may spend on loaded instances, in MiB.
    pub memory_budget_mb: u64,
    /// ONNX Runtime intra-op threads per session.
    pub session_threads: usize,
    /// ε of bounded-load placement: a node may carry (1 + ε) × the average load.
    pub placement_epsilon: f64,
    /// Below this many calls in flight a node is never passed over.
    pub placement_floor: u64,
    /// Cluster mode: Redis URL of the registry, membership and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// Cluster mode: where models live, `file:///path` or `s3://bucket/prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_store: Option<String>,
    /// Cluster mode: the `host:port` routers reach this node at (default: the listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Runtime node: run GPU functions with the CUDA execution provider.
    pub gpu: bool,
    /// How long a node finishes in-flight calls after SIGTERM, and a router
    /// lets open connections finish after GOAWAY, in seconds.
    pub drain_timeout_s: u64,
    /// How long finished tasks (and their results) are kept, in seconds.
    pub task_retention_s: u64,
    /// Router: task callbacks may reach private addresses (loopback, private
    /// networks, link-local); off by default (`tasks::callback`).
    pub callbacks_allow_private: bool,
    /// Router: the Unix socket of the graceful upgrade (default <data-dir>/router-upgrade.sock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_sock: Option<PathBuf>,
    /// File holding the cluster key (cluster mode; else `TASKMESH_CLUSTER_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_key_file: Option<PathBuf>,
    /// Router: a TLS listener beside the plain one (with `tls_cert` and `tls_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,
    /// Router: PEM certificate chain of the TLS listener (reloaded when it changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Router: PEM private key of the TLS listener (reloaded when it changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Registry: the most any tenant's function may ask for in `scaling`
    /// (`[scaling_bounds]` in taskmesh.toml: min_instances, max_instances,
    /// concurrency).
    #[serde(default)]
    pub scaling_bounds: contract::definition::ScalingBounds,
    /// How read commands print: `text` (default) or `json` (the server's JSON).
    #[serde(default)]
    pub output: crate::api::Output,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: None,
            admin_listen: "127.0.0.1:8081".parse().expect("static address"),
            node_listen: "127.0.0.1:0".parse().expect("static address"),
            data_dir: PathBuf::from(".taskmesh"),
            examples: None,
            router_url: "http://127.0.0.1:8080".into(),
            admin_url: "http://127.0.0.1:8081".into(),
            extra_nodes: Vec::new(),
            api_key: None,
            router_threads: None,
            session_threads: 1,
            memory_budget_mb: 4096,
            placement_epsilon: policies::ring::Bounds::default().epsilon,
            placement_floor: policies::ring::Bounds::default().floor,
            redis: None,
            model_store: None,
            advertise: None,
            gpu: false,
            drain_timeout_s: 30,
            task_retention_s: 24 * 3600,
            callbacks_allow_private: false,
            upgrade_sock: None,
            cluster_key_file: None,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            scaling_bounds: Default::default(),
            output: Default::default(),
        }
    }
}

impl Config {
    /// Loads the layers below the flags; `overrides` are the flags that were given.
    pub fn load(
        file: Option<&std::path::Path>,
        env: &[(String, String)],
        overrides: figment::value::Dict,
    ) -> Result<Self, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        let file = file
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("taskmesh.toml"));
        fig = fig.merge(Toml::file(file));
        let env_dict: figment::value::Dict = env
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("TASKMESH_").map(|k| {
                    (
                        k.to_lowercase(),
                        v.parse::<figment::value::Value>()
                            .unwrap_or_else(|_| figment::value::Value::from(v.clone())),
                    )
                })
            })
            .collect();
        fig = fig.merge(Serialized::defaults(env_dict));
        fig = fig.merge(Serialized::defaults(overrides));
        let config: Config = fig.extract().map_err(Box::new)?;
        config
            .validate()
            .map_err(|e| Box::new(figment::Error::from(e)))?;
        Ok(config)
    }

    /// The main listener, or the role's default.
    pub fn listen_or(&self, default: &str) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| default.parse().expect("static default address"))
    }

    /// Placement bounds for the router.
    pub fn bounds(&self) -> policies::ring::Bounds {
        policies::ring::Bounds {
            epsilon: self.placement_epsilon,
            floor: self.placement_floor,
        }
    }

    /// The key the CLI sends: configured, else the local operator key.
    pub fn key(&self) -> Option<String> {
        self.api_key.clone().or_else(|| {
            std::fs::read_to_string(self.data_dir.join("admin.key"))
                .ok()
                .map(|k| k.trim().to_string())
        })
    }

    /// The cluster key: from `cluster_key_file` (`--cluster-key-file`,
    /// `TASKMESH_CLUSTER_KEY_FILE`), else `TASKMESH_CLUSTER_KEY` (read as is
    /// from the environment, never parsed as a number); `None` when neither
    /// is given. A key that is given but unusable is an error.
    pub fn cluster_key(
        &self,
        env: &[(String, String)],
    ) -> Result<Option<contract::ClusterKey>, String> {
        if let Some(path) = &self.cluster_key_file {
            let raw = std::fs::read_to_string(path)
                .map_err(|e| format!("reading the cluster key file {}: {e}", path.display()))?;
            return contract::ClusterKey::parse(&raw)
                .map(Some)
                .map_err(|e| format!("the cluster key in {}: {e}", path.display()));
        }
        match env.iter().find(|(k, _)| k == "TASKMESH_CLUSTER_KEY") {
            Some((_, raw)) => contract::ClusterKey::parse(raw)
                .map(Some)
                .map_err(|e| format!("TASKMESH_CLUSTER_KEY: {e}")),
            None => Ok(None),
        }
    }

    /// The operator key of cluster mode: from `TASKMESH_ADMIN_KEY_FILE`
    /// (a mounted Secret), else `TASKMESH_ADMIN_KEY`; `None` when neither is
    /// set. Trimmed and checked like the cluster key (a key file's trailing
    /// newline is not part of the key); a key given but unusable is an error
    /// that names the variable, never the key.
    pub fn operator_key(env: &[(String, String)]) -> Result<Option<String>, String> {
        let var = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        if let Some(path) = var("TASKMESH_ADMIN_KEY_FILE") {
            let raw = std::fs::read_to_string(path)
                .map_err(|e| format!("reading TASKMESH_ADMIN_KEY_FILE ({path}): {e}"))?;
            return contract::cluster_key::parse_shared_secret(&raw, "the operator key")
                .map(Some)
                .map_err(|e| format!("TASKMESH_ADMIN_KEY_FILE ({path}): {e}"));
        }
        match var("TASKMESH_ADMIN_KEY") {
            Some(raw) => contract::cluster_key::parse_shared_secret(raw, "the operator key")
                .map(Some)
                .map_err(|e| format!("TASKMESH_ADMIN_KEY: {e}")),
            None => Ok(None),
        }
    }

    /// Router worker threads: the setting, else one per core this process may
    /// use (its CPU affinity and cgroup quota count), or half of them when the
    /// router shares the process with a runtime node (`taskmesh up`), whose
    /// tokio and ONNX Runtime threads need the rest. Each Pingora worker is a
    /// thread with its own event loop; more workers than cores only adds
    /// context switches (measured in `benchmarks/`, router-overhead).
    pub fn router_threads(&self, shares_process_with_node: bool) -> usize {
        self.router_threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if shares_process_with_node {
                cores.div_ceil(2)
            } else {
                cores
            }
        })
    }

    /// The router's TLS listener, when configured (all three settings are
    /// given; [`Config::validate`] refuses some without the others).
    pub fn tls(&self) -> Option<router::tls::TlsOptions> {
        match (&self.tls_listen, &self.tls_cert, &self.tls_key) {
            (Some(listen), Some(cert), Some(key)) => Some(router::tls::TlsOptions {
                listen: *listen,
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// The TLS listener, with its certificate and key loaded once to check
    /// them, so that a process refuses to start on files that do not load.
    pub fn checked_tls(&self) -> anyhow::Result<Option<router::tls::TlsOptions>> {
        let Some(tls) = self.tls() else {
            return Ok(None);
        };
        router::tls::ReloadingCert::load(&tls.cert, &tls.key).map_err(anyhow::Error::msg)?;
        Ok(Some(tls))
    }

    pub fn validate(&self) -> Result<(), String> {
        match (&self.tls_listen, &self.tls_cert, &self.tls_key) {
            (None, None, None) | (Some(_), Some(_), Some(_)) => {}
            (_, Some(_), None) => {
                return Err(
                    "tls_cert (--tls-cert) is given without tls_key (--tls-key): \
                    the TLS listener needs both"
                        .into(),
                )
            }
            (_, None, Some(_)) => {
                return Err(
                    "tls_key (--tls-key) is given without tls_cert (--tls-cert): \
                    the TLS listener needs both"
                        .into(),
                )
            }
            (Some(_), None, None) => {
                return Err(
                    "tls_listen (--tls-listen) needs tls_cert and tls_key (--tls-cert, --tls-key)"
                        .into(),
                )
            }
            (None, Some(_), Some(_)) => {
                return Err(
                    "tls_cert and tls_key are given without tls_listen (--tls-listen ADDR)".into(),
                )
            }
        }
        if self.tls_listen.is_some() && self.tls_listen == self.listen {
            return Err("tls_listen must differ from listen: the plain listener stays".into());
        }
        if self.router_threads == Some(0) || self.session_threads == 0 {
            return Err("router_threads and session_threads must be at least 1".into());
        }
        if !(0.0..=10.0).contains(&self.placement_epsilon) {
            return Err("placement_epsilon must be between 0 and 10".into());
        }
        Ok(())
    }
}

/// The process environment as pairs (tests pass their own).
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("TASKMESH_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("taskmesh.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nrouter_threads = 3\n").unwrap();
        let env = vec![
            ("TASKMESH_ROUTER_THREADS".to_string(), "4".to_string()),
            ("OTHER".into(), "x".into()),
        ];
        let mut flags = figment::value::Dict::new();
        flags.insert("data_dir".into(), "/tmp/x".into());
        let c = Config::load(Some(&file), &env, flags).unwrap();
        assert_eq!(c.listen_or("127.0.0.1:8080").port(), 9000);
        assert_eq!(c.router_threads, Some(4));
        assert_eq!(c.router_threads(true), 4, "a setting wins over sizing");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.admin_listen.port(), 8081);
    }

    #[test]
    fn router_threads_default_to_the_cores() {
        let c = Config::load(None, &[], figment::value::Dict::new()).unwrap();
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.router_threads(false), cores);
        assert_eq!(c.router_threads(true), cores.div_ceil(2));
        assert!(c.router_threads(true) >= 1);
    }

    #[test]
    fn the_cluster_key_comes_from_its_file_or_the_environment_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cluster.key");
        let hex = "0123456789".repeat(7);
        std::fs::write(&file, format!("{hex}\n")).unwrap();
        let none = Config::load(None, &[], figment::value::Dict::new()).unwrap();
        assert_eq!(none.cluster_key(&[]).unwrap(), None);
        // All digits: read as a string, not a number.
        let env = vec![("TASKMESH_CLUSTER_KEY".to_string(), hex.clone())];
        let c = Config::load(None, &env, figment::value::Dict::new()).unwrap();
        assert_eq!(c.cluster_key(&env).unwrap().unwrap().expose(), hex);
        let mut flags = figment::value::Dict::new();
        flags.insert("cluster_key_file".into(), file.to_str().unwrap().into());
        let c = Config::load(None, &[], flags).unwrap();
        assert_eq!(c.cluster_key(&[]).unwrap().unwrap().expose(), hex);
        let short = vec![("TASKMESH_CLUSTER_KEY".to_string(), "abc".to_string())];
        let err = none.cluster_key(&short).unwrap_err();
        assert!(err.contains("32") && !err.contains("abc"), "{err}");
    }

    #[test]
    fn tls_needs_its_listener_certificate_and_key_together() {
        let load = |pairs: &[(&str, &str)]| {
            let env: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (format!("TASKMESH_{k}"), v.to_string()))
                .collect();
            Config::load(None, &env, figment::value::Dict::new())
        };
        let none = load(&[]).unwrap();
        assert_eq!(none.tls(), None);
        assert!(none.checked_tls().unwrap().is_none());

        let all = load(&[
            ("TLS_LISTEN", "127.0.0.1:8443"),
            ("TLS_CERT", "/etc/tm/cert.pem"),
            ("TLS_KEY", "/etc/tm/key.pem"),
        ])
        .unwrap();
        let tls = all.tls().unwrap();
        assert_eq!(tls.listen.port(), 8443);
        assert_eq!(tls.cert, PathBuf::from("/etc/tm/cert.pem"));
        assert_eq!(tls.key, PathBuf::from("/etc/tm/key.pem"));
        // Files that do not exist are refused at start, naming the file.
        let err = all.checked_tls().unwrap_err().to_string();
        assert!(err.contains("/etc/tm/cert.pem"), "{err}");

        let refusals = [
            (
                vec![("TLS_LISTEN", "127.0.0.1:8443"), ("TLS_CERT", "c.pem")],
                "without tls_key",
            ),
            (
                vec![("TLS_LISTEN", "127.0.0.1:8443"), ("TLS_KEY", "k.pem")],
                "without tls_cert",
            ),
            (vec![("TLS_CERT", "c.pem")], "without tls_key"),
            (
                vec![("TLS_LISTEN", "127.0.0.1:8443")],
                "needs tls_cert and tls_key",
            ),
            (
                vec![("TLS_CERT", "c.pem"), ("TLS_KEY", "k.pem")],
                "without tls_listen",
            ),
            (
                vec![
                    ("LISTEN", "127.0.0.1:8443"),
                    ("TLS_LISTEN", "127.0.0.1:8443"),
                    ("TLS_CERT", "c.pem"),
                    ("TLS_KEY", "k.pem"),
                ],
                "must differ",
            ),
        ];
        for (pairs, why) in refusals {
            let err = load(&pairs).unwrap_err().to_string();
            assert!(err.contains(why), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn invalid_values_are_refused() {
        let env = vec![("TASKMESH_ROUTER_THREADS".to_string(), "0".to_string())];
        assert!(Config::load(None, &env, figment::value::Dict::new()).is_err());
    }
}
