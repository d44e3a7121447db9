# Network load balancer in front of the routers, HTTP/2 end to end:
#
#   client --TLS, ALPN h2 (or http/1.1)--> NLB :443 --TCP--> NodePort on the CPU
#   nodes --kube-proxy--> router pod :8080 (h2c with prior knowledge, or HTTP/1.1)
#
# The NLB terminates TLS with the ACM certificate and forwards the decrypted
# bytes as they are: a client that negotiated h2 sends the HTTP/2 connection
# preface, which the router's h2c listener accepts; an HTTP/1.1 client (only
# with HTTP2Preferred) sends HTTP/1.1, which the same port also serves. Neither
# protocol is translated on the way.
#
# The target group is of type instance, attached to the CPU node group's Auto
# Scaling group, on the router Service's fixed NodePort (kubernetes module:
# router_service = { type = "NodePort", node_port = var.router_node_port }).
# This needs no in-cluster load balancer controller, and every piece is in
# Terraform. The health check is GET /readyz through the NodePort.

resource "aws_security_group" "nlb" {
  name_prefix = "${var.name}-nlb-"
  description = "${var.name}: router load balancer"
  vpc_id      = aws_vpc.this.id
  tags        = merge(local.tags, { Name = "${var.name}-nlb" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "nlb_tls" {
  for_each          = toset(var.ingress_cidrs)
  security_group_id = aws_security_group.nlb.id
  description       = "TLS (HTTP/2 and HTTP/1.1) from clients"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "nlb_to_nodes" {
  security_group_id            = aws_security_group.nlb.id
  description                  = "To the router NodePort on the EKS nodes (traffic and health checks)"
  ip_protocol                  = "tcp"
  from_port                    = var.router_node_port
  to_port                      = var.router_node_port
  referenced_security_group_id = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}

resource "aws_vpc_security_group_ingress_rule" "nodes_from_nlb" {
  security_group_id            = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
  description                  = "Router NodePort from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = var.router_node_port
  to_port                      = var.router_node_port
  referenced_security_group_id = aws_security_group.nlb.id
}

resource "aws_lb" "router" {
  #checkov:skip=CKV2_AWS_28:WAF web ACLs attach to Application Load Balancers, API Gateway and CloudFront, not to Network Load Balancers; an ALB would end HTTP/2 at the balancer instead of carrying it to the router.
  name                             = "${var.name}-router"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = aws_subnet.public[*].id
  security_groups                  = [aws_security_group.nlb.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection

  access_logs {
    bucket  = aws_s3_bucket.logs.id
    prefix  = "nlb"
    enabled = true
  }

  tags = local.tags

  depends_on = [aws_s3_bucket_policy.logs]
}

resource "aws_lb_target_group" "router" {
  name                 = "${var.name}-router"
  port                 = var.router_node_port
  protocol             = "TCP"
  target_type          = "instance"
  vpc_id               = aws_vpc.this.id
  deregistration_delay = var.drain_timeout_s + 15

  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = "traffic-port"
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = local.tags
}

resource "aws_lb_listener" "router_tls" {
  load_balancer_arn = aws_lb.router.arn
  port              = 443
  protocol          = "TLS"
  certificate_arn   = var.certificate_arn
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  alpn_policy       = var.alpn_policy

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.router.arn
  }

  tags = local.tags
}

resource "aws_autoscaling_attachment" "router" {
  #checkov:skip=CKV2_AWS_15:The Auto Scaling group belongs to the EKS managed node group, which sets its health checks (EC2) and replaces nodes itself; ELB health checks would terminate every node whenever the routers are unready, turning a router outage into a node outage.
  autoscaling_group_name = aws_eks_node_group.cpu.resources[0].autoscaling_groups[0].name
  lb_target_group_arn    = aws_lb_target_group.router.arn
}
