#!/usr/bin/env python3
"""Unit tests of tf_refs.py (unittest; Terraform trees in temporary directories).

    python3 deploy/checks/test_tf_refs.py
"""
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tf_refs  # noqa: E402

MODULE = {
    "variables.tf": """
        variable "name" {
          type = string
        }
        variable "size" {
          type    = number
          default = 1
        }
        variable "optional" {
          type    = string
          default = null
        }
    """,
    "main.tf": """
        resource "null_resource" "this" {
          triggers = { name = var.name, size = var.size, optional = coalesce(var.optional, "x") }
        }
    """,
    "outputs.tf": """
        output "id" {
          value = null_resource.this.id
        }
    """,
}


class TfRefsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.root = self.tmp.name

    def write(self, rel, text):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text).lstrip("\n"))
        return path

    def tree(self, root_files, module_files=None):
        for name, text in (module_files or {}).items():
            self.write(f"modules/m/{name}", text)
        for name, text in root_files.items():
            self.write(f"root/{name}", text)

    def check(self):
        errors, warnings, _ = tf_refs.check([self.root])
        return ([f"{os.path.relpath(f, self.root) if os.path.isabs(f) else os.path.basename(f)}:{l}: {m}" for f, l, m in errors],
                [m for _, _, m in warnings])

    def assertProblems(self, expected):
        errors, _ = self.check()
        self.assertEqual(len(errors), len(expected), errors)
        for got, want in zip(errors, expected):
            self.assertTrue(got.endswith(want), f"{got!r} does not end with {want!r}\nall: {errors}")

    # --- what must fail ---------------------------------------------------------------

    def test_undeclared_data_source(self):
        self.tree({"main.tf": """
            data "aws_region" "current" {}

            locals {
              here   = data.aws_region.current.region
              region = data.aws_region.region
            }

            output "region" {
              value = "${local.here}/${local.region}"
            }
        """})
        self.assertProblems(["main.tf:5: unresolved reference data.aws_region.region"])

    def test_undeclared_local(self):
        self.tree({"main.tf": """
            locals {
              a = 1
            }

            output "x" {
              value = local.a + local.b
            }
        """})
        self.assertProblems(["main.tf:6: unresolved reference local.b"])

    def test_module_argument_not_declared_by_the_module(self):
        self.tree({"main.tf": """
            module "m" {
              source = "../modules/m"
              name   = "x"
              colour = "blue"
            }

            output "id" {
              value = module.m.id
            }
        """}, MODULE)
        self.assertProblems(['main.tf:4: module "m": unsupported argument "colour"'
                             f' (no variable "colour" in {os.path.join(self.root, "modules", "m")})'])

    def test_module_required_argument_missing(self):
        self.tree({"main.tf": """
            module "m" {
              source = "../modules/m"
              size   = 2
            }
        """}, MODULE)
        errors, _ = self.check()
        self.assertEqual(len(errors), 1, errors)
        self.assertIn('main.tf:1: module "m": missing required argument "name"', errors[0])

    def test_module_output_that_does_not_exist(self):
        self.tree({"main.tf": """
            module "m" {
              source = "../modules/m"
              count  = 1
              name   = "x"
            }

            output "ok" {
              value = module.m[0].id
            }

            output "bad" {
              value = module.m[0].out
            }
        """}, MODULE)
        errors, _ = self.check()
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("main.tf:12: unresolved reference module.m.out (no output \"out\"", errors[0])

    def test_undeclared_variable_resource_and_module(self):
        self.tree({"main.tf": """
            resource "aws_s3_bucket" "models" {
              bucket = var.bucket
            }

            output "a" {
              value = [aws_s3_bucket.models.id, aws_s3_bucket.logs.id, module.nope.x]
            }
        """})
        self.assertProblems([
            "main.tf:2: unresolved reference var.bucket",
            "main.tf:6: unresolved reference aws_s3_bucket.logs",
            "main.tf:6: unresolved reference module.nope",
        ])

    def test_each_and_count_outside_their_blocks(self):
        self.tree({"main.tf": """
            resource "null_resource" "a" {
              for_each = toset(["x"])
              triggers = { k = each.key, i = count.index }
            }

            resource "null_resource" "b" {
              count    = 2
              triggers = { i = count.index, v = each.value }
            }

            output "o" {
              value = [null_resource.a, null_resource.b, self.id]
            }
        """})
        self.assertProblems([
            "main.tf:3: count.index used outside a block with count",
            "main.tf:8: each.value used outside a block with for_each",
            "main.tf:12: self used outside a provisioner, connection or postcondition block",
        ])

    def test_references_in_interpolations_and_heredocs(self):
        self.tree({"main.tf": """
            locals {
              a = "${var.missing_in_string}"
              b = <<-EOT
                text var.not_a_reference ${local.missing_in_heredoc}
                %{ if var.missing_in_directive }yes%{ endif }
              EOT
            }
        """})
        self.assertProblems([
            "main.tf:2: unresolved reference var.missing_in_string",
            "main.tf:4: unresolved reference local.missing_in_heredoc",
            "main.tf:5: unresolved reference var.missing_in_directive",
        ])

    def test_command_line_exit_status_and_format(self):
        self.tree({"main.tf": """
            data "aws_region" "current" {}

            output "r" {
              value = data.aws_region.region.name
            }
        """})
        run = subprocess.run([sys.executable, os.path.join(HERE, "tf_refs.py"), self.root],
                             capture_output=True, text=True, cwd=self.root)
        self.assertEqual(run.returncode, 1, run)
        self.assertEqual(run.stdout.splitlines(), ["root/main.tf:4: unresolved reference data.aws_region.region"])

    # --- what must pass ------------------------------------------------------------------

    def test_for_expression_variables_are_local(self):
        self.tree({"main.tf": """
            variable "pools" {
              type = map(object({ tolerations = list(map(string)) }))
            }

            locals {
              cleaned = {
                for name, pool in var.pools : name => [
                  for t in pool.tolerations : { for k, v in t : k => v if v != null }
                ]
                if length(pool.tolerations) > 0
              }
              zones = [for i in range(3) : "zone-${i}"]
              text  = <<-EOT
                %{ for z in local.zones ~}
                ${z}
                %{ endfor ~}
              EOT
              keys = { for key, object in local.cleaned : key => object }
              part = provider::aws::arn_parse("arn:aws:s3:::b").region
              head = merge({ for z in local.zones : z => z }, {}).a
            }

            output "o" {
              value = [local.text, local.keys, local.part, local.head, [for x in local.zones : upper(x)]]
            }
        """})
        self.assertProblems([])

    def test_dynamic_blocks_meta_arguments_and_literals_pass(self):
        self.tree({"main.tf": """
            variable "rules" {
              type    = list(object({ port = number }))
              default = []

              validation {
                condition     = alltrue([for r in var.rules : r.port > 0])
                error_message = "var.nothing here is only text, and so is $${local.escaped}."
              }
            }

            resource "aws_security_group" "this" {
              count = 1
              name  = "sg-${count.index}" # var.in_a_comment
              /* local.in_a_block_comment */

              dynamic "ingress" {
                for_each = var.rules
                content {
                  from_port = ingress.value.port
                  to_port   = ingress.value.port
                }
              }

              dynamic "egress" {
                for_each = var.rules
                iterator = rule
                content {
                  from_port = rule.value.port
                }
              }

              lifecycle {
                ignore_changes = [tags, ingress[0].description]
              }

              provisioner "local-exec" {
                command = "echo ${self.id} ${path.module} ${terraform.workspace}"
              }
            }

            resource "aws_instance" "a" {
              for_each = { for i, sg in aws_security_group.this : tostring(i) => sg.id }
              tags     = { Name = each.key, sg = each.value }
              provider = aws.west
              depends_on = [aws_security_group.this]

              lifecycle {
                postcondition {
                  condition     = self.id != ""
                  error_message = "no id"
                }
              }
            }

            output "ids" {
              value = { for k, i in aws_instance.a : k => i.id }
            }
        """})
        self.assertProblems([])

    def test_module_with_every_required_argument_passes(self):
        self.tree({"main.tf": """
            module "m" {
              source   = "../modules/m"
              for_each = toset(["a", "b"])
              name     = each.key
              providers = {
                aws = aws.west
              }
            }

            output "ids" {
              value = { for k, m in module.m : k => m.id }
            }

            output "one" {
              value = module.m["a"].id
            }
        """}, MODULE)
        self.assertProblems([])

    def test_unused_variables_and_locals_are_warnings(self):
        self.tree({"main.tf": """
            variable "used" {
              type = string
            }
            variable "unused" {
              type = string
              validation {
                condition     = length(var.unused) > 0
                error_message = "empty"
              }
            }
            locals {
              kept    = var.used
              dropped = 1
            }
            output "o" {
              value = local.kept
            }
        """})
        errors, warnings = self.check()
        self.assertEqual(errors, [])
        self.assertEqual(warnings, ['warning: variable "unused" is declared but never used',
                                    'warning: local "dropped" is declared but never used'])


if __name__ == "__main__":
    unittest.main()
