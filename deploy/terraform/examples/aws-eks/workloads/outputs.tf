output "router_url" {
  description = "Router Service inside the cluster."
  value       = module.taskmesh.router_url
}

output "registry_url" {
  description = "Registry admin API inside the cluster (kubectl port-forward svc/taskmesh-registry 8081)."
  value       = module.taskmesh.registry_url
}

output "service_account_names" {
  description = "ServiceAccount of each component."
  value       = module.taskmesh.service_account_names
}
