variable "kubeconfig_path" {
  description = "Kubeconfig of the cluster."
  type        = string
  default     = "~/.kube/config"
}

variable "kubeconfig_context" {
  description = "Context in the kubeconfig (null: its current context)."
  type        = string
  default     = null
}

variable "image_repository" {
  description = "Repository the taskmesh image (deploy/docker/Dockerfile) was pushed to."
  type        = string
}

variable "image_tag" {
  description = "Tag of that image."
  type        = string
}

variable "image_digest" {
  description = "Digest (sha256:...) of that image; with it the pods run exactly those bytes (null: the tag)."
  type        = string
  default     = null
}

variable "redis_url" {
  description = "URL of a Redis reachable from the cluster, without credentials (redis://host:6379). For one with a password, create a Secret and use the module's redis_url_secret instead."
  type        = string
}

variable "model_store_url" {
  description = "s3://bucket/prefix of the model store; the pods need AWS credentials for it (IRSA annotation, or AWS_* settings)."
  type        = string
}

variable "registry_service_account_annotations" {
  description = "Annotations of the registry's ServiceAccount; it reads and writes the model store, e.g. {\"eks.amazonaws.com/role-arn\" = \"arn:aws:iam::...:role/...\"}."
  type        = map(string)
  default     = {}
}

variable "node_service_account_annotations" {
  description = "Annotations of the runtime nodes' ServiceAccount; they only read the model store (give them a read-only role)."
  type        = map(string)
  default     = {}
}
