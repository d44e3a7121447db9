# Taskmesh on AWS: the aws module (network, EKS, Redis, S3, IAM, ECR, NLB) and
# the kubernetes module on top of it. Walkthrough: deploy/README.md.

provider "aws" {
  region = var.region
  default_tags {
    tags = { "taskmesh:example" = "aws-eks" }
  }
}

module "aws" {
  source = "../../modules/aws"

  name                                 = var.name
  certificate_arn                      = var.certificate_arn
  cluster_endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs
  deletion_protection                  = var.deletion_protection
  force_destroy                        = var.force_destroy
  kubernetes_namespace                 = "taskmesh"
  kubernetes_service_account           = "taskmesh"
  router_node_port                     = 30080
  drain_timeout_s                      = 30
  gpu_node_group                       = var.gpu ? {} : null
}

# The cluster's credentials come from the AWS CLI at plan and apply time.
provider "kubernetes" {
  host                   = module.aws.cluster_endpoint
  cluster_ca_certificate = base64decode(module.aws.cluster_certificate_authority_data)
  exec {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", module.aws.cluster_name, "--region", var.region]
  }
}

# The Redis URL carries the auth token: a Secret, read by the pods through
# secretKeyRef. The namespace and the operator-key and cluster-key Secrets are
# created by the operator first (deploy/README.md, step 4).
resource "kubernetes_secret_v1" "redis" {
  count = var.deploy_workloads ? 1 : 0
  metadata {
    name      = "taskmesh-redis"
    namespace = "taskmesh"
  }
  data = {
    redis-url = module.aws.redis_url
  }
}

module "taskmesh" {
  source = "../../modules/kubernetes"
  count  = var.deploy_workloads ? 1 : 0

  name             = "taskmesh"
  namespace        = "taskmesh"
  create_namespace = false

  image = {
    repository = module.aws.ecr_repository_urls["taskmesh"]
    tag        = var.image_tag
  }

  admin_key_secret   = { name = "taskmesh-admin-key", key = "admin-key" }
  cluster_key_secret = { name = "taskmesh-cluster-key", key = "cluster-key" }
  redis_url_secret   = { name = kubernetes_secret_v1.redis[0].metadata[0].name, key = "redis-url" }
  model_store_url    = module.aws.model_store_url
  drain_timeout_s    = 30
  extra_config       = { AWS_REGION = module.aws.region }

  service_account = {
    annotations = { "eks.amazonaws.com/role-arn" = module.aws.taskmesh_role_arn }
  }

  # The NLB of the aws module targets this NodePort on the CPU nodes.
  router_service = {
    type      = "NodePort"
    node_port = module.aws.router_node_port
  }

  router   = { node_selector = { "taskmesh.io/pool" = "cpu" } }
  registry = { replicas = 2, node_selector = { "taskmesh.io/pool" = "cpu" } }
  cpu_pool = { replicas = 2, max_replicas = 6, node_selector = { "taskmesh.io/pool" = "cpu" } }

  gpu_pool = var.gpu ? {
    image = {
      repository = module.aws.ecr_repository_urls["taskmesh-gpu"]
      tag        = var.image_tag
    }
    node_selector = { "taskmesh.io/pool" = "gpu" }
  } : null

  network_policy = { enabled = true, admin_cidrs = [] }
}
