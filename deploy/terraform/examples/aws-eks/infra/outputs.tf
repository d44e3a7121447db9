# Everything the workloads configuration (../workloads) reads from this state.

output "region" {
  description = "Region of the deployment."
  value       = module.aws.region
}

output "cluster_name" {
  description = "aws eks update-kubeconfig --region <region> --name <cluster_name>"
  value       = module.aws.cluster_name
}

output "cluster_endpoint" {
  description = "EKS API endpoint (the workloads configuration's providers)."
  value       = module.aws.cluster_endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64 CA certificate of the EKS API."
  value       = module.aws.cluster_certificate_authority_data
}

output "kubernetes_version" {
  description = "Kubernetes version of the control plane."
  value       = module.aws.kubernetes_version
}

output "gpu_ami_type" {
  description = "AMI type of the GPU node group, or null without one."
  value       = module.aws.gpu_ami_type
}

output "ecr_repository_urls" {
  description = "Where to push the images (deploy/README.md, step 3)."
  value       = module.aws.ecr_repository_urls
}

output "load_balancer_dns_name" {
  description = "Point the certificate's DNS name at this (CNAME or Route 53 alias)."
  value       = module.aws.load_balancer_dns_name
}

output "model_bucket" {
  description = "The models bucket."
  value       = module.aws.model_bucket
}

output "model_store_url" {
  description = "The kubernetes module's model_store_url."
  value       = module.aws.model_store_url
}

output "redis_url" {
  description = "rediss:// URL with the auth token (the workloads configuration stores it in a Secret)."
  value       = module.aws.redis_url
  sensitive   = true
}

output "router_node_port" {
  description = "NodePort the load balancer targets."
  value       = module.aws.router_node_port
}

output "drain_timeout_s" {
  description = "Drain time the load balancer was set up for."
  value       = var.drain_timeout_s
}

output "kubernetes_namespace" {
  description = "Namespace the IRSA roles trust."
  value       = module.aws.kubernetes_namespace
}

output "kubernetes_service_accounts" {
  description = "ServiceAccounts the IRSA roles trust."
  value       = module.aws.kubernetes_service_accounts
}

output "registry_role_arn" {
  description = "IRSA role of the registry (model store read/write)."
  value       = module.aws.registry_role_arn
}

output "node_role_arn" {
  description = "IRSA role of the runtime nodes (model store read-only)."
  value       = module.aws.node_role_arn
}

output "cluster_autoscaler_role_arn" {
  description = "IRSA role of the cluster autoscaler."
  value       = module.aws.cluster_autoscaler_role_arn
}
