#!/usr/bin/env python3
"""Inputs and outputs tables of a Terraform module's README, from its .tf files.

Writes (--write) or checks (default) the part of README.md between
<!-- BEGIN_TF_DOCS --> and <!-- END_TF_DOCS -->, so the tables never drift from
variables.tf and outputs.tf. Exit status 1 when a README is out of date.
"""
import argparse
import glob
import json
import os
import re
import sys

import hcl2

BEGIN, END = "<!-- BEGIN_TF_DOCS -->", "<!-- END_TF_DOCS -->"


def unq(v):
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    return v


def clean(v):
    if isinstance(v, dict):
        return {unq(k): clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [clean(x) for x in v]
    return unq(v)


def cell(text):
    return str(text).replace('\\"', '"').replace("|", "\\|").replace("\n", " ")


def type_of(t):
    t = re.sub(r"^\$\{(.*)\}$", r"\1", str(t), flags=re.S)
    t = re.sub(r"\s+", " ", t)
    m = re.match(r"^(object|list\(object|map\(object)", t)
    if m:
        return {"object": "object({...})", "list(object": "list(object({...}))", "map(object": "map(object({...}))"}[m.group(1)]
    return t


def tables(module):
    variables, outputs = [], []
    for path in sorted(glob.glob(os.path.join(module, "*.tf"))):
        with open(path) as f:
            doc = hcl2.load(f)
        for block in doc.get("variable", []):
            for name, body in block.items():
                variables.append((unq(name), body))
        for block in doc.get("output", []):
            for name, body in block.items():
                outputs.append((unq(name), body))
    lines = ["## Inputs", "", "| Name | Description | Type | Default | Required |", "|---|---|---|---|:---:|"]
    for name, body in sorted(variables, key=lambda v: ("default" in v[1], v[0])):
        required = "default" not in body
        default = "" if required else f"`{json.dumps(clean(body['default']))}`"
        lines.append(f"| `{name}` | {cell(unq(body.get('description', '')))} | `{cell(type_of(body.get('type', 'any')))}` "
                     f"| {cell(default)} | {'yes' if required else 'no'} |")
    lines += ["", "## Outputs", "", "| Name | Description |", "|---|---|"]
    for name, body in sorted(outputs):
        lines.append(f"| `{name}` | {cell(unq(body.get('description', '')))} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    ap.add_argument("modules", nargs="+")
    args = ap.parse_args()
    stale = 0
    for module in args.modules:
        readme = os.path.join(module, "README.md")
        text = open(readme).read()
        if BEGIN not in text or END not in text:
            print(f"FAIL: {readme} has no {BEGIN} ... {END} section")
            stale += 1
            continue
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        new = f"{head}{BEGIN}\n{tables(module)}\n{END}{tail}"
        if new != text:
            if args.write:
                open(readme, "w").write(new)
                print(f"  wrote {readme}")
            else:
                print(f"FAIL: {readme}: inputs/outputs tables are out of date "
                      f"(python3 deploy/checks/tfdocs.py --write {module})")
                stale += 1
        else:
            print(f"  {readme}: inputs/outputs tables match the .tf files")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
