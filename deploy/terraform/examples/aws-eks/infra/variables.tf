variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Name prefix of every AWS resource."
  type        = string
  default     = "taskmesh"
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version. Raising it upgrades the control plane, then the add-ons and the node groups (deploy/README.md, \"Upgrade the cluster\")."
  type        = string
  default     = "1.34"
}

variable "certificate_arn" {
  description = "ACM certificate (in the same region) for the router's public name."
  type        = string
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "Networks allowed to reach the EKS API (where you run terraform and kubectl), e.g. [\"203.0.113.7/32\"]."
  type        = list(string)
}

variable "gpu" {
  description = "Create the GPU node group (scales from zero; the workloads configuration adds the GPU runtime node pool)."
  type        = bool
  default     = true
}

variable "gpu_ami_type" {
  description = "AMI type of the GPU nodes: BOTTLEROCKET_x86_64_NVIDIA (driver and device plugin included) or AL2023_x86_64_NVIDIA (the workloads configuration installs the NVIDIA device plugin)."
  type        = string
  default     = "BOTTLEROCKET_x86_64_NVIDIA"
}

variable "drain_timeout_s" {
  description = "Drain time of the routers; the workloads configuration reads it from this state so the load balancer's deregistration delay and the pods' grace periods agree."
  type        = number
  default     = 30
}

variable "deletion_protection" {
  description = "Deletion protection of the load balancer; set to false and apply before terraform destroy."
  type        = bool
  default     = true
}

variable "force_destroy" {
  description = "Let terraform destroy delete the buckets and ECR repositories with their contents; only for tearing down."
  type        = bool
  default     = false
}
