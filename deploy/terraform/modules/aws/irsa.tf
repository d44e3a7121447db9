# --- IRSA: one IAM role per workload that needs AWS -----------------------------
#
# Each role trusts exactly one Kubernetes ServiceAccount (subject and audience
# checked). The kubernetes module gives every component its own ServiceAccount:
#
# | component          | ServiceAccount                      | AWS access                          |
# |--------------------|-------------------------------------|-------------------------------------|
# | registry           | <namespace>/<service_accounts.registry> | read and write the model prefix |
# | runtime nodes      | <namespace>/<service_accounts.node>     | read the model prefix           |
# | routers            | <namespace>/<name>-router               | none (no role)                  |
# | cluster autoscaler | kube-system/cluster-autoscaler          | scale this cluster's node groups |

locals {
  oidc_issuer = replace(aws_iam_openid_connect_provider.this.url, "https://", "")

  irsa_roles = {
    registry = {
      subject     = "system:serviceaccount:${var.kubernetes_namespace}:${var.kubernetes_service_accounts.registry}"
      description = "${var.name}: the registry (IRSA) reads and writes the model store"
    }
    node = {
      subject     = "system:serviceaccount:${var.kubernetes_namespace}:${var.kubernetes_service_accounts.node}"
      description = "${var.name}: runtime nodes (IRSA) read the model store"
    }
    cluster-autoscaler = {
      subject     = "system:serviceaccount:kube-system:cluster-autoscaler"
      description = "${var.name}: the cluster autoscaler (IRSA) resizes this cluster's node groups"
    }
  }
}

data "aws_iam_policy_document" "irsa_assume" {
  for_each = local.irsa_roles
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.this.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = [each.value.subject]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.${local.dns_suffix}"]
    }
  }
}

resource "aws_iam_role" "irsa" {
  for_each           = local.irsa_roles
  name_prefix        = "${var.name}-${each.key}-"
  description        = each.value.description
  assume_role_policy = data.aws_iam_policy_document.irsa_assume[each.key].json
  tags               = local.tags
}

# --- the model store: the registry writes, nodes read ----------------------------

data "aws_iam_policy_document" "models_access" {
  for_each = { registry = true, node = false }
  statement {
    sid       = "ListModelPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.models.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.model_prefix, "${var.model_prefix}/*"]
    }
  }
  statement {
    sid = each.value ? "ReadWriteModels" : "ReadModels"
    actions = each.value ? [
      "s3:GetObject",
      "s3:PutObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ] : ["s3:GetObject"]
    resources = ["${aws_s3_bucket.models.arn}/${var.model_prefix}/*"]
  }
  statement {
    sid       = "UseBucketKey"
    actions   = each.value ? ["kms:Decrypt", "kms:GenerateDataKey"] : ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.${local.dns_suffix}"]
    }
  }
}

resource "aws_iam_role_policy" "models" {
  for_each = data.aws_iam_policy_document.models_access
  name     = "model-store"
  role     = aws_iam_role.irsa[each.key].id
  policy   = each.value.json
}

# --- the cluster autoscaler ----------------------------------------------------------
#
# EKS tags each managed node group's Auto Scaling group with
# k8s.io/cluster-autoscaler/enabled and k8s.io/cluster-autoscaler/<cluster>, which
# the autoscaler discovers; it may only resize groups carrying this cluster's tag.

data "aws_iam_policy_document" "cluster_autoscaler" {
  #checkov:skip=CKV_AWS_356:The Describe/Get actions take no resource-level permissions (AWS requires "*" for them); the actions that change anything are limited to this cluster's tagged groups.
  #checkov:skip=CKV_AWS_111:Same: only the mutating actions are resource-scoped, by the cluster's tag.
  statement {
    sid = "Discover"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations",
      "autoscaling:DescribeScalingActivities",
      "autoscaling:DescribeTags",
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:GetInstanceTypesFromInstanceRequirements",
      "eks:DescribeNodegroup",
    ]
    resources = ["*"]
  }
  statement {
    sid = "ResizeThisClustersGroups"
    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:TerminateInstanceInAutoScalingGroup",
    ]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${local.cluster_name}"
      values   = ["owned"]
    }
  }
}

resource "aws_iam_role_policy" "cluster_autoscaler" {
  name   = "cluster-autoscaler"
  role   = aws_iam_role.irsa["cluster-autoscaler"].id
  policy = data.aws_iam_policy_document.cluster_autoscaler.json
}

# Scale from zero: with no GPU instance running, the autoscaler learns what a
# new one would offer (its label, taint and GPUs) from these tags on the
# group's Auto Scaling group.
locals {
  gpu_node_template_tags = var.gpu_node_group == null ? {} : {
    "k8s.io/cluster-autoscaler/node-template/label/taskmesh.io/pool" = "gpu"
    "k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"   = "true:NoSchedule"
    "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu" = tostring(var.gpu_node_group.gpus_per_instance)
  }
}

resource "aws_autoscaling_group_tag" "gpu_node_template" {
  for_each               = local.gpu_node_template_tags
  autoscaling_group_name = aws_eks_node_group.gpu[0].resources[0].autoscaling_groups[0].name
  tag {
    key                 = each.key
    value               = each.value
    propagate_at_launch = false
  }
}
