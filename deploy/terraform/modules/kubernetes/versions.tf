terraform {
  # optional() object attributes with defaults (1.3); cross-variable references in
  # validation conditions (1.9).
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.38.0, < 3.0.0"
    }
  }
}
