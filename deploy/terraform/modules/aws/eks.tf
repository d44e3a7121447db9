# --- control plane ---------------------------------------------------------------

data "aws_iam_policy_document" "cluster_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]
    principals {
      type        = "Service"
      identifiers = ["eks.${local.dns_suffix}"]
    }
  }
}

resource "aws_iam_role" "cluster" {
  name_prefix        = "${var.name}-cluster-"
  assume_role_policy = data.aws_iam_policy_document.cluster_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

# Created before the cluster so its retention and key apply from the first line.
resource "aws_cloudwatch_log_group" "cluster" {
  name              = "/aws/eks/${local.cluster_name}/cluster"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_eks_cluster" "this" {
  name     = local.cluster_name
  version  = var.kubernetes_version
  role_arn = aws_iam_role.cluster.arn

  vpc_config {
    subnet_ids              = aws_subnet.private[*].id
    endpoint_private_access = true
    endpoint_public_access  = length(var.cluster_endpoint_public_access_cidrs) > 0
    public_access_cidrs     = length(var.cluster_endpoint_public_access_cidrs) > 0 ? var.cluster_endpoint_public_access_cidrs : null
  }

  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = true
  }

  encryption_config {
    resources = ["secrets"]
    provider {
      key_arn = aws_kms_key.this.arn
    }
  }

  enabled_cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  tags = local.tags

  depends_on = [
    aws_iam_role_policy_attachment.cluster,
    aws_cloudwatch_log_group.cluster,
  ]
}

# IRSA: the cluster's OIDC issuer as an IAM identity provider.
resource "aws_iam_openid_connect_provider" "this" {
  url            = aws_eks_cluster.this.identity[0].oidc[0].issuer
  client_id_list = ["sts.${local.dns_suffix}"]
  tags           = local.tags
}

# Add-ons follow the cluster: each runs the newest version published for the
# cluster's Kubernetes version, so an upgrade of kubernetes_version upgrades
# them in the same apply (after the control plane, before the node groups
# roll). The VPC CNI enforces Kubernetes NetworkPolicies (the kubernetes module
# creates them); metrics-server feeds the HorizontalPodAutoscalers.
locals {
  addons = {
    "vpc-cni"        = { configuration = jsonencode({ enableNetworkPolicy = "true" }), after_nodes = false }
    "kube-proxy"     = { configuration = null, after_nodes = false }
    "coredns"        = { configuration = null, after_nodes = true }
    "metrics-server" = { configuration = null, after_nodes = true }
  }
}

data "aws_eks_addon_version" "this" {
  for_each           = local.addons
  addon_name         = each.key
  kubernetes_version = aws_eks_cluster.this.version
  most_recent        = true
}

# Add-ons whose pods need no node to be created (they are DaemonSets or
# configuration of the node itself).
resource "aws_eks_addon" "early" {
  for_each                    = { for k, a in local.addons : k => a if !a.after_nodes }
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = each.key
  addon_version               = data.aws_eks_addon_version.this[each.key].version
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  configuration_values        = each.value.configuration
  tags                        = local.tags
}

# Add-ons with Deployments: created once the CPU nodes can run them (an EKS
# add-on whose pods cannot schedule stays DEGRADED and fails the apply).
resource "aws_eks_addon" "late" {
  for_each                    = { for k, a in local.addons : k => a if a.after_nodes }
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = each.key
  addon_version               = data.aws_eks_addon_version.this[each.key].version
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  configuration_values        = each.value.configuration
  tags                        = local.tags

  depends_on = [aws_eks_node_group.cpu]
}

# --- nodes -------------------------------------------------------------------------

data "aws_iam_policy_document" "node_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.${local.dns_suffix}"]
    }
  }
}

resource "aws_iam_role" "node" {
  name_prefix        = "${var.name}-node-"
  assume_role_policy = data.aws_iam_policy_document.node_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryPullOnly",
  ])
  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.value}"
}

# IMDSv2 only, and a hop limit of 1: pods cannot borrow the node's role through
# the instance metadata service; they get AWS access through IRSA only.
# Volumes are encrypted with the account's aws/ebs key (a customer-managed key
# would also need a key policy for the Auto Scaling service-linked role, which
# may not exist yet in a new account).
resource "aws_launch_template" "cpu" {
  name_prefix = "${var.name}-cpu-"

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.cpu_node_group.disk_size_gib
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-cpu" })
  }

  tags = local.tags
}

# Node groups follow the cluster: version is the control plane's, and
# release_version the newest EKS AMI release for it (from AWS's public SSM
# parameters), so upgrading kubernetes_version rolls the nodes onto the new
# version in the same apply, one instance at a time (update_config). A change
# that needs a new node group (instance types, AMI type) creates the new one
# before the old one is destroyed (name_prefix + create_before_destroy), so the
# pods always have somewhere to go.
data "aws_ssm_parameter" "cpu_ami_release" {
  name = "/aws/service/eks/optimized-ami/${aws_eks_cluster.this.version}/amazon-linux-2023/x86_64/standard/recommended/release_version"
}

resource "aws_eks_node_group" "cpu" {
  cluster_name           = aws_eks_cluster.this.name
  node_group_name_prefix = "${var.name}-cpu-"
  version                = aws_eks_cluster.this.version
  release_version        = nonsensitive(data.aws_ssm_parameter.cpu_ami_release.value)
  node_role_arn          = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id
  ami_type        = "AL2023_x86_64_STANDARD"
  capacity_type   = "ON_DEMAND"
  instance_types  = var.cpu_node_group.instance_types

  launch_template {
    id      = aws_launch_template.cpu.id
    version = aws_launch_template.cpu.latest_version
  }

  scaling_config {
    min_size     = var.cpu_node_group.min_size
    max_size     = var.cpu_node_group.max_size
    desired_size = var.cpu_node_group.desired_size
  }

  update_config {
    max_unavailable = 1
  }

  labels = { "taskmesh.io/pool" = "cpu" }
  tags   = local.tags

  lifecycle {
    create_before_destroy = true
    # The cluster autoscaler owns the desired size after creation.
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node, aws_eks_addon.early]
}

resource "aws_launch_template" "gpu" {
  count       = var.gpu_node_group == null ? 0 : 1
  name_prefix = "${var.name}-gpu-"

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  # Bottlerocket: /dev/xvda is the OS volume, /dev/xvdb the data volume (images,
  # the model cache emptyDirs). AL2023: /dev/xvda is the only volume.
  block_device_mappings {
    device_name = try(var.gpu_node_group.ami_type, "") == "AL2023_x86_64_NVIDIA" ? "/dev/xvda" : "/dev/xvdb"
    ebs {
      volume_size           = try(var.gpu_node_group.disk_size_gib, 100)
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-gpu" })
  }

  tags = local.tags
}

# The GPU AMI's release: Bottlerocket NVIDIA and AL2023 NVIDIA publish theirs
# under different SSM paths.
data "aws_ssm_parameter" "gpu_ami_release" {
  count = var.gpu_node_group == null ? 0 : 1
  name = (var.gpu_node_group.ami_type == "AL2023_x86_64_NVIDIA"
    ? "/aws/service/eks/optimized-ami/${aws_eks_cluster.this.version}/amazon-linux-2023/x86_64/nvidia/recommended/release_version"
  : "/aws/service/bottlerocket/aws-k8s-${aws_eks_cluster.this.version}-nvidia/x86_64/latest/image_version")
}

resource "aws_eks_node_group" "gpu" {
  count                  = var.gpu_node_group == null ? 0 : 1
  cluster_name           = aws_eks_cluster.this.name
  node_group_name_prefix = "${var.name}-gpu-"
  version                = aws_eks_cluster.this.version
  release_version        = nonsensitive(data.aws_ssm_parameter.gpu_ami_release[0].value)
  node_role_arn          = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id
  ami_type        = var.gpu_node_group.ami_type
  capacity_type   = "ON_DEMAND"
  instance_types  = var.gpu_node_group.instance_types

  launch_template {
    id      = aws_launch_template.gpu[0].id
    version = aws_launch_template.gpu[0].latest_version
  }

  scaling_config {
    min_size     = var.gpu_node_group.min_size
    max_size     = var.gpu_node_group.max_size
    desired_size = var.gpu_node_group.desired_size
  }

  update_config {
    max_unavailable = 1
  }

  labels = { "taskmesh.io/pool" = "gpu" }

  # Only pods that tolerate it (the GPU runtime nodes) land on GPU instances.
  taint {
    key    = "nvidia.com/gpu"
    value  = "true"
    effect = "NO_SCHEDULE"
  }

  tags = local.tags

  lifecycle {
    create_before_destroy = true
    ignore_changes        = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node, aws_eks_addon.early]
}

# Earlier versions of this module had one resource per add-on; their state
# moves here without replacing the add-ons.
moved {
  from = aws_eks_addon.vpc_cni
  to   = aws_eks_addon.early["vpc-cni"]
}

moved {
  from = aws_eks_addon.kube_proxy
  to   = aws_eks_addon.early["kube-proxy"]
}

moved {
  from = aws_eks_addon.coredns
  to   = aws_eks_addon.late["coredns"]
}
