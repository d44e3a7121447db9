output "cluster_name" {
  description = "aws eks update-kubeconfig --region <region> --name <cluster_name>"
  value       = module.aws.cluster_name
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

output "router_url" {
  description = "Router Service inside the cluster."
  value       = var.deploy_workloads ? module.taskmesh[0].router_url : null
}

output "registry_url" {
  description = "Registry admin API inside the cluster (kubectl port-forward svc/taskmesh-registry 8081)."
  value       = var.deploy_workloads ? module.taskmesh[0].registry_url : null
}
