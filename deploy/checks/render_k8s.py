#!/usr/bin/env python3
"""Render the kubernetes module's objects without Terraform and check them.

The module (deploy/terraform/modules/kubernetes) keeps each Kubernetes object as
a template in templates/ and lists, in the `local.manifests` table of main.tf,
which templates it renders with which variables. Each scenario of the scenarios
file (k8s-scenarios.yaml) names an example root configuration, the `module`
block in it that calls the module, and stubs for what exists only after apply.
For each scenario this script:

1. evaluates the example as `terraform plan` would (hcl_config.py, hcl_eval.py):
   its variables (defaults, then terraform.tfvars.example, then the scenario's
   overrides), the module block's arguments, the module's variables with their
   types, optional() defaults and validations, every local value and output;
   any error Terraform would report is a failure, with its file and line;
2. checks the table against the templates: every name a template uses is
   passed by its entry (templatefile() would fail otherwise), no entry passes a
   name its template ignores, every template file is used, and the templates
   use only `${name}`, `${name.attr}` and `${jsonencode(name)}` (every
   computation stays in main.tf);
3. renders every enabled entry with templatefile() and parses it as YAML 1.2
   (as Terraform's yamldecode does: `on`, `yes`, `0755` stay strings), and
   checks that local.objects, what the module applies, is exactly that;
4. validates every object against the Kubernetes JSON schemas of
   kubernetes-validate, in strict mode (unknown fields fail), for each
   Kubernetes version given, and checks that every resource quantity
   (requests, limits, emptyDir sizeLimit) is in the canonical form the API
   server returns ("4Gi", not "4096Mi"): kubernetes_manifest compares what it
   applied with what it reads back, and fails the apply on any difference;
5. checks the properties the module promises (rolling updates with
   maxUnavailable 0, or one GPU pod at a time; probes on /healthz and /readyz,
   the security context, the grace period against the drain time, secrets only
   by reference: the operator key on the router and registry and the cluster
   key, from one Secret, on the router, registry and every node; node ingress
   only from the release's routers and registry; selectors that match their
   pods, autoscaler and budget targets that exist, ServiceAccounts that exist);
6. writes the rendered objects to --out/<scenario>/ for checkov's Kubernetes
   checks.

Exit status 1 on any failure, with one line per problem.
"""
import argparse
import math
import os
import re
import json
import pathlib
import sys
from decimal import Decimal
from fractions import Fraction

import kubernetes_validate
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hcl_config import call_module  # noqa: E402
from hcl_eval import free_names, template_of, templatefile  # noqa: E402
from hcl_functions import EvalError, Yaml12Loader, eq  # noqa: E402

problems = []


def fail(msg):
    if msg not in problems:
        problems.append(msg)


# --- resource quantities, as Kubernetes' resource.Quantity canonicalises them ------------

QUANTITY = re.compile(r"^([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:(Ki|Mi|Gi|Ti|Pi|Ei)|e([+-]?[0-9]+)|([numkMGTPE]?))$")
BINARY = {"": 0, "Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def canonical_quantity(text):
    """The string the API server returns for a quantity (resource.Quantity's
    CanonicalizeBytes): the suffix family of the input (binary SI, decimal SI or
    an exponent), the value rounded up to nano units, then the largest unit
    that keeps the number whole. A binary value under 1024, or with a fraction,
    is written in decimal SI ("0.5Ki" is "512", "1.5" is "1500m")."""
    m = QUANTITY.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a quantity")
    sign, digits, binary, exponent, decimal = m.groups()
    value = Fraction(Decimal(digits))
    if binary:
        value *= 2 ** BINARY[binary]
    elif exponent is not None:
        value *= Fraction(10) ** int(exponent)
    else:
        value *= Fraction(10) ** DECIMAL[decimal]
    if (value * 10 ** 9).denominator != 1:
        value = Fraction(math.ceil(value * 10 ** 9), 10 ** 9)
    if value == 0:
        return "0"
    sign = "-" if sign == "-" else ""
    if binary and value >= 1024 and value.denominator == 1:
        n, e = int(value), 0
        while n % 1024 == 0 and e < 60:
            n, e = n // 1024, e + 10
        return f"{sign}{n}{next(k for k, v in BINARY.items() if v == e)}"
    n, e = value, 0
    while n.denominator != 1:
        n, e = n * 10, e - 1
    n = int(n)
    while n % 10 == 0:
        n, e = n // 10, e + 1
    n, e = n * 10 ** (e % 3), e - e % 3
    if exponent is not None or e not in DECIMAL.values():
        return f"{sign}{n}" + (f"e{e}" if e else "")
    return f"{sign}{n}{next(k for k, v in DECIMAL.items() if v == e)}"


def check_quantities(where, node, path=""):
    """resources.requests/limits and emptyDir.sizeLimit anywhere in an object."""
    if isinstance(node, list):
        for i, x in enumerate(node):
            check_quantities(where, x, f"{path}/{i}")
        return
    if not isinstance(node, dict):
        return
    found = []
    if isinstance(node.get("resources"), dict):
        for kind in ("requests", "limits"):
            for res, q in (node["resources"].get(kind) or {}).items():
                found.append((f"{path}/resources/{kind}/{res}", q))
    if isinstance(node.get("emptyDir"), dict) and "sizeLimit" in node["emptyDir"]:
        found.append((f"{path}/emptyDir/sizeLimit", node["emptyDir"]["sizeLimit"]))
    for p, q in found:
        try:
            canon = canonical_quantity(q)
        except ValueError as e:
            fail(f"{where} at {p}: {e}")
            continue
        if str(q) != canon:
            fail(f"{where} at {p}: quantity {q!r} is not canonical; the API server returns {canon!r} "
                 "and kubernetes_manifest fails the apply on the difference")
    for k, v in node.items():
        check_quantities(where, v, f"{path}/{k}")


# --- the module's promises -------------------------------------------------------------

def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


# Secrets passed in the environment: only ever by secretKeyRef, never a literal
# value and never through the ConfigMap (extra_config refuses these names).
SECRET_ENV = ("TASKMESH_ADMIN_KEY", "TASKMESH_CLUSTER_KEY")
# Which roles refuse to start without which secret.
REQUIRED_SECRET_ENV = {
    "TASKMESH_ADMIN_KEY": ("router", "registry"),
    "TASKMESH_CLUSTER_KEY": ("router", "registry", "node"),
}


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_node_ingress(where, policy, deployments):
    """A node NetworkPolicy admits this release's routers and registry only."""
    spec = policy["spec"]
    sel = spec.get("podSelector", {}).get("matchLabels", {})
    instance = sel.get("app.kubernetes.io/instance")
    if "Ingress" not in spec.get("policyTypes", []):
        fail(f"{where}: does not restrict ingress")
    ports = {p["containerPort"] for d in deployments.values()
             if labels_match(sel, d["spec"]["template"]["metadata"]["labels"])
             for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    for rule in spec.get("ingress", []):
        peers = rule.get("from")
        if not peers:
            fail(f"{where}: an ingress rule without `from` admits every source")
            continue
        for peer in peers:
            labels = peer.get("podSelector", {}).get("matchLabels", {})
            if set(peer) != {"podSelector"} or peer["podSelector"].get("matchExpressions") \
                    or labels.get("app.kubernetes.io/instance") != instance \
                    or labels.get("app.kubernetes.io/component") not in ("router", "registry"):
                fail(f"{where}: ingress peer {peer} is not this release's routers or registry")
        for port in rule.get("ports") or [None]:
            if port is None or port.get("port") not in ports:
                fail(f"{where}: ingress port {port} is not the node's port {sorted(ports)}")


def adapter_metrics():
    """External metric names deploy/prometheus-adapter/rules.yaml serves."""
    path = pathlib.Path(__file__).resolve().parent.parent / "prometheus-adapter" / "rules.yaml"
    rules = yaml.safe_load(path.read_text())
    return {r["name"]["as"] for r in rules.get("externalRules", [])}


def check_monitoring(scenario, objects):
    """The monitoring ConfigMaps carry deploy/grafana and deploy/prometheus as they are."""
    deploy = pathlib.Path(__file__).resolve().parent.parent
    files = {
        "taskmesh.json": (deploy / "grafana" / "taskmesh.json", json.loads),
        "taskmesh-rules.yaml": (deploy / "prometheus" / "taskmesh-rules.yaml", yaml.safe_load),
    }
    for o in objects:
        if o["kind"] != "ConfigMap":
            continue
        for key, value in o.get("data", {}).items():
            if key in files:
                path, parse = files[key]
                if parse(value) != parse(path.read_text()):
                    fail(f"{scenario}: ConfigMap {o['metadata']['name']} {key} differs from {path}")
                if key == "taskmesh.json" and o["metadata"]["labels"].get("grafana_dashboard") != "1":
                    fail(f"{scenario}: the dashboard ConfigMap lacks the label grafana_dashboard=1 its sidecar looks for")


def check_policies(scenario, objects):
    where = f"{scenario}"
    cluster_key_refs = set()
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    drain = None
    for o in objects:
        if o["kind"] == "ConfigMap" and "TASKMESH_DRAIN_TIMEOUT_S" in o.get("data", {}):
            drain = int(o["data"]["TASKMESH_DRAIN_TIMEOUT_S"])
    if drain is None:
        fail(f"{where}: no ConfigMap with TASKMESH_DRAIN_TIMEOUT_S")
        drain = 0
    for name, d in deployments.items():
        w = f"{where}: Deployment {name}"
        spec = d["spec"]
        strategy = spec.get("strategy", {})
        rolling = strategy.get("rollingUpdate", {})
        gpu = any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                  for c in spec["template"]["spec"]["containers"])
        if strategy.get("type") != "RollingUpdate":
            fail(f"{w}: not a rolling update")
        elif gpu and (rolling.get("maxSurge"), rolling.get("maxUnavailable")) not in ((1, 0), (0, 1)):
            # A GPU pool may replace pods in place (no spare GPU needed) or surge one.
            fail(f"{w}: a GPU rollout must surge one pod (maxSurge 1, maxUnavailable 0) "
                 "or replace one at a time (maxSurge 0, maxUnavailable 1)")
        elif not gpu and rolling.get("maxUnavailable") != 0:
            fail(f"{w}: rolling update without maxUnavailable: 0")
        selector = spec["selector"]["matchLabels"]
        pod = spec["template"]
        if any(pod["metadata"]["labels"].get(k) != v for k, v in selector.items()):
            fail(f"{w}: selector {selector} does not match the pod labels")
        pspec = pod["spec"]
        psc = pspec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            fail(f"{w}: pod securityContext lacks runAsNonRoot or the RuntimeDefault seccomp profile")
        mounts_ok = {v["name"] for v in pspec.get("volumes", []) if "emptyDir" in v}
        grace = pspec.get("terminationGracePeriodSeconds", 30)
        for c in pspec["containers"]:
            cw = f"{w} container {c['name']}"
            sc = c.get("securityContext", {})
            if not (sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                    and sc.get("capabilities", {}).get("drop") == ["ALL"]):
                fail(f"{cw}: securityContext must set readOnlyRootFilesystem, no privilege escalation, drop ALL")
            if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
                fail(f"{cw}: readiness probe is not GET /readyz")
            if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                fail(f"{cw}: liveness probe is not GET /healthz")
            res = c.get("resources", {})
            if not (res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory")
                    and res.get("limits", {}).get("memory")):
                fail(f"{cw}: needs cpu and memory requests and a memory limit")
            if not any(m["mountPath"] == "/var/lib/taskmesh" and m["name"] in mounts_ok for m in c.get("volumeMounts", [])):
                fail(f"{cw}: /var/lib/taskmesh (model cache, data dir) is not an emptyDir")
            env = env_of(c)
            for e in env.values():
                if e["name"] in SECRET_ENV and "value" in e:
                    fail(f"{cw}: {e['name']} has a literal value; it must come from a Secret")
            for name in SECRET_ENV:
                if name in env and "secretKeyRef" not in env[name].get("valueFrom", {}):
                    fail(f"{cw}: {name} must come from secretKeyRef")
            if "TASKMESH_CLUSTER_KEY_FILE" in env:
                fail(f"{cw}: TASKMESH_CLUSTER_KEY_FILE would override TASKMESH_CLUSTER_KEY from the Secret")
            redis = env.get("TASKMESH_REDIS", {})
            if "value" in redis or not redis.get("valueFrom"):
                fail(f"{cw}: TASKMESH_REDIS must come from the ConfigMap or a Secret")
            role = c["args"][0]
            for name, roles in REQUIRED_SECRET_ENV.items():
                if role in roles and name not in env:
                    fail(f"{cw}: the {role} needs {name} (from secretKeyRef); it refuses to start without it")
            ref = env.get("TASKMESH_CLUSTER_KEY", {}).get("valueFrom", {}).get("secretKeyRef")
            if ref:
                cluster_key_refs.add((ref.get("name"), ref.get("key")))
            prestop = 0
            hook = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
            if hook:
                prestop = int(hook[-1])
            if grace < prestop + drain + 1:
                fail(f"{cw}: terminationGracePeriodSeconds {grace} < preStop {prestop} + drain {drain} + slack")
            if role == "node":
                names = [e["name"] for e in c.get("env", [])]
                adv = env.get("TASKMESH_ADVERTISE", {}).get("value", "")
                if env.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "status.podIP" \
                        or "$(POD_IP)" not in adv or names.index("POD_IP") > names.index("TASKMESH_ADVERTISE"):
                    fail(f"{cw}: TASKMESH_ADVERTISE must be $(POD_IP):port with POD_IP from the downward API, defined first")
                if "--gpu" in c["args"] and not res.get("limits", {}).get("nvidia.com/gpu"):
                    fail(f"{cw}: a GPU node without an nvidia.com/gpu limit")
    if len(cluster_key_refs) > 1:
        fail(f"{where}: the Deployments take TASKMESH_CLUSTER_KEY from different Secrets {sorted(cluster_key_refs)}; "
             "nodes would answer 401 to routers holding another key")
    for o in objects:
        if o["kind"] == "ConfigMap":
            for name in SECRET_ENV + ("TASKMESH_CLUSTER_KEY_FILE",):
                if name in o.get("data", {}):
                    fail(f"{where}: ConfigMap {o['metadata']['name']} sets {name}; the keys come from Secrets only")
        elif o["kind"] == "NetworkPolicy" and \
                o["spec"].get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "node":
            check_node_ingress(f"{where}: NetworkPolicy {o['metadata']['name']}", o, deployments)
    accounts = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects if o["kind"] == "ServiceAccount"}
    for name, d in deployments.items():
        sa = (d["metadata"]["namespace"], d["spec"]["template"]["spec"].get("serviceAccountName", "default"))
        if accounts and sa not in accounts:
            fail(f"{where}: Deployment {name} runs as ServiceAccount {sa[1]}, which the module does not create")
    pods = [(d["metadata"]["namespace"], d["spec"]["template"]["metadata"]["labels"]) for d in deployments.values()]
    for o in objects:
        kind, name, ns = o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")
        if kind == "Service":
            sel = o["spec"]["selector"]
            if not any(pns == ns and all(l.get(k) == v for k, v in sel.items()) for pns, l in pods):
                fail(f"{where}: Service {name} selects no pod of this module")
        elif kind == "PodDisruptionBudget":
            sel = o["spec"]["selector"]["matchLabels"]
            if not any(pns == ns and all(l.get(k) == v for k, v in sel.items()) for pns, l in pods):
                fail(f"{where}: PodDisruptionBudget {name} selects no pod of this module")
        elif kind == "HorizontalPodAutoscaler":
            target = o["spec"]["scaleTargetRef"]["name"]
            if target not in deployments:
                fail(f"{where}: HorizontalPodAutoscaler {name} targets a missing Deployment {target}")
            elif "replicas" in deployments[target]["spec"]:
                fail(f"{where}: Deployment {target} sets replicas although {name} owns the count")
            for m in o["spec"].get("metrics", []):
                if m["type"] == "External":
                    metric = m["external"]["metric"]["name"]
                    if metric not in adapter_metrics():
                        fail(f"{where}: HorizontalPodAutoscaler {name} scales on {metric}, which "
                             f"deploy/prometheus-adapter/rules.yaml does not serve ({sorted(adapter_metrics())})")
        if ns is None and kind != "Namespace":
            fail(f"{where}: {kind} {name} has no namespace (kubernetes_manifest needs one)")


def template_style(tmpl, where):
    """The templates keep to ${name}, ${name.attr} and ${jsonencode(name)}: every
    computation is in main.tf, where the scenarios evaluate it."""
    def simple(e):
        return e[0] == "var" or (e[0] == "path" and e[1][0] == "var" and all(s[0] == "attr" for s in e[2]))
    for part in tmpl[1]:
        if isinstance(part, str):
            continue
        if part[0] in ("tif", "tfor"):
            fail(f"{where}: template directives (%{{...}}) are not used by this module; "
                 "compute the value in main.tf and pass it in")
        elif not (simple(part) or (part[0] == "call" and part[1] == "jsonencode" and len(part[2]) == 1
                                   and simple(part[2][0]) and not part[3])):
            fail(f"{where}: unsupported template expression: only ${{name}}, ${{name.attr}} and "
                 "${jsonencode(name)} are allowed")


def stub_tree(flat, where):
    """{"module.aws": v, "data.terraform_remote_state.infra": v, "kubernetes_secret_v1.redis": v}
    as the nested mapping hcl_config takes."""
    tree = {}
    for addr, value in (flat or {}).items():
        parts = addr.split(".")
        if len(parts) != (3 if parts[0] == "data" else 2):
            raise EvalError(f"{where}: stub address {addr!r} is not module.NAME, data.TYPE.NAME or TYPE.NAME")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def scenario_module(name, sc, base, module_dir, found):
    """Evaluate a scenario: the module's instance; problems are appended to found."""
    root = os.path.relpath(os.path.normpath(os.path.join(base, sc["root"])))
    outputs_of = {k: os.path.relpath(os.path.normpath(os.path.join(base, v)))
                  for k, v in (sc.get("outputs_of") or {}).items()}
    _, child = call_module(root, sc["module"], found, variables=sc.get("variables"),
                           tfvars=sc.get("tfvars", "terraform.tfvars.example"),
                           stubs=stub_tree(sc.get("stubs"), name), key=sc.get("key"), outputs_of=outputs_of)
    if os.path.abspath(child.cfg.dir) != os.path.abspath(module_dir):
        raise EvalError(f"module.{sc['module']} of {root} calls {child.cfg.dir}, not {module_dir}")
    return child


def validate(where, obj, versions):
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            fail(f"{where} ({obj.get('kind')}) invalid for Kubernetes {version} at /{path}: {e.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError,
                kubernetes_validate.VersionNotSupportedError) as e:
            fail(f"{where}: {e.message}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", required=True, help="the kubernetes module's directory")
    ap.add_argument("--scenarios", required=True, help="the scenarios file (k8s-scenarios.yaml)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--kubernetes-version", action="append", required=True)
    args = ap.parse_args()

    with open(args.scenarios) as f:
        scenarios = yaml.safe_load(f)["scenarios"]
    base = os.path.dirname(os.path.abspath(args.scenarios))
    tdir = os.path.join(args.module, "templates")
    used_templates, counts = set(), {}
    for scenario, sc in scenarios.items():
        found, table, objects_applied = [], None, None
        try:
            module = scenario_module(scenario, sc, base, args.module, found)
            table = module.local("manifests")
            objects_applied = module.local("objects")
        except EvalError as e:  # reported by the module already, unless it stopped the evaluation
            if not getattr(e, "reported", False):
                found.append(str(e))
        for p in found:
            fail(f"{scenario}: {p}")
        if table is None:
            continue
        outdir = os.path.join(args.out, scenario)
        os.makedirs(outdir, exist_ok=True)
        objects, rendered = [], {}
        for key, entry in table.items():
            where = f"{scenario}/{key}"
            path = os.path.join(tdir, entry["template"])
            used_templates.add(entry["template"])
            try:
                used = free_names(template_of(path))
                template_style(template_of(path), f"templates/{entry['template']}")
            except EvalError as e:
                fail(f"{where}: {e}")
                continue
            passed = set(entry["vars"])
            if used - passed:
                fail(f"main.tf {key}: {entry['template']} uses {sorted(used - passed)}, which main.tf does not pass")
            if passed - used:
                fail(f"main.tf {key}: passes {sorted(passed - used)}, which {entry['template']} does not use")
            if not entry["enabled"] or used - passed:
                continue
            try:
                text = templatefile(path, entry["vars"])
                obj = yaml.load(text, Loader=Yaml12Loader)
            except (EvalError, yaml.YAMLError) as e:
                fail(f"{where}: {e}")
                continue
            validate(where, obj, args.kubernetes_version)
            check_quantities(f"{where} ({obj.get('kind')})", obj)
            objects.append(obj)
            rendered[key] = obj
            with open(os.path.join(outdir, f"{key}.yaml"), "w") as f:
                f.write(text)
        if objects_applied is not None and (set(objects_applied) != set(rendered)
                                            or not all(eq(objects_applied[k], rendered[k]) for k in rendered)):
            diff = sorted(set(objects_applied) ^ set(rendered)) or [k for k in rendered if not eq(objects_applied[k], rendered[k])]
            fail(f"{scenario}: local.objects (what the module applies) differs from the enabled entries of "
                 f"local.manifests rendered, at {diff}")
        check_policies(scenario, objects)
        check_monitoring(scenario, objects)
        kinds = {}
        for o in objects:
            kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
        counts[scenario] = (len(objects), kinds)
    for tname in sorted(os.listdir(tdir)):
        if used_templates and tname not in used_templates:
            fail(f"templates/{tname} is not used by main.tf")

    for scenario, (n, kinds) in counts.items():
        summary = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
        print(f"  {scenario}: {n} objects rendered ({summary}) from {scenarios[scenario]['root']}")
    print(f"  schemas: Kubernetes {', '.join(args.kubernetes_version)} (strict); "
          f"{len(used_templates)} templates checked against main.tf")
    if problems:
        for p in problems:
            print(f"FAIL: {p}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
