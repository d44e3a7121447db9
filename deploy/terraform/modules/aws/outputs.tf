output "cluster_name" {
  description = "EKS cluster name (aws eks update-kubeconfig --name ...)."
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "EKS API endpoint."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64 CA certificate of the EKS API."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "oidc_provider_arn" {
  description = "IAM OIDC provider of the cluster (for more IRSA roles)."
  value       = aws_iam_openid_connect_provider.this.arn
}

output "region" {
  description = "Region of the deployment."
  value       = local.region
}

output "vpc_id" {
  description = "VPC of the deployment."
  value       = aws_vpc.this.id
}

output "private_subnet_ids" {
  description = "Private subnets (nodes, Redis)."
  value       = aws_subnet.private[*].id
}

output "redis_primary_endpoint" {
  description = "Primary endpoint of the Redis replication group (TLS on port 6379)."
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}

output "redis_url" {
  description = "rediss:// URL with the auth token, for the kubernetes module's redis_url_secret (store it in a Secret, never in a ConfigMap)."
  value       = "rediss://:${random_password.redis_auth.result}@${aws_elasticache_replication_group.this.primary_endpoint_address}:6379"
  sensitive   = true
}

output "model_bucket" {
  description = "Name of the models bucket."
  value       = aws_s3_bucket.models.id
}

output "model_store_url" {
  description = "The kubernetes module's model_store_url (s3://bucket/prefix)."
  value       = "s3://${aws_s3_bucket.models.id}/${var.model_prefix}"
}

output "registry_role_arn" {
  description = "IRSA role of the registry (reads and writes the model store): the eks.amazonaws.com/role-arn annotation of the kubernetes module's registry ServiceAccount."
  value       = aws_iam_role.irsa["registry"].arn
}

output "node_role_arn" {
  description = "IRSA role of the runtime nodes (read the model store): the eks.amazonaws.com/role-arn annotation of the kubernetes module's node ServiceAccount."
  value       = aws_iam_role.irsa["node"].arn
}

output "cluster_autoscaler_role_arn" {
  description = "IRSA role of the cluster autoscaler (kube-system/cluster-autoscaler)."
  value       = aws_iam_role.irsa["cluster-autoscaler"].arn
}

output "kubernetes_version" {
  description = "Kubernetes version of the control plane (the cluster autoscaler's image follows it)."
  value       = aws_eks_cluster.this.version
}

output "gpu_ami_type" {
  description = "AMI type of the GPU node group, or null without one (AL2023_x86_64_NVIDIA needs the NVIDIA device plugin installed)."
  value       = var.gpu_node_group == null ? null : var.gpu_node_group.ami_type
}

output "kubernetes_namespace" {
  description = "Namespace the IRSA roles trust (the kubernetes module's namespace)."
  value       = var.kubernetes_namespace
}

output "kubernetes_service_accounts" {
  description = "ServiceAccounts the IRSA roles trust (the kubernetes module's service_accounts names)."
  value       = var.kubernetes_service_accounts
}

output "ecr_repository_urls" {
  description = "ECR repositories: taskmesh (CPU image) and taskmesh-gpu."
  value       = { for k, r in aws_ecr_repository.this : k => r.repository_url }
}

output "load_balancer_dns_name" {
  description = "DNS name of the router load balancer: point the certificate's name at it (CNAME or Route 53 alias)."
  value       = aws_lb.router.dns_name
}

output "load_balancer_zone_id" {
  description = "Hosted zone of the load balancer, for a Route 53 alias record."
  value       = aws_lb.router.zone_id
}

output "router_node_port" {
  description = "NodePort the load balancer targets; pass it to the kubernetes module."
  value       = var.router_node_port
}

output "kms_key_arn" {
  description = "Customer-managed key of the deployment."
  value       = aws_kms_key.this.arn
}
