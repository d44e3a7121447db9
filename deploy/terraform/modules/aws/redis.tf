# ElastiCache for Redis: a primary and replicas in other zones with automatic
# failover, TLS required, encrypted at rest with this deployment's key, an auth
# token, reachable from the cluster's nodes only.

resource "aws_elasticache_subnet_group" "this" {
  name        = "${var.name}-redis"
  description = "${var.name}: private subnets for Redis"
  subnet_ids  = aws_subnet.private[*].id
  tags        = local.tags
}

resource "aws_security_group" "redis" {
  name_prefix = "${var.name}-redis-"
  description = "${var.name}: Redis, reachable from the EKS nodes and pods only"
  vpc_id      = aws_vpc.this.id
  tags        = merge(local.tags, { Name = "${var.name}-redis" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_cluster" {
  security_group_id            = aws_security_group.redis.id
  description                  = "Redis (TLS) from the EKS cluster security group (nodes and pods)"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}

# The auth token is generated here and only ever leaves Terraform in the
# redis_url output (sensitive), which the aws-eks example stores in a Kubernetes
# Secret. ElastiCache tokens: 16-128 printable characters without @, " or /.
resource "random_password" "redis_auth" {
  length  = 64
  special = false
}

# Redis holds every definition, version and client: it must refuse writes when
# full rather than evict keys (the default policy of ElastiCache's parameter
# groups, volatile-lru, would drop keys with a TTL, such as leases and cached
# results, but noeviction makes running out of memory an error that alarms
# instead of silent loss).
resource "aws_elasticache_parameter_group" "this" {
  name        = "${var.name}-redis${local.redis_major}"
  family      = "redis${local.redis_major}"
  description = "${var.name}: Redis never evicts keys"

  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }

  tags = local.tags

  # A new major version is a new family and name: create it before the old
  # one, which the replication group still uses, is deleted.
  lifecycle {
    create_before_destroy = true
  }
}

locals {
  redis_major = split(".", var.redis.engine_version)[0]
}

# The final snapshot's name must be new for each replication group.
resource "random_id" "redis_final_snapshot" {
  byte_length = 4
}

resource "aws_elasticache_replication_group" "this" {
  replication_group_id = "${var.name}-redis"
  description          = "${var.name}: definitions, membership and counters"
  engine               = "redis"
  engine_version       = var.redis.engine_version
  node_type            = var.redis.node_type
  port                 = 6379
  parameter_group_name = aws_elasticache_parameter_group.this.name

  num_cache_clusters         = var.redis.num_cache_clusters
  automatic_failover_enabled = true
  multi_az_enabled           = true
  preferred_cache_cluster_azs = [
    for i in range(var.redis.num_cache_clusters) : local.azs[i % length(local.azs)]
  ]

  subnet_group_name  = aws_elasticache_subnet_group.this.name
  security_group_ids = [aws_security_group.redis.id]

  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.this.arn
  transit_encryption_enabled = true
  transit_encryption_mode    = "required"
  auth_token                 = random_password.redis_auth.result
  auth_token_update_strategy = "ROTATE"

  snapshot_retention_limit   = var.redis.snapshot_retention_days
  final_snapshot_identifier  = "${var.name}-redis-final-${random_id.redis_final_snapshot.hex}"
  snapshot_window            = "03:00-04:00"
  maintenance_window         = "sun:05:00-sun:06:00"
  auto_minor_version_upgrade = true
  apply_immediately          = false

  tags = local.tags
}
