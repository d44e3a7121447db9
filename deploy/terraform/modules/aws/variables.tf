variable "name" {
  description = "Name prefix of every resource (cluster, node groups, Redis, buckets, load balancer)."
  type        = string
  default     = "taskmesh"

  validation {
    condition     = can(regex("^[a-z][-a-z0-9]{1,18}[a-z0-9]$", var.name))
    error_message = "name must be 3-20 lower-case letters, digits or '-', starting with a letter (it prefixes names with AWS length limits, e.g. the load balancer's 32)."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

# --- network ---------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR of the VPC this module creates. It is split into one public and one private subnet per availability zone."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be a CIDR block of /20 or larger."
  }
}

variable "availability_zone_count" {
  description = "Number of availability zones to spread subnets, nodes and Redis over."
  type        = number
  default     = 3

  validation {
    condition     = var.availability_zone_count >= 2 && var.availability_zone_count <= 4
    error_message = "availability_zone_count must be 2, 3 or 4 (EKS and a multi-AZ Redis need at least 2)."
  }
}

variable "availability_zones" {
  description = "Availability zone names to use (null: the first availability_zone_count zones of the region in name order). Pin them for a deployment that must never change zones."
  type        = list(string)
  default     = null

  validation {
    condition     = var.availability_zones == null || try(length(var.availability_zones) >= 2 && length(var.availability_zones) <= 4, false)
    error_message = "availability_zones must list 2 to 4 zones."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all private subnets (cheaper; egress of the private subnets depends on one zone) instead of one per zone."
  type        = bool
  default     = true
}

# --- EKS ----------------------------------------------------------------------

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.34"

  validation {
    condition     = can(regex("^1\\.(3[0-9])$", var.kubernetes_version))
    error_message = "kubernetes_version must be a 1.3x EKS version such as \"1.34\"."
  }
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "Networks allowed to reach the EKS API from the internet (where operators run terraform and kubectl). An empty list makes the endpoint private only (then run terraform and kubectl from inside the VPC)."
  type        = list(string)

  validation {
    condition     = alltrue([for c in var.cluster_endpoint_public_access_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "cluster_endpoint_public_access_cidrs must be CIDR blocks, and not 0.0.0.0/0."
  }
}

variable "cpu_node_group" {
  description = "Managed node group for the routers, the registry and the CPU runtime nodes (label taskmesh.io/pool=cpu). The load balancer targets these instances. The cluster autoscaler moves the size between min_size and max_size; max_size must hold the HorizontalPodAutoscalers' maximums (deploy/README.md, capacity). desired_size is the size at creation only."
  type = object({
    instance_types = optional(list(string), ["m7i.xlarge"])
    min_size       = optional(number, 2)
    max_size       = optional(number, 10)
    desired_size   = optional(number, 3)
    disk_size_gib  = optional(number, 100)
  })
  default = {}

  validation {
    condition     = var.cpu_node_group.min_size >= 1 && var.cpu_node_group.min_size <= var.cpu_node_group.desired_size && var.cpu_node_group.desired_size <= var.cpu_node_group.max_size
    error_message = "cpu_node_group needs 1 <= min_size <= desired_size <= max_size."
  }
}

variable "gpu_node_group" {
  description = "Managed node group for GPU runtime nodes (label taskmesh.io/pool=gpu, taint nvidia.com/gpu=true:NoSchedule), or null for none. The default AMI type, Bottlerocket NVIDIA, ships the NVIDIA driver and Kubernetes device plugin; with AL2023_x86_64_NVIDIA the aws-eks example's workloads configuration installs the NVIDIA device plugin. The GPU image needs a driver for CUDA 13 (>= 580). min_size 0 lets the cluster autoscaler remove every GPU instance when no GPU pod runs and create one when a GPU pod is pending (gpus_per_instance tells it what a new instance offers); desired_size is the size at creation only."
  type = object({
    instance_types    = optional(list(string), ["g6.xlarge"])
    gpus_per_instance = optional(number, 1)
    ami_type          = optional(string, "BOTTLEROCKET_x86_64_NVIDIA")
    min_size          = optional(number, 0)
    max_size          = optional(number, 2)
    desired_size      = optional(number, 0)
    disk_size_gib     = optional(number, 100)
  })
  default = {}

  validation {
    condition     = var.gpu_node_group == null || try(contains(["BOTTLEROCKET_x86_64_NVIDIA", "AL2023_x86_64_NVIDIA"], var.gpu_node_group.ami_type), false)
    error_message = "gpu_node_group.ami_type must be a GPU AMI type: BOTTLEROCKET_x86_64_NVIDIA or AL2023_x86_64_NVIDIA."
  }
  validation {
    condition     = var.gpu_node_group == null || try(var.gpu_node_group.min_size >= 0 && var.gpu_node_group.min_size <= var.gpu_node_group.desired_size && var.gpu_node_group.desired_size <= var.gpu_node_group.max_size, false)
    error_message = "gpu_node_group needs 0 <= min_size <= desired_size <= max_size."
  }
}

# --- Redis ------------------------------------------------------------------------

variable "redis" {
  description = "ElastiCache for Redis (replication group): definitions, versions, membership and cluster-wide counters. num_cache_clusters >= 2 gives a replica in another zone with automatic failover."
  type = object({
    node_type               = optional(string, "cache.t4g.medium")
    engine_version          = optional(string, "7.1")
    num_cache_clusters      = optional(number, 2)
    snapshot_retention_days = optional(number, 7)
  })
  default = {}

  validation {
    condition     = var.redis.num_cache_clusters >= 2 && var.redis.num_cache_clusters <= 6
    error_message = "redis.num_cache_clusters must be 2-6 (a primary and at least one replica)."
  }
  validation {
    condition     = var.redis.snapshot_retention_days >= 1 && var.redis.snapshot_retention_days <= 35
    error_message = "redis.snapshot_retention_days must be 1-35: Redis holds every function definition, so it is backed up."
  }
}

# --- models bucket and workload identity ---------------------------------------------------

variable "model_bucket_name" {
  description = "Name of the S3 bucket for models and artifacts (null: \"<name>-models-<account id>\")."
  type        = string
  default     = null

  validation {
    condition     = var.model_bucket_name == null || can(regex("^[a-z0-9][-a-z0-9]{1,61}[a-z0-9]$", coalesce(var.model_bucket_name, "x")))
    error_message = "model_bucket_name must be a valid S3 bucket name (no dots, so TLS virtual-host names stay valid)."
  }
}

variable "model_prefix" {
  description = "Key prefix of the model store inside the bucket; the IAM policy is scoped to it."
  type        = string
  default     = "models"

  validation {
    condition     = can(regex("^[a-z0-9][-a-z0-9/]*[a-z0-9]$", var.model_prefix))
    error_message = "model_prefix must be lower-case letters, digits, '-' and '/', without a leading or trailing '/'."
  }
}

variable "kubernetes_namespace" {
  description = "Namespace of the Taskmesh pods (the IRSA role trusts its service account only)."
  type        = string
  default     = "taskmesh"
}

variable "kubernetes_service_accounts" {
  description = "ServiceAccounts (in kubernetes_namespace) of the components that use AWS: registry (reads and writes the model store) and node (reads it). Each IRSA role trusts its one ServiceAccount; routers get none. The kubernetes module's defaults are <name>-registry and <name>-node."
  type = object({
    registry = optional(string, "taskmesh-registry")
    node     = optional(string, "taskmesh-node")
  })
  default = {}
}

# --- load balancer ------------------------------------------------------------------

variable "certificate_arn" {
  description = "ACM certificate for the load balancer's TLS listener (the router's public name)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[-a-z]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/.+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "alpn_policy" {
  description = "ALPN policy of the TLS listener. HTTP2Preferred offers h2 then http/1.1 (the router serves both on one port); HTTP2Only refuses HTTP/1.1 clients."
  type        = string
  default     = "HTTP2Preferred"

  validation {
    condition     = contains(["HTTP2Preferred", "HTTP2Only"], var.alpn_policy)
    error_message = "alpn_policy must be HTTP2Preferred or HTTP2Only (HTTP/2 end to end)."
  }
}

variable "ingress_cidrs" {
  description = "Networks allowed to reach the load balancer's TLS port."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.ingress_cidrs) > 0 && alltrue([for c in var.ingress_cidrs : can(cidrhost(c, 0))])
    error_message = "ingress_cidrs must be a non-empty list of CIDR blocks."
  }
}

variable "router_node_port" {
  description = "NodePort of the router Service (the kubernetes module's router_service.node_port); the load balancer's target group sends traffic there."
  type        = number
  default     = 30080

  validation {
    condition     = var.router_node_port >= 30000 && var.router_node_port <= 32767
    error_message = "router_node_port must be in the NodePort range 30000-32767."
  }
}

variable "drain_timeout_s" {
  description = "Drain time of the routers (the kubernetes module's drain_timeout_s). The target group's deregistration delay lets connections to a leaving instance run this long."
  type        = number
  default     = 30

  validation {
    condition     = var.drain_timeout_s >= 1 && var.drain_timeout_s <= 600
    error_message = "drain_timeout_s must be between 1 and 600."
  }
}

variable "deletion_protection" {
  description = "Deletion protection of the load balancer. Set to false (and apply) before terraform destroy."
  type        = bool
  default     = true
}

variable "force_destroy" {
  description = "Let terraform destroy delete the buckets and ECR repositories with their contents (every model version, every image). Keep false except to tear down."
  type        = bool
  default     = false
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups (EKS control plane, VPC flow logs) and of the access logs in the log bucket."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a CloudWatch Logs retention value (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, ...)."
  }
}
