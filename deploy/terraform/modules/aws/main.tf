data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:The zones used are fixed by var.availability_zones when set; otherwise they are the first availability_zone_count zone names in sorted order, and subnets are indexed by position, so a zone AWS adds later cannot move or add a subnet of an existing deployment.
  state = "available"
  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.region
  partition  = data.aws_partition.current.partition
  dns_suffix = data.aws_partition.current.dns_suffix
  azs        = var.availability_zones != null ? var.availability_zones : slice(sort(data.aws_availability_zones.available.names), 0, var.availability_zone_count)

  cluster_name      = var.name
  model_bucket_name = coalesce(var.model_bucket_name, "${var.name}-models-${local.account_id}")
  log_bucket_name   = "${var.name}-logs-${local.account_id}"

  tags = merge(var.tags, {
    "app.kubernetes.io/part-of" = "taskmesh"
    "taskmesh:deployment"       = var.name
  })
}

# One customer-managed key for the data at rest of this deployment: Kubernetes
# Secrets in EKS, Redis, the model bucket, ECR and the CloudWatch log groups.
resource "aws_kms_key" "this" {
  description             = "${var.name}: EKS secrets, Redis, models bucket, ECR, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:This is a KMS key policy: "*" as resource means this key only, and kms:* for the account root is AWS's default key policy, which delegates access to IAM policies (without it the key can become unmanageable).
  #checkov:skip=CKV_AWS_111:Same key policy: the resource "*" of a key policy is the key itself, not every resource.
  #checkov:skip=CKV_AWS_356:Same key policy: a key policy can only name "*" (the key it is attached to) as its resource.
  # The account administers the key through IAM (the default key policy).
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
  # CloudWatch Logs encrypts this deployment's log groups only.
  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.${local.dns_suffix}"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"]
    }
  }
}
