# Taskmesh on AWS, first of two root configurations: the infrastructure (the
# aws module: network, EKS, node groups, Redis, S3, IAM, ECR, NLB). The
# workloads configuration (../workloads) deploys onto it, reading this one's
# outputs from its state. Two states, as the terraform-aws-eks documentation
# recommends: the kubernetes and helm providers there are configured from a
# cluster that already exists, so a cluster change here never leaves them
# unknown at plan time, and neither configuration can destroy the other's
# resources. Walkthrough: deploy/README.md.

provider "aws" {
  region = var.region
  default_tags {
    tags = { "taskmesh:example" = "aws-eks" }
  }
}

module "aws" {
  source = "../../../modules/aws"

  name                                 = var.name
  kubernetes_version                   = var.kubernetes_version
  certificate_arn                      = var.certificate_arn
  cluster_endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs
  deletion_protection                  = var.deletion_protection
  force_destroy                        = var.force_destroy
  kubernetes_namespace                 = "taskmesh"
  kubernetes_service_accounts          = { registry = "taskmesh-registry", node = "taskmesh-node" }
  router_node_port                     = 30080
  drain_timeout_s                      = var.drain_timeout_s

  # Capacity (deploy/README.md, "Capacity"): at the workloads' autoscaler
  # maximums (6 routers, 6 CPU runtime nodes, 2 registries) about 19 vCPU,
  # 6-7 m7i.xlarge instances; 10 leaves room for rollout surges.
  cpu_node_group = { instance_types = ["m7i.xlarge"], min_size = 2, desired_size = 3, max_size = 10 }
  gpu_node_group = var.gpu ? { ami_type = var.gpu_ami_type, min_size = 0, desired_size = 0, max_size = 2 } : null
}
