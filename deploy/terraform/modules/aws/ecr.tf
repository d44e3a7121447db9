# Image repositories for deploy/docker/Dockerfile (taskmesh) and
# deploy/docker/Dockerfile.gpu (taskmesh-gpu). Tags are immutable: a tag names
# one image forever, so a rollout is reproducible.

resource "aws_ecr_repository" "this" {
  for_each             = toset(["taskmesh", "taskmesh-gpu"])
  name                 = "${var.name}/${each.value}"
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.force_destroy

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.this.arn
  }

  tags = local.tags
}

resource "aws_ecr_lifecycle_policy" "this" {
  for_each   = aws_ecr_repository.this
  repository = each.value.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Expire untagged images after 14 days"
      selection = {
        tagStatus   = "untagged"
        countType   = "sinceImagePushed"
        countUnit   = "days"
        countNumber = 14
      }
      action = { type = "expire" }
    }]
  })
}
