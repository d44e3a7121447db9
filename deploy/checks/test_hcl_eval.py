"""Tests of hcl_eval / hcl_config / hcl_functions and of render_k8s's quantity
canonicalisation. Run by scripts/deploy-checks.sh (step 3):
PYTHONPATH=.deps/deploy-tools/lint python3 -m unittest discover -s deploy/checks -p 'test_hcl_eval.py'
"""
import glob
import os
import unittest

import hcl_config
from hcl_config import HCL_OPTIONS, convert, load_hcl, parse_type
from hcl_eval import Scope, evaluate, free_names, parse_expr, parse_template, render_parts_str, to_node
from hcl_functions import EvalError

HERE = os.path.dirname(os.path.abspath(__file__))
TERRAFORM = os.path.join(HERE, "..", "terraform")


def ev(text, **names):
    return evaluate(parse_expr(text), Scope({"var": names}))


def typed(type_text, value):
    dropped = []
    return convert(value, parse_type(parse_expr(type_text)), "var.x", dropped), dropped


class Expressions(unittest.TestCase):
    def test_precedence_and_arithmetic(self):
        self.assertEqual(ev("1 + 2 * 3 - 4 / 2"), 5)
        self.assertEqual(ev("(1 + 2) * -3 % 4"), -1)  # the sign of the dividend, as Go
        self.assertIs(ev("!false && 1 < 2 || false"), True)
        self.assertEqual(ev("4096 / 1024"), 4)
        self.assertEqual(ev("1536 / 1024"), 1.5)
        self.assertIs(ev('1 == "1"'), False)
        self.assertIs(ev("true == 1"), False)

    def test_conditionals(self):
        self.assertEqual(ev('var.a == null ? "none" : var.a', a=None), "none")
        self.assertEqual(ev('var.a != null ? "${var.a}Gi" : "x"', a=4), "4Gi")
        self.assertEqual(ev("true ? 1 : false ? 2 : 3"), 1)
        with self.assertRaises(EvalError):
            ev("var.a ? 1 : 2", a=None)

    def test_logical_operators_evaluate_both_sides(self):
        # Terraform before 1.12 does not short-circuit: this fails there.
        with self.assertRaises(EvalError):
            ev("var.a != null && var.a.b", a=None)

    def test_templates(self):
        self.assertEqual(ev('"a\\"b\\n${var.x}-$${y}"', x=1), 'a"b\n1-${y}')
        self.assertEqual(ev('"${var.x}"', x=[1]), [1])  # a lone interpolation keeps its type
        self.assertEqual(ev('"%{ if var.x }yes%{ else }no%{ endif }"', x=False), "no")
        self.assertEqual(ev('"%{ for k, v in var.m }${k}=${v};%{ endfor }"', m={"b": 2, "a": 1}), "a=1;b=2;")
        tmpl = parse_template("x: ${jsonencode(v)}\nn: ${n}\n")
        self.assertEqual(free_names(tmpl), {"v", "n"})
        self.assertEqual(render_parts_str(tmpl[1], Scope({"v": {"b": 1, "a": "<"}, "n": 2})),
                         'x: {"a":"\\u003c","b":1}\nn: 2\n')

    def test_heredoc(self):
        node = to_node('"<<-EOT\n    a ${var.x}\n      b\n  EOT"', "t")
        self.assertEqual(evaluate(node, Scope({"var": {"x": 1}})), "a 1\n  b\n")

    def test_for_expressions(self):
        self.assertEqual(ev("[for x in var.l : x * 2 if x > 1]", l=[1, 2, 3]), [4, 6])
        self.assertEqual(ev("{for k, v in var.m : v => k...}", m={"a": 1, "b": 1, "c": 2}), {"1": ["a", "b"], "2": ["c"]})
        self.assertEqual(ev("[for k, v in var.m : k]", m={"z": 1, "a": 2}), ["a", "z"])  # key order
        self.assertEqual(ev("{for t in var.l : t.k => t if t.v != null}", l=[{"k": "a", "v": 1}, {"k": "b", "v": None}]),
                         {"a": {"k": "a", "v": 1}})
        self.assertEqual(ev("var.l[*].k", l=[{"k": 1}, {"k": 2}]), [1, 2])
        with self.assertRaises(EvalError):
            ev("{for v in var.l : v => v}", l=[1, 1])

    def test_try_and_can(self):
        self.assertEqual(ev('try(var.p.cpu, "1")', p=None), "1")
        self.assertEqual(ev("try(var.p.cpu, 0)", p={"cpu": 3}), 3)
        self.assertIs(ev('can(regex("^[a-z]+$", var.s))', s="Abc"), False)
        self.assertIs(ev('can(regex("^[a-z]+$", var.s))', s="abc"), True)
        with self.assertRaises(EvalError):
            ev("try(var.p.a, var.p.b)", p=None)

    def test_functions(self):
        self.assertEqual(ev('merge({a = 1}, null, {b = 2}, {a = 3})'), {"a": 3, "b": 2})
        self.assertEqual(ev('coalesce(null, "", "x")'), "x")
        self.assertEqual(ev('format("%dGi-%s-%05.1f", 4, "a", 2.25)'), "4Gi-a-002.2")
        self.assertEqual(ev('replace("a-b-c", "/-(b)/", "+$1")'), "a+b-c")
        self.assertEqual(ev('cidrhost("10.0.0.0/16", 5)'), "10.0.0.5")
        self.assertEqual(ev('cidrsubnet("10.40.0.0/16", 4, 2)'), "10.40.32.0/20")
        self.assertIs(ev('can(cidrhost("10.0.0.0", 0))'), False)
        self.assertEqual(ev("floor(4096 * 75 / 100)"), 3072)
        self.assertEqual(ev("tostring(30)"), "30")
        self.assertEqual(ev('sort(toset(["b", "a", "b"]))'), ["a", "b"])
        self.assertEqual(ev('yamldecode("a: on\\nb: yes\\nc: 1\\n")'), {"a": "on", "b": "yes", "c": 1})


class Types(unittest.TestCase):
    def test_optional_defaults_in_nested_objects_lists_and_maps(self):
        t = """object({
          create = optional(bool, true)
          router = optional(object({ name = optional(string), annotations = optional(map(string), {}) }), {})
          tolerations = optional(list(object({ key = optional(string), operator = optional(string, "Equal") })),
                                 [{ key = "nvidia.com/gpu", operator = "Exists" }])
          pools = optional(map(object({ cpu = optional(string, "2"), n = number })), {})
        })"""
        value, dropped = typed(t, {"pools": {"a": {"n": "3"}}, "tolerations": [{"key": "k"}]})
        self.assertEqual(value, {"create": True, "router": {"name": None, "annotations": {}},
                                 "tolerations": [{"key": "k", "operator": "Equal"}],
                                 "pools": {"a": {"cpu": "2", "n": 3}}})
        self.assertEqual(typed(t, {})[0]["tolerations"], [{"key": "nvidia.com/gpu", "operator": "Exists"}])
        self.assertEqual(typed(t, {"router": None})[0]["router"], {"name": None, "annotations": {}})
        self.assertEqual(dropped, [])

    def test_conversions_and_errors(self):
        self.assertEqual(typed("map(string)", {"a": 1, "b": True}), ({"a": "1", "b": "true"}, []))
        self.assertEqual(typed("object({a = number})", {"a": 1, "typo": 2}), ({"a": 1}, ["var.x.typo"]))
        with self.assertRaises(EvalError):
            typed("object({a = number})", {})
        with self.assertRaises(EvalError):
            typed("number", "x")
        self.assertIsNone(typed("object({a = number})", None)[0])


class Configurations(unittest.TestCase):
    def test_every_expression_and_template_of_the_tree_parses(self):
        files = glob.glob(os.path.join(TERRAFORM, "**", "*.tf"), recursive=True)
        self.assertTrue(files)
        count = 0

        def visit(node, where):
            nonlocal count
            if isinstance(node, dict):
                for k, v in node.items():
                    if k.startswith("__"):
                        continue
                    if isinstance(v, (dict, list)):
                        visit(v, where)
                    else:
                        to_node(v, where)
                        count += 1
            elif isinstance(node, list):
                for x in node:
                    visit(x, where)
        for path in files:
            visit(load_hcl(path)[1], path)
        for path in glob.glob(os.path.join(TERRAFORM, "**", "*.tftpl"), recursive=True):
            with open(path) as f:
                parse_template(f.read(), path)
        self.assertGreater(count, 100)

    def test_module_call(self):
        root = os.path.join(TERRAFORM, "examples", "existing-cluster")
        if not os.path.isdir(root):
            self.skipTest("no examples/existing-cluster")
        problems = []
        _, child = hcl_config.call_module(root, "taskmesh", problems)
        self.assertEqual(problems, [])
        self.assertEqual(child.var("name"), "taskmesh")
        self.assertIn("manifests", child.all_locals())
        self.assertIs(HCL_OPTIONS.wrap_objects, True)


class Quantities(unittest.TestCase):
    def test_canonical_forms(self):
        from render_k8s import canonical_quantity as c
        cases = {"4096Mi": "4Gi", "1000m": "1", "2048Ki": "2Mi", "1.5Gi": "1536Mi", "512Mi": "512Mi",
                 "22016Mi": "22016Mi", "1Ki": "1Ki", "0.5Ki": "512", "1.5Ki": "1536", "1": "1", "3": "3",
                 "500m": "500m", "0.5": "500m", "1.5": "1500m", "1000": "1k", "100": "100", "1e3": "1e3",
                 "1500e-3": "1500e-3", "0": "0", "0Mi": "0", "0.1m": "100u", "1.0000000001": "1000000001n",
                 "12Gi": "12Gi", "1024Mi": "1Gi", "10240Mi": "10Gi", "2000k": "2M", "-1000m": "-1"}
        for given, want in cases.items():
            self.assertEqual(c(given), want, given)
        with self.assertRaises(ValueError):
            c("4 Gi")


if __name__ == "__main__":
    unittest.main()
