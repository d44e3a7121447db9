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

variable "certificate_arn" {
  description = "ACM certificate (in the same region) for the router's public name."
  type        = string
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "Networks allowed to reach the EKS API (where you run terraform and kubectl), e.g. [\"203.0.113.7/32\"]."
  type        = list(string)
}

variable "image_tag" {
  description = "Tag of the images pushed to the ECR repositories this example creates (deploy/README.md, step 3). Both images use it: taskmesh:<tag> and taskmesh-gpu:<tag>."
  type        = string
  default     = "0.1.0"
}

variable "gpu" {
  description = "Create the GPU node group and the GPU runtime node pool."
  type        = bool
  default     = true
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

variable "deploy_workloads" {
  description = "Deploy the Kubernetes objects. false for the first apply (the cluster must exist before the kubernetes provider can plan), true afterwards; see deploy/README.md."
  type        = bool
  default     = true
}
