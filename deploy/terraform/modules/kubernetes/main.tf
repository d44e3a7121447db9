# Every Kubernetes object of this module is a YAML template in templates/,
# rendered with templatefile() and applied with kubernetes_manifest. The one
# table below (local.manifests) says which templates are rendered, with which
# variables; scripts/deploy-checks.sh reads that same table to render every
# object with example values and validate it against the Kubernetes schemas
# (see README.md, "Why templates").

locals {
  release_labels = merge(var.labels, {
    "app.kubernetes.io/name"       = "taskmesh"
    "app.kubernetes.io/instance"   = var.name
    "app.kubernetes.io/managed-by" = "terraform"
  })

  image_ref     = var.image.digest != null ? "${var.image.repository}@${var.image.digest}" : "${var.image.repository}:${var.image.tag}"
  gpu_image_ref = var.gpu_pool == null ? null : (var.gpu_pool.image.digest != null ? "${var.gpu_pool.image.repository}@${var.gpu_pool.image.digest}" : "${var.gpu_pool.image.repository}:${var.gpu_pool.image.tag}")

  # One ServiceAccount per component (router, registry, node).
  service_accounts = {
    for role in ["router", "registry", "node"] : role => {
      name        = coalesce(var.service_accounts[role].name, "${var.name}-${role}")
      annotations = var.service_accounts[role].annotations
    }
  }
  configmap = "${var.name}-config"

  # HorizontalPodAutoscaler metrics (autoscaling/v2): CPU utilisation for
  # every scaled Deployment, and for the CPU node pool with task_autoscaling
  # also the weighted task backlog, an external metric served by
  # prometheus-adapter from the routers' taskmesh_router_tasks_backlog_cost
  # (deploy/prometheus-adapter/rules.yaml). The HPA follows whichever of the
  # two asks for more pods: ceil(backlog / backlog_per_node) for the backlog.
  cpu_metric = {
    for name, utilization in {
      router = var.router.target_cpu_utilization
      cpu    = var.cpu_pool.target_cpu_utilization
      gpu    = 80
    } : name => { type = "Resource", resource = { name = "cpu", target = { type = "Utilization", averageUtilization = utilization } } }
  }
  backlog_metric = {
    type = "External"
    external = {
      metric = { name = var.task_autoscaling.metric_name }
      target = { type = "AverageValue", averageValue = tostring(var.task_autoscaling.backlog_per_node) }
    }
  }
  node_cpu_metrics = var.task_autoscaling.enabled ? [local.cpu_metric.cpu, local.backlog_metric] : [local.cpu_metric.cpu]

  # Quantities in the canonical form the API server returns ("4Gi", not
  # "4096Mi"): kubernetes_manifest compares what it applied with what it
  # reads back and fails the apply ("inconsistent result") on any difference.
  mib = {
    router_memory     = var.router.memory_mib
    registry_memory   = var.registry.memory_mib
    cpu_memory        = var.cpu_pool.memory_mib
    cpu_cache         = var.cpu_pool.cache_size_mib
    cpu_ephemeral     = var.cpu_pool.cache_size_mib + local.node_scratch_mib
    gpu_memory        = try(var.gpu_pool.memory_mib, 1024)
    gpu_cache         = try(var.gpu_pool.cache_size_mib, 1024)
    gpu_ephemeral     = try(var.gpu_pool.cache_size_mib, 0) + local.node_scratch_mib
    service_ephemeral = local.service_scratch_mib
  }
  quantity = { for k, v in local.mib : k => v % 1024 == 0 ? "${floor(v / 1024)}Gi" : "${v}Mi" }
  # Local disk a pod may use besides its model cache: /tmp, logs and the
  # container's writable layer. Requested (and limited) as ephemeral-storage,
  # so the scheduler never puts more caches on a node than its disk holds
  # (an overfull disk evicts pods).
  node_scratch_mib    = 1536
  service_scratch_mib = 1024

  router_port   = 8080
  registry_port = 8081
  node_port     = 9000

  config_data = merge(
    {
      TASKMESH_MODEL_STORE     = var.model_store_url
      TASKMESH_DRAIN_TIMEOUT_S = tostring(var.drain_timeout_s)
      TASKMESH_LOG             = var.log_level
    },
    var.redis_url == null ? {} : { TASKMESH_REDIS = var.redis_url },
    var.extra_config,
  )
  # Pods roll when their configuration changes.
  pod_annotations = { "taskmesh.io/config-sha256" = sha256(jsonencode(local.config_data)) }

  redis_value_from = var.redis_url_secret != null ? {
    secretKeyRef = { name = var.redis_url_secret.name, key = var.redis_url_secret.key }
    } : {
    configMapKeyRef = { name = local.configmap, key = "TASKMESH_REDIS" }
  }

  # Graceful shutdown: the kubelet sends SIGTERM after the preStop hook and kills
  # the process terminationGracePeriodSeconds after the pod started terminating.
  # grace = preStop delay + drain_timeout_s + slack, so a process always finishes
  # its own drain first.
  termination_slack_s  = 5
  registry_prestop_s   = 5
  router_grace_s       = var.router.prestop_delay_s + var.drain_timeout_s + local.termination_slack_s
  registry_grace_s     = local.registry_prestop_s + var.drain_timeout_s + local.termination_slack_s
  node_grace_s         = var.drain_timeout_s + local.termination_slack_s
  gpu_pool_enabled     = var.gpu_pool != null
  gpu_tolerations      = var.gpu_pool == null ? [] : [for t in var.gpu_pool.tolerations : { for k, v in t : k => v if v != null }]
  router_tolerations   = [for t in var.router.tolerations : { for k, v in t : k => v if v != null }]
  registry_tolerations = [for t in var.registry.tolerations : { for k, v in t : k => v if v != null }]
  cpu_tolerations      = [for t in var.cpu_pool.tolerations : { for k, v in t : k => v if v != null }]

  router_service_spec = merge(
    {
      type = var.router_service.type
      selector = {
        "app.kubernetes.io/name"      = "taskmesh"
        "app.kubernetes.io/instance"  = var.name
        "app.kubernetes.io/component" = "router"
      }
      ports = [merge(
        {
          name        = "http"
          port        = var.router_service.port
          targetPort  = "http"
          protocol    = "TCP"
          appProtocol = "kubernetes.io/h2c"
        },
        var.router_service.node_port == null ? {} : { nodePort = var.router_service.node_port },
      )]
    },
    var.router_service.type == "ClusterIP" ? {} : { externalTrafficPolicy = var.router_service.external_traffic_policy },
    var.router_service.type == "LoadBalancer" && length(var.router_service.load_balancer_source_ranges) > 0 ? { loadBalancerSourceRanges = var.router_service.load_balancer_source_ranges } : {},
  )

  registry_service_spec = {
    type = "ClusterIP"
    selector = {
      "app.kubernetes.io/name"      = "taskmesh"
      "app.kubernetes.io/instance"  = var.name
      "app.kubernetes.io/component" = "registry"
    }
    ports = [{
      name        = "http"
      port        = local.registry_port
      targetPort  = "http"
      protocol    = "TCP"
      appProtocol = "kubernetes.io/h2c"
    }]
  }

  registry_from = concat(
    [{ podSelector = { matchLabels = { "app.kubernetes.io/instance" = var.name } } }],
    [for c in var.network_policy.admin_cidrs : { ipBlock = { cidr = c } }],
  )

  # ---------------------------------------------------------------------------
  # The objects. Each entry: whether it is rendered, its template, and the
  # variables the template receives (exactly the names it uses).
  manifests = {
    "namespace" = {
      enabled  = var.create_namespace
      template = "namespace.yaml.tftpl"
      vars = {
        namespace = var.namespace
        # Pod Security Admission: every Taskmesh pod meets the restricted profile.
        labels = merge(local.release_labels, {
          "pod-security.kubernetes.io/enforce" = "restricted"
          "pod-security.kubernetes.io/warn"    = "restricted"
        })
      }
    }
    "serviceaccount-router" = {
      enabled  = var.service_accounts.create
      template = "serviceaccount.yaml.tftpl"
      vars = {
        name        = local.service_accounts.router.name
        namespace   = var.namespace
        labels      = merge(local.release_labels, { "app.kubernetes.io/component" = "router" })
        annotations = local.service_accounts.router.annotations
      }
    }
    "serviceaccount-registry" = {
      enabled  = var.service_accounts.create
      template = "serviceaccount.yaml.tftpl"
      vars = {
        name        = local.service_accounts.registry.name
        namespace   = var.namespace
        labels      = merge(local.release_labels, { "app.kubernetes.io/component" = "registry" })
        annotations = local.service_accounts.registry.annotations
      }
    }
    "serviceaccount-node" = {
      enabled  = var.service_accounts.create
      template = "serviceaccount.yaml.tftpl"
      vars = {
        name        = local.service_accounts.node.name
        namespace   = var.namespace
        labels      = merge(local.release_labels, { "app.kubernetes.io/component" = "node" })
        annotations = local.service_accounts.node.annotations
      }
    }
    "configmap" = {
      enabled  = true
      template = "configmap.yaml.tftpl"
      vars = {
        name      = local.configmap
        namespace = var.namespace
        labels    = local.release_labels
        data      = local.config_data
      }
    }
    "grafana-dashboard" = {
      enabled  = var.monitoring.grafana_dashboard
      template = "data-configmap.yaml.tftpl"
      vars = {
        name      = "${var.name}-grafana-dashboard"
        namespace = var.namespace
        labels    = merge(local.release_labels, { "app.kubernetes.io/component" = "monitoring" }, var.monitoring.dashboard_labels)
        data      = { "taskmesh.json" = file("${path.module}/../../../grafana/taskmesh.json") }
      }
    }
    "prometheus-rules" = {
      enabled  = var.monitoring.prometheus_rules
      template = "data-configmap.yaml.tftpl"
      vars = {
        name      = "${var.name}-prometheus-rules"
        namespace = var.namespace
        labels    = merge(local.release_labels, { "app.kubernetes.io/component" = "monitoring" }, var.monitoring.rules_labels)
        data      = { "taskmesh-rules.yaml" = file("${path.module}/../../../prometheus/taskmesh-rules.yaml") }
      }
    }
    "router-deployment" = {
      enabled  = true
      template = "router-deployment.yaml.tftpl"
      vars = {
        name                       = "${var.name}-router"
        namespace                  = var.namespace
        instance                   = var.name
        labels                     = merge(local.release_labels, { "app.kubernetes.io/component" = "router" })
        pod_annotations            = local.pod_annotations
        service_account            = local.service_accounts.router.name
        image                      = local.image_ref
        image_pull_policy          = var.image_pull_policy
        port                       = local.router_port
        configmap                  = local.configmap
        admin_key_secret_name      = var.admin_key_secret.name
        admin_key_secret_key       = var.admin_key_secret.key
        cluster_key_secret_name    = var.cluster_key_secret.name
        cluster_key_secret_key     = var.cluster_key_secret.key
        redis_value_from           = local.redis_value_from
        termination_grace_period_s = local.router_grace_s
        prestop_delay_s            = var.router.prestop_delay_s
        node_selector              = var.router.node_selector
        tolerations                = local.router_tolerations
        resources = {
          requests = { cpu = var.router.cpu, memory = local.quantity.router_memory, "ephemeral-storage" = local.quantity.service_ephemeral }
          limits   = { cpu = var.router.cpu, memory = local.quantity.router_memory, "ephemeral-storage" = local.quantity.service_ephemeral }
        }
      }
    }
    "router-service" = {
      enabled  = true
      template = "service.yaml.tftpl"
      vars = {
        name        = "${var.name}-router"
        namespace   = var.namespace
        labels      = merge(local.release_labels, { "app.kubernetes.io/component" = "router" })
        annotations = var.router_service.annotations
        spec        = local.router_service_spec
      }
    }
    "router-hpa" = {
      enabled  = true
      template = "hpa.yaml.tftpl"
      vars = {
        name                   = "${var.name}-router"
        namespace              = var.namespace
        labels                 = merge(local.release_labels, { "app.kubernetes.io/component" = "router" })
        target                 = "${var.name}-router"
        min_replicas           = var.router.replicas
        max_replicas           = var.router.max_replicas
        metrics                = [local.cpu_metric.router]
        scale_down_window_s    = 300
      }
    }
    "router-pdb" = {
      enabled  = true
      template = "pdb.yaml.tftpl"
      vars = {
        name      = "${var.name}-router"
        namespace = var.namespace
        labels    = merge(local.release_labels, { "app.kubernetes.io/component" = "router" })
        selector = {
          "app.kubernetes.io/name"      = "taskmesh"
          "app.kubernetes.io/instance"  = var.name
          "app.kubernetes.io/component" = "router"
        }
      }
    }
    "registry-deployment" = {
      enabled  = true
      template = "registry-deployment.yaml.tftpl"
      vars = {
        name                       = "${var.name}-registry"
        namespace                  = var.namespace
        instance                   = var.name
        labels                     = merge(local.release_labels, { "app.kubernetes.io/component" = "registry" })
        pod_annotations            = local.pod_annotations
        service_account            = local.service_accounts.registry.name
        image                      = local.image_ref
        image_pull_policy          = var.image_pull_policy
        replicas                   = var.registry.replicas
        port                       = local.registry_port
        configmap                  = local.configmap
        admin_key_secret_name      = var.admin_key_secret.name
        admin_key_secret_key       = var.admin_key_secret.key
        cluster_key_secret_name    = var.cluster_key_secret.name
        cluster_key_secret_key     = var.cluster_key_secret.key
        redis_value_from           = local.redis_value_from
        termination_grace_period_s = local.registry_grace_s
        prestop_delay_s            = local.registry_prestop_s
        node_selector              = var.registry.node_selector
        tolerations                = local.registry_tolerations
        resources = {
          requests = { cpu = var.registry.cpu, memory = local.quantity.registry_memory, "ephemeral-storage" = local.quantity.service_ephemeral }
          limits   = { cpu = var.registry.cpu, memory = local.quantity.registry_memory, "ephemeral-storage" = local.quantity.service_ephemeral }
        }
      }
    }
    "registry-service" = {
      enabled  = true
      template = "service.yaml.tftpl"
      vars = {
        name        = "${var.name}-registry"
        namespace   = var.namespace
        labels      = merge(local.release_labels, { "app.kubernetes.io/component" = "registry" })
        annotations = {}
        spec        = local.registry_service_spec
      }
    }
    "registry-pdb" = {
      # A budget on a single replica would block every node drain.
      enabled  = var.registry.replicas > 1
      template = "pdb.yaml.tftpl"
      vars = {
        name      = "${var.name}-registry"
        namespace = var.namespace
        labels    = merge(local.release_labels, { "app.kubernetes.io/component" = "registry" })
        selector = {
          "app.kubernetes.io/name"      = "taskmesh"
          "app.kubernetes.io/instance"  = var.name
          "app.kubernetes.io/component" = "registry"
        }
      }
    }
    "node-cpu-deployment" = {
      enabled  = true
      template = "node-deployment.yaml.tftpl"
      vars = {
        name                       = "${var.name}-node-cpu"
        namespace                  = var.namespace
        instance                   = var.name
        pool                       = "cpu"
        labels                     = merge(local.release_labels, { "app.kubernetes.io/component" = "node", "taskmesh.io/pool" = "cpu" })
        pod_annotations            = local.pod_annotations
        service_account            = local.service_accounts.node.name
        image                      = local.image_ref
        image_pull_policy          = var.image_pull_policy
        args                       = ["node"]
        port                       = local.node_port
        configmap                  = local.configmap
        cluster_key_secret_name    = var.cluster_key_secret.name
        cluster_key_secret_key     = var.cluster_key_secret.key
        redis_value_from           = local.redis_value_from
        termination_grace_period_s = local.node_grace_s
        memory_budget_mb           = floor(var.cpu_pool.memory_mib * var.cpu_pool.memory_budget_percent / 100)
        cache_size                 = local.quantity.cpu_cache
        max_surge                  = 1
        max_unavailable            = 0
        node_selector              = var.cpu_pool.node_selector
        tolerations                = local.cpu_tolerations
        resources = {
          requests = { cpu = var.cpu_pool.cpu, memory = local.quantity.cpu_memory, "ephemeral-storage" = local.quantity.cpu_ephemeral }
          limits   = { cpu = var.cpu_pool.cpu, memory = local.quantity.cpu_memory, "ephemeral-storage" = local.quantity.cpu_ephemeral }
        }
      }
    }
    "node-cpu-hpa" = {
      enabled  = true
      template = "hpa.yaml.tftpl"
      vars = {
        name                   = "${var.name}-node-cpu"
        namespace              = var.namespace
        labels                 = merge(local.release_labels, { "app.kubernetes.io/component" = "node", "taskmesh.io/pool" = "cpu" })
        target                 = "${var.name}-node-cpu"
        min_replicas           = var.cpu_pool.replicas
        max_replicas           = var.cpu_pool.max_replicas
        metrics                = local.node_cpu_metrics
        scale_down_window_s    = 600
      }
    }
    "node-cpu-pdb" = {
      enabled  = true
      template = "pdb.yaml.tftpl"
      vars = {
        name      = "${var.name}-node-cpu"
        namespace = var.namespace
        labels    = merge(local.release_labels, { "app.kubernetes.io/component" = "node", "taskmesh.io/pool" = "cpu" })
        selector = {
          "app.kubernetes.io/name"      = "taskmesh"
          "app.kubernetes.io/instance"  = var.name
          "app.kubernetes.io/component" = "node"
          "taskmesh.io/pool"            = "cpu"
        }
      }
    }
    "node-gpu-deployment" = {
      enabled  = local.gpu_pool_enabled
      template = "node-deployment.yaml.tftpl"
      vars = {
        name                       = "${var.name}-node-gpu"
        namespace                  = var.namespace
        instance                   = var.name
        pool                       = "gpu"
        labels                     = merge(local.release_labels, { "app.kubernetes.io/component" = "node", "taskmesh.io/pool" = "gpu" })
        pod_annotations            = local.pod_annotations
        service_account            = local.service_accounts.node.name
        image                      = local.gpu_image_ref
        image_pull_policy          = var.image_pull_policy
        args                       = ["node", "--gpu"]
        port                       = local.node_port
        configmap                  = local.configmap
        cluster_key_secret_name    = var.cluster_key_secret.name
        cluster_key_secret_key     = var.cluster_key_secret.key
        redis_value_from           = local.redis_value_from
        termination_grace_period_s = local.node_grace_s
        memory_budget_mb           = try(floor(var.gpu_pool.memory_mib * var.gpu_pool.memory_budget_percent / 100), 0)
        cache_size                 = local.quantity.gpu_cache
        # A GPU is rarely idle: by default a rollout replaces pods in place
        # instead of waiting for a GPU that may never come (variables.tf).
        max_surge       = try(var.gpu_pool.max_surge, 0)
        max_unavailable = try(var.gpu_pool.max_surge, 0) == 0 ? 1 : 0
        node_selector   = try(var.gpu_pool.node_selector, {})
        tolerations     = local.gpu_tolerations
        resources = local.gpu_pool_enabled ? {
          requests = { cpu = var.gpu_pool.cpu, memory = local.quantity.gpu_memory, "ephemeral-storage" = local.quantity.gpu_ephemeral, "nvidia.com/gpu" = tostring(var.gpu_pool.gpus) }
          limits   = { cpu = var.gpu_pool.cpu, memory = local.quantity.gpu_memory, "ephemeral-storage" = local.quantity.gpu_ephemeral, "nvidia.com/gpu" = tostring(var.gpu_pool.gpus) }
        } : null
      }
    }
    "node-gpu-hpa" = {
      enabled  = local.gpu_pool_enabled
      template = "hpa.yaml.tftpl"
      vars = {
        name                   = "${var.name}-node-gpu"
        namespace              = var.namespace
        labels                 = merge(local.release_labels, { "app.kubernetes.io/component" = "node", "taskmesh.io/pool" = "gpu" })
        target                 = "${var.name}-node-gpu"
        min_replicas           = try(var.gpu_pool.replicas, 1)
        max_replicas           = try(var.gpu_pool.max_replicas, 1)
        metrics                = [local.cpu_metric.gpu]
        scale_down_window_s    = 900
      }
    }
    "node-gpu-pdb" = {
      enabled  = local.gpu_pool_enabled
      template = "pdb.yaml.tftpl"
      vars = {
        name      = "${var.name}-node-gpu"
        namespace = var.namespace
        labels    = merge(local.release_labels, { "app.kubernetes.io/component" = "node", "taskmesh.io/pool" = "gpu" })
        selector = {
          "app.kubernetes.io/name"      = "taskmesh"
          "app.kubernetes.io/instance"  = var.name
          "app.kubernetes.io/component" = "node"
          "taskmesh.io/pool"            = "gpu"
        }
      }
    }
    "networkpolicy-router" = {
      enabled  = var.network_policy.enabled
      template = "networkpolicy-router.yaml.tftpl"
      vars = {
        name      = "${var.name}-router"
        namespace = var.namespace
        instance  = var.name
        labels    = local.release_labels
        port      = local.router_port
      }
    }
    "networkpolicy-registry" = {
      enabled  = var.network_policy.enabled
      template = "networkpolicy-registry.yaml.tftpl"
      vars = {
        name      = "${var.name}-registry"
        namespace = var.namespace
        instance  = var.name
        labels    = local.release_labels
        port      = local.registry_port
        from      = local.registry_from
      }
    }
    "networkpolicy-node" = {
      enabled  = var.network_policy.enabled
      template = "networkpolicy-node.yaml.tftpl"
      vars = {
        name      = "${var.name}-node"
        namespace = var.namespace
        instance  = var.name
        labels    = local.release_labels
        port      = local.node_port
      }
    }
  }

  objects = {
    for key, m in local.manifests : key => yamldecode(templatefile("${path.module}/templates/${m.template}", m.vars))
    if m.enabled
  }
}

resource "kubernetes_manifest" "namespace" {
  count    = var.create_namespace ? 1 : 0
  manifest = local.objects["namespace"]
}

resource "kubernetes_manifest" "this" {
  for_each = { for key, object in local.objects : key => object if key != "namespace" }
  manifest = each.value

  # Deployments are applied when their pods are Ready (maxUnavailable: 0 rollouts).
  wait {
    rollout = contains(["Deployment"], each.value.kind)
  }

  timeouts {
    create = "15m"
    update = "15m"
    delete = "10m"
  }

  field_manager {
    name            = "terraform-taskmesh"
    force_conflicts = false
  }

  depends_on = [kubernetes_manifest.namespace]
}
