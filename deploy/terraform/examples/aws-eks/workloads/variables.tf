variable "infra_state_backend" {
  description = "Backend of the infrastructure configuration's state (../infra): \"local\" for a state file, \"s3\" for a remote one."
  type        = string
  default     = "local"
}

variable "infra_state_config" {
  description = "Configuration of that backend, as in its backend block: {path = \"../infra/terraform.tfstate\"} for local, {bucket, key, region} for s3."
  type        = map(string)
  default     = { path = "../infra/terraform.tfstate" }
}

variable "image_tag" {
  description = "Tag of the images pushed to the infrastructure's ECR repositories (deploy/README.md, step 3). Both images use it: taskmesh:<tag> and taskmesh-gpu:<tag>. Changing it upgrades the platform (a rolling update of every component)."
  type        = string
  default     = "0.1.0"
}

variable "image_digest" {
  description = "Digest (sha256:...) of the taskmesh image pushed under image_tag, printed by the build in deploy/README.md step 3. With it the pods run exactly those bytes; null runs the tag (immutable in the ECR repositories of ../infra)."
  type        = string
  default     = null
}

variable "gpu_image_digest" {
  description = "Digest of the taskmesh-gpu image, as image_digest."
  type        = string
  default     = null
}

variable "gpu_pool" {
  description = "Run the GPU runtime node pool (when the infrastructure has a GPU node group)."
  type        = bool
  default     = true
}

variable "cluster_autoscaler_chart_version" {
  description = "Version of the cluster-autoscaler Helm chart (https://kubernetes.github.io/autoscaler). Its image follows the cluster's Kubernetes version."
  type        = string
  default     = "9.52.1"
}

variable "nvidia_device_plugin_chart_version" {
  description = "Version of the NVIDIA device plugin Helm chart (https://nvidia.github.io/k8s-device-plugin), installed only on AL2023 NVIDIA GPU nodes (Bottlerocket ships the plugin)."
  type        = string
  default     = "0.17.1"
}
