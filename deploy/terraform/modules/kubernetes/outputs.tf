output "namespace" {
  description = "Namespace of the objects."
  value       = var.namespace
}

output "router_url" {
  description = "Router (data plane) inside the cluster: HTTP/1.1 and h2c with prior knowledge."
  value       = "http://${var.name}-router.${var.namespace}.svc.cluster.local:${var.router_service.port}"
}

output "registry_url" {
  description = "Registry admin API inside the cluster."
  value       = "http://${var.name}-registry.${var.namespace}.svc.cluster.local:${local.registry_port}"
}

output "service_account_names" {
  description = "ServiceAccount of each component ({router, registry, node}); an IRSA role must trust system:serviceaccount:<namespace>:<name>."
  value       = { for role, sa in local.service_accounts : role => sa.name }
}

output "termination_grace_period_seconds" {
  description = "terminationGracePeriodSeconds of each component: preStop delay + drain_timeout_s + 5 s."
  value = {
    router   = local.router_grace_s
    registry = local.registry_grace_s
    node     = local.node_grace_s
  }
}

output "manifests" {
  description = "Every object the module applies, by key of its manifests table (for inspection and tests)."
  value       = local.objects
}
