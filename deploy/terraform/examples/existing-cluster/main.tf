# Taskmesh on a cluster you already have: the kubernetes module only. Redis and
# the S3-compatible model store are yours too. Create the namespace and the
# operator-key and cluster-key Secrets first (deploy/README.md, step 4).

provider "kubernetes" {
  config_path    = var.kubeconfig_path
  config_context = var.kubeconfig_context
}

module "taskmesh" {
  source = "../../modules/kubernetes"

  name             = "taskmesh"
  namespace        = "taskmesh"
  create_namespace = false

  image              = { repository = var.image_repository, tag = var.image_tag, digest = var.image_digest }
  admin_key_secret   = { name = "taskmesh-admin-key" }
  cluster_key_secret = { name = "taskmesh-cluster-key" }
  redis_url          = var.redis_url
  model_store_url    = var.model_store_url
  # One ServiceAccount per component: the registry writes the model store,
  # runtime nodes read it, routers need no cloud access.
  service_accounts = {
    registry = { annotations = var.registry_service_account_annotations }
    node     = { annotations = var.node_service_account_annotations }
  }

  # ClusterIP: put your own Ingress or load balancer in front, or use
  # router_service = { type = "LoadBalancer", annotations = {...} } with your
  # cloud's load-balancer controller.
  router_service = { type = "ClusterIP" }

  network_policy = { enabled = false }
}

output "router_url" {
  description = "Router Service inside the cluster."
  value       = module.taskmesh.router_url
}

output "registry_url" {
  description = "Registry admin API inside the cluster."
  value       = module.taskmesh.registry_url
}
