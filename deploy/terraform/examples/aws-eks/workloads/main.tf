# Taskmesh on AWS, second of two root configurations: what runs on the cluster
# that ../infra created. Its providers are configured from the infrastructure's
# state, which exists before this plan starts, so they are always known.
# Walkthrough: deploy/README.md.

data "terraform_remote_state" "infra" {
  backend = var.infra_state_backend
  config  = var.infra_state_config
}

locals {
  infra     = data.terraform_remote_state.infra.outputs
  namespace = local.infra.kubernetes_namespace
  gpu       = var.gpu_pool && local.infra.gpu_ami_type != null
  # The cluster's credentials come from the AWS CLI at plan and apply time.
  eks_exec = {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", local.infra.cluster_name, "--region", local.infra.region]
  }
}

provider "kubernetes" {
  host                   = local.infra.cluster_endpoint
  cluster_ca_certificate = base64decode(local.infra.cluster_certificate_authority_data)
  exec {
    api_version = local.eks_exec.api_version
    command     = local.eks_exec.command
    args        = local.eks_exec.args
  }
}

provider "helm" {
  kubernetes = {
    host                   = local.infra.cluster_endpoint
    cluster_ca_certificate = base64decode(local.infra.cluster_certificate_authority_data)
    exec                   = local.eks_exec
  }
}

# --- cluster add-ons -------------------------------------------------------------

# Resizes the node groups: adds instances when pods are pending (CPU runtime
# nodes and routers scaled out by their HorizontalPodAutoscalers, a GPU pod on
# a GPU group at zero) and removes idle ones. Its IAM role (IRSA) only resizes
# this cluster's groups.
resource "helm_release" "cluster_autoscaler" {
  name       = "cluster-autoscaler"
  namespace  = "kube-system"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = var.cluster_autoscaler_chart_version

  values = [jsonencode({
    cloudProvider = "aws"
    awsRegion     = local.infra.region
    autoDiscovery = { clusterName = local.infra.cluster_name }
    # The autoscaler's minor version must match the cluster's.
    image = { tag = "v${local.infra.kubernetes_version}.0" }
    rbac = {
      serviceAccount = {
        name        = "cluster-autoscaler"
        annotations = { "eks.amazonaws.com/role-arn" = local.infra.cluster_autoscaler_role_arn }
      }
    }
    extraArgs = {
      "balance-similar-node-groups"   = true
      "skip-nodes-with-local-storage" = false
      "expander"                      = "least-waste"
    }
    nodeSelector = { "taskmesh.io/pool" = "cpu" }
  })]
}

# AL2023 NVIDIA AMIs have the driver but not the Kubernetes device plugin
# (Bottlerocket's have both): without it no node offers nvidia.com/gpu.
resource "helm_release" "nvidia_device_plugin" {
  count            = local.infra.gpu_ami_type == "AL2023_x86_64_NVIDIA" ? 1 : 0
  name             = "nvidia-device-plugin"
  namespace        = "nvidia-device-plugin"
  create_namespace = true
  repository       = "https://nvidia.github.io/k8s-device-plugin"
  chart            = "nvidia-device-plugin"
  version          = var.nvidia_device_plugin_chart_version

  values = [jsonencode({
    nodeSelector = { "taskmesh.io/pool" = "gpu" }
    tolerations  = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]
  })]
}

# --- Taskmesh ----------------------------------------------------------------------

# The Redis URL carries the auth token: a Secret, read by the pods through
# secretKeyRef. The namespace and the operator-key and cluster-key Secrets are
# created by the operator first (deploy/README.md, step 4).
resource "kubernetes_secret_v1" "redis" {
  metadata {
    name      = "taskmesh-redis"
    namespace = local.namespace
  }
  data = {
    redis-url = local.infra.redis_url
  }
}

module "taskmesh" {
  source = "../../../modules/kubernetes"

  name             = "taskmesh"
  namespace        = local.namespace
  create_namespace = false

  image = {
    repository = local.infra.ecr_repository_urls["taskmesh"]
    tag        = var.image_tag
    digest     = var.image_digest
  }

  admin_key_secret   = { name = "taskmesh-admin-key", key = "admin-key" }
  cluster_key_secret = { name = "taskmesh-cluster-key", key = "cluster-key" }
  redis_url_secret   = { name = kubernetes_secret_v1.redis.metadata[0].name, key = "redis-url" }
  model_store_url    = local.infra.model_store_url
  drain_timeout_s    = local.infra.drain_timeout_s
  extra_config       = { AWS_REGION = local.infra.region }

  # One ServiceAccount per component; the IRSA roles trust these names only.
  service_accounts = {
    router = { name = "taskmesh-router" }
    registry = {
      name        = local.infra.kubernetes_service_accounts.registry
      annotations = { "eks.amazonaws.com/role-arn" = local.infra.registry_role_arn }
    }
    node = {
      name        = local.infra.kubernetes_service_accounts.node
      annotations = { "eks.amazonaws.com/role-arn" = local.infra.node_role_arn }
    }
  }

  # The NLB of the infrastructure targets this NodePort on the CPU nodes.
  router_service = {
    type      = "NodePort"
    node_port = local.infra.router_node_port
  }

  router   = { max_replicas = 6, node_selector = { "taskmesh.io/pool" = "cpu" } }
  registry = { replicas = 2, node_selector = { "taskmesh.io/pool" = "cpu" } }
  cpu_pool = { replicas = 2, max_replicas = 6, node_selector = { "taskmesh.io/pool" = "cpu" } }

  # Also scale the CPU nodes on the weighted task backlog (needs
  # prometheus-adapter with deploy/prometheus-adapter/rules.yaml).
  task_autoscaling = { enabled = true, backlog_per_node = 64 }

  gpu_pool = local.gpu ? {
    image = {
      repository = local.infra.ecr_repository_urls["taskmesh-gpu"]
      tag        = var.image_tag
      digest     = var.gpu_image_digest
    }
    node_selector = { "taskmesh.io/pool" = "gpu" }
    # One GPU instance per pod: a rollout replaces the pod in place rather
    # than wait for a second GPU instance (gpu_pool.max_surge).
    max_surge = 0
  } : null

  network_policy = { enabled = true, admin_cidrs = [] }

  # The Grafana dashboard (for the Grafana chart's sidecar) and the alerting
  # rules, as ConfigMaps.
  monitoring = { grafana_dashboard = true, prometheus_rules = true }

  depends_on = [helm_release.nvidia_device_plugin]
}
