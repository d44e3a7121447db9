# --- identity ------------------------------------------------------------------

variable "name" {
  description = "Release name: prefix of every object's name and the value of the app.kubernetes.io/instance label."
  type        = string
  default     = "taskmesh"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,28}[a-z0-9])?$", var.name))
    error_message = "name must be a DNS label of at most 30 characters (lower-case letters, digits and '-'), so that derived names such as \"<name>-node-gpu\" stay valid."
  }
}

variable "namespace" {
  description = "Namespace to deploy into."
  type        = string
  default     = "taskmesh"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace)) && var.namespace != "default"
    error_message = "namespace must be a DNS label and not \"default\"."
  }
}

variable "create_namespace" {
  description = "Create the namespace. Set to false when it exists already (for example because the operator-key Secret was created in it first)."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Extra labels added to every object (not to selectors)."
  type        = map(string)
  default     = {}
}

# --- images ----------------------------------------------------------------------

variable "image" {
  description = "Taskmesh image (deploy/docker/Dockerfile) for the router, the registry and the CPU runtime nodes. Give a digest to pin the exact bytes (recommended); with a digest the tag is informational only."
  type = object({
    repository = string
    tag        = optional(string)
    digest     = optional(string)
  })

  validation {
    condition     = var.image.tag != null || var.image.digest != null
    error_message = "image needs a tag or a digest (never an implicit latest)."
  }
  validation {
    condition     = var.image.tag == null || try(var.image.tag != "latest", true)
    error_message = "image.tag must not be \"latest\": rollouts must be reproducible."
  }
  validation {
    condition     = var.image.digest == null || can(regex("^sha256:[a-f0-9]{64}$", coalesce(var.image.digest, "x")))
    error_message = "image.digest must look like sha256:<64 hex digits>."
  }
}

variable "image_pull_policy" {
  description = "imagePullPolicy of every container."
  type        = string
  default     = "Always"

  validation {
    condition     = contains(["Always", "IfNotPresent"], var.image_pull_policy)
    error_message = "image_pull_policy must be Always or IfNotPresent."
  }
}

# --- configuration and secrets -------------------------------------------------------

variable "admin_key_secret" {
  description = "Existing Secret (in the namespace) holding the operator API key, passed to the router and the registry as TASKMESH_ADMIN_KEY. This module never creates it: create it with kubectl (see deploy/README.md)."
  type = object({
    name = string
    key  = optional(string, "admin-key")
  })

  validation {
    condition     = can(regex("^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$", var.admin_key_secret.name))
    error_message = "admin_key_secret.name must be a valid Secret name."
  }
}

variable "cluster_key_secret" {
  description = "Existing Secret (in the namespace) holding the cluster key, passed to the router, the registry and every runtime node as TASKMESH_CLUSTER_KEY: nodes refuse (401) any call without it, so only this cluster's routers and registry can call them. All three refuse to start without it. 32 to 256 visible ASCII characters (e.g. openssl rand -hex 32). This module never creates it: create it with kubectl (see deploy/README.md)."
  type = object({
    name = string
    key  = optional(string, "cluster-key")
  })

  validation {
    condition     = can(regex("^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$", var.cluster_key_secret.name))
    error_message = "cluster_key_secret.name must be a valid Secret name."
  }
}

variable "redis_url" {
  description = "Redis URL (redis:// or rediss://) without credentials, stored in the ConfigMap. Use redis_url_secret instead when the URL carries a password or token. Exactly one of the two must be set."
  type        = string
  default     = null

  validation {
    condition     = var.redis_url == null || can(regex("^rediss?://[^@/]+(:[0-9]+)?(/[0-9]+)?$", coalesce(var.redis_url, "x")))
    error_message = "redis_url must be redis://HOST[:PORT][/DB] or rediss://... without user info; put a URL with credentials in a Secret and use redis_url_secret."
  }
  validation {
    condition     = (var.redis_url == null) != (var.redis_url_secret == null)
    error_message = "Set exactly one of redis_url and redis_url_secret."
  }
}

variable "redis_url_secret" {
  description = "Existing Secret (in the namespace) whose key holds the full Redis URL, for URLs with credentials (for example rediss://:TOKEN@host:6379 for ElastiCache with an auth token)."
  type = object({
    name = string
    key  = optional(string, "redis-url")
  })
  default = null
}

variable "model_store_url" {
  description = "Model store of the registry and the runtime nodes: s3://BUCKET/PREFIX (credentials from the AWS chain, e.g. IRSA) or file:///PATH (a shared volume, for tests)."
  type        = string

  validation {
    condition     = can(regex("^(s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](/.*)?|file:///.+)$", var.model_store_url))
    error_message = "model_store_url must be s3://bucket[/prefix] or file:///path."
  }
}

variable "drain_timeout_s" {
  description = "How long a process drains on SIGTERM (TASKMESH_DRAIN_TIMEOUT_S): a node finishes its in-flight calls, the router drains its connections. terminationGracePeriodSeconds is derived from it (see the README)."
  type        = number
  default     = 30

  validation {
    condition     = var.drain_timeout_s >= 1 && var.drain_timeout_s <= 600 && floor(var.drain_timeout_s) == var.drain_timeout_s
    error_message = "drain_timeout_s must be a whole number of seconds between 1 and 600."
  }
}

variable "log_level" {
  description = "TASKMESH_LOG: tracing filter of every process."
  type        = string
  default     = "info"

  validation {
    condition     = can(regex("^[-a-z_=,:0-9]+$", var.log_level))
    error_message = "log_level must be a tracing filter such as \"info\" or \"info,taskmesh_router=debug\"."
  }
}

variable "extra_config" {
  description = "Extra environment variables for every process, stored in the ConfigMap (for example AWS_REGION, or TASKMESH_* settings). Never put secrets here."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.extra_config) : can(regex("^[A-Z_][A-Z0-9_]*$", k))])
    error_message = "extra_config keys must be environment variable names (upper case, digits, '_')."
  }
  validation {
    condition     = !anytrue([for k in keys(var.extra_config) : contains(["TASKMESH_ADMIN_KEY", "TASKMESH_CLUSTER_KEY", "TASKMESH_CLUSTER_KEY_FILE", "TASKMESH_REDIS"], k)])
    error_message = "TASKMESH_ADMIN_KEY, TASKMESH_CLUSTER_KEY (and TASKMESH_CLUSTER_KEY_FILE) and TASKMESH_REDIS come from admin_key_secret, cluster_key_secret and redis_url/redis_url_secret, not extra_config."
  }
}

# --- service account (IRSA) --------------------------------------------------------------

variable "service_accounts" {
  description = "One ServiceAccount per component, so each gets only the cloud access it needs. annotations is the IRSA hook: {\"eks.amazonaws.com/role-arn\" = <role ARN>} on registry (reads and writes the model store) and node (reads it); the router needs none. Names default to <name>-router, <name>-registry and <name>-node. With create = false, the ServiceAccounts must exist under those names."
  type = object({
    create = optional(bool, true)
    router = optional(object({
      name        = optional(string)
      annotations = optional(map(string), {})
    }), {})
    registry = optional(object({
      name        = optional(string)
      annotations = optional(map(string), {})
    }), {})
    node = optional(object({
      name        = optional(string)
      annotations = optional(map(string), {})
    }), {})
  })
  default = {}
}

# --- router ------------------------------------------------------------------------

variable "router" {
  description = "Router Deployment: replicas is the HorizontalPodAutoscaler's minimum, max_replicas its maximum. cpu and memory_mib are both requests and limits (Guaranteed QoS). prestop_delay_s keeps a terminating router serving while load balancers and kube-proxy stop sending it new connections, before SIGTERM starts the drain."
  type = object({
    replicas               = optional(number, 2)
    max_replicas           = optional(number, 10)
    target_cpu_utilization = optional(number, 70)
    cpu                    = optional(string, "1")
    memory_mib             = optional(number, 512)
    prestop_delay_s        = optional(number, 10)
    node_selector          = optional(map(string), {})
    tolerations = optional(list(object({
      key      = optional(string)
      operator = optional(string, "Equal")
      value    = optional(string)
      effect   = optional(string)
    })), [])
  })
  default = {}

  validation {
    condition     = var.router.replicas >= 2 && var.router.max_replicas >= var.router.replicas
    error_message = "router.replicas must be at least 2 (a rolling update or a node drain must never leave no router) and at most router.max_replicas."
  }
  validation {
    condition     = var.router.target_cpu_utilization > 0 && var.router.target_cpu_utilization <= 100
    error_message = "router.target_cpu_utilization is a percentage (1-100)."
  }
  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+)?m?$", var.router.cpu)) && var.router.memory_mib >= 64
    error_message = "router.cpu must be a CPU quantity (\"1\", \"500m\") and router.memory_mib at least 64."
  }
  validation {
    condition     = var.router.prestop_delay_s >= 0 && var.router.prestop_delay_s <= 120
    error_message = "router.prestop_delay_s must be between 0 and 120."
  }
}

variable "router_service" {
  description = "Router Service. type NodePort with a fixed node_port lets a load balancer managed outside Kubernetes (the aws module's NLB) target the nodes; type LoadBalancer with annotations suits clusters running a cloud load-balancer controller. The router speaks HTTP/1.1 and h2c on one port (appProtocol kubernetes.io/h2c)."
  type = object({
    type                        = optional(string, "ClusterIP")
    port                        = optional(number, 8080)
    node_port                   = optional(number)
    external_traffic_policy     = optional(string, "Cluster")
    annotations                 = optional(map(string), {})
    load_balancer_source_ranges = optional(list(string), [])
  })
  default = {}

  validation {
    condition     = contains(["ClusterIP", "NodePort", "LoadBalancer"], var.router_service.type)
    error_message = "router_service.type must be ClusterIP, NodePort or LoadBalancer."
  }
  validation {
    condition     = var.router_service.node_port == null || (var.router_service.type != "ClusterIP" && try(var.router_service.node_port >= 30000 && var.router_service.node_port <= 32767, false))
    error_message = "router_service.node_port needs type NodePort or LoadBalancer and must be in 30000-32767."
  }
  validation {
    condition     = contains(["Cluster", "Local"], var.router_service.external_traffic_policy)
    error_message = "router_service.external_traffic_policy must be Cluster or Local."
  }
}

# --- registry --------------------------------------------------------------------------

variable "registry" {
  description = "Registry (admin API) Deployment. Reached inside the cluster at <name>-registry.<namespace>:8081, or by kubectl port-forward."
  type = object({
    replicas      = optional(number, 1)
    cpu           = optional(string, "500m")
    memory_mib    = optional(number, 512)
    node_selector = optional(map(string), {})
    tolerations = optional(list(object({
      key      = optional(string)
      operator = optional(string, "Equal")
      value    = optional(string)
      effect   = optional(string)
    })), [])
  })
  default = {}

  validation {
    condition     = var.registry.replicas >= 1 && var.registry.replicas <= 10 && var.registry.memory_mib >= 64
    error_message = "registry.replicas must be 1-10 and registry.memory_mib at least 64."
  }
}

# --- runtime nodes -----------------------------------------------------------------------

variable "cpu_pool" {
  description = "CPU runtime node pool. replicas/max_replicas bound its HorizontalPodAutoscaler (CPU utilisation). The node's memory budget for loaded models (TASKMESH_MEMORY_BUDGET_MB) is memory_budget_percent of memory_mib; the model cache is an emptyDir of cache_size_mib."
  type = object({
    replicas               = optional(number, 2)
    max_replicas           = optional(number, 10)
    target_cpu_utilization = optional(number, 70)
    cpu                    = optional(string, "2")
    memory_mib             = optional(number, 4096)
    memory_budget_percent  = optional(number, 75)
    cache_size_mib         = optional(number, 10240)
    node_selector          = optional(map(string), {})
    tolerations = optional(list(object({
      key      = optional(string)
      operator = optional(string, "Equal")
      value    = optional(string)
      effect   = optional(string)
    })), [])
  })
  default = {}

  validation {
    condition     = var.cpu_pool.replicas >= 1 && var.cpu_pool.max_replicas >= var.cpu_pool.replicas
    error_message = "cpu_pool.replicas must be at least 1 and at most cpu_pool.max_replicas."
  }
  validation {
    condition     = var.cpu_pool.memory_budget_percent >= 10 && var.cpu_pool.memory_budget_percent <= 90 && var.cpu_pool.memory_mib >= 256
    error_message = "cpu_pool.memory_budget_percent must be 10-90 (the rest is the process itself) and memory_mib at least 256."
  }
}

variable "task_autoscaling" {
  description = "Scale the CPU node pool on the weighted task backlog as well as on CPU (the HorizontalPodAutoscaler follows whichever asks for more pods, between cpu_pool.replicas and cpu_pool.max_replicas): ceil(backlog / backlog_per_node) pods, where the backlog is the summed cost of queued and running tasks. Needs an external metrics API serving metric_name, e.g. prometheus-adapter with deploy/prometheus-adapter/rules.yaml and a Prometheus that scrapes the routers' /metrics."
  type = object({
    enabled          = optional(bool, false)
    metric_name      = optional(string, "taskmesh_tasks_backlog_cost")
    backlog_per_node = optional(number, 64)
  })
  default = {}

  validation {
    condition     = var.task_autoscaling.backlog_per_node >= 1 && floor(var.task_autoscaling.backlog_per_node) == var.task_autoscaling.backlog_per_node
    error_message = "task_autoscaling.backlog_per_node must be a whole number of cost units, at least 1."
  }
  validation {
    condition     = can(regex("^[a-z_][a-z0-9_]*$", var.task_autoscaling.metric_name))
    error_message = "task_autoscaling.metric_name must be a Prometheus-style metric name (lowercase letters, digits and underscores)."
  }
}

variable "gpu_pool" {
  description = "Optional GPU runtime node pool (null: none). Its pods run `taskmesh node --gpu` from the GPU image (deploy/docker/Dockerfile.gpu), request gpus nvidia.com/gpu each, and by default tolerate the nvidia.com/gpu taint. Set node_selector to the labels of your GPU nodes. Rollouts: with max_surge 0 (the default) an upgrade replaces one GPU pod at a time (maxUnavailable 1), which needs no spare GPU but leaves GPU functions with one pod fewer meanwhile (none while the pool has one replica); max_surge 1 starts the new pod first, which needs a free GPU or a cluster autoscaler that adds a GPU instance within the rollout timeout (15 minutes)."
  type = object({
    image = object({
      repository = string
      tag        = optional(string)
      digest     = optional(string)
    })
    replicas              = optional(number, 1)
    max_replicas          = optional(number, 1)
    gpus                  = optional(number, 1)
    cpu                   = optional(string, "3")
    memory_mib            = optional(number, 12288)
    memory_budget_percent = optional(number, 75)
    cache_size_mib        = optional(number, 20480)
    max_surge             = optional(number, 0)
    node_selector         = optional(map(string), {})
    tolerations = optional(list(object({
      key      = optional(string)
      operator = optional(string, "Equal")
      value    = optional(string)
      effect   = optional(string)
      })), [{
      key      = "nvidia.com/gpu"
      operator = "Exists"
      effect   = "NoSchedule"
    }])
  })
  default = null

  validation {
    condition     = var.gpu_pool == null || try(var.gpu_pool.image.tag != null || var.gpu_pool.image.digest != null, false)
    error_message = "gpu_pool.image needs a tag or a digest."
  }
  validation {
    condition     = var.gpu_pool == null || try(var.gpu_pool.gpus >= 1 && var.gpu_pool.replicas >= 1 && var.gpu_pool.max_replicas >= var.gpu_pool.replicas, false)
    error_message = "gpu_pool.gpus and gpu_pool.replicas must be at least 1, and max_replicas at least replicas."
  }
  validation {
    condition     = var.gpu_pool == null || try(contains([0, 1], var.gpu_pool.max_surge), false)
    error_message = "gpu_pool.max_surge must be 0 (replace pods in place) or 1 (start the new pod first)."
  }
}

# --- network policy -----------------------------------------------------------------------

variable "network_policy" {
  description = "NetworkPolicies (need a CNI that enforces them, e.g. the VPC CNI with network policy enabled, Calico, Cilium). Router: ingress on its port from anywhere (it authenticates every call). Registry: from this release's pods and admin_cidrs. Nodes: from this release's routers and registry only. Egress is not restricted (Redis, S3, DNS)."
  type = object({
    enabled     = optional(bool, true)
    admin_cidrs = optional(list(string), [])
  })
  default = {}

  validation {
    condition     = alltrue([for c in var.network_policy.admin_cidrs : can(cidrhost(c, 0))])
    error_message = "network_policy.admin_cidrs must be CIDR blocks."
  }
}

variable "monitoring" {
  description = "ConfigMaps for the monitoring stack. grafana_dashboard: deploy/grafana/taskmesh.json in a ConfigMap with dashboard_labels (grafana_dashboard = \"1\" is what the Grafana Helm chart's dashboard sidecar looks for by default). prometheus_rules: deploy/prometheus/taskmesh-rules.yaml (recording rules and SLO alerts) in a ConfigMap with rules_labels, to mount into a Prometheus as a rule file (with the prometheus-operator, put its groups in a PrometheusRule instead). Both read the files from this repository (the module is used by local path)."
  type = object({
    grafana_dashboard = optional(bool, false)
    dashboard_labels  = optional(map(string), { grafana_dashboard = "1" })
    prometheus_rules  = optional(bool, false)
    rules_labels      = optional(map(string), {})
  })
  default = {}
}
