#!/usr/bin/env python3
"""Render the kubernetes module's objects without Terraform and check them.

The module (deploy/terraform/modules/kubernetes) keeps each Kubernetes object as
a template in templates/ and lists, in the `local.manifests` table of main.tf,
which templates it renders and the variable names it passes to each. This
script:

1. reads that table with python-hcl2 and checks it against the templates: every
   `${name}` a template uses is passed by main.tf (templatefile() would fail at
   plan time otherwise), no name is passed that the template ignores, and every
   template file is used;
2. renders every entry of every scenario in k8s-values.yaml (example values, the
   names checked against main.tf's) with the subset of Terraform's template
   syntax the templates are allowed to use: `${name}`, `${name.attr}` and
   `${jsonencode(name)}` (anything else fails, so the templates cannot drift into
   syntax this renderer would get wrong);
3. parses the result as YAML 1.2 (as Terraform's yamldecode does: `on`, `yes`,
   `0755` stay strings) and validates every object against the Kubernetes JSON
   schemas of kubernetes-validate, in strict mode (unknown fields fail), for each
   Kubernetes version given;
4. checks the properties the module promises (rolling updates with
   maxUnavailable 0, probes on /healthz and /readyz, the security context, the
   grace period against the drain time, secrets only by reference: the operator
   key on the router and registry and the cluster key, from one Secret, on the
   router, registry and every node; node ingress only from the release's routers
   and registry; selectors that match their pods, autoscaler and budget targets
   that exist);
5. writes the rendered objects to --out/<scenario>/ for checkov's Kubernetes
   checks.

Exit status 1 on any failure, with one line per problem.
"""
import argparse
import json
import os
import re
import sys

import hcl2
import kubernetes_validate
import yaml

EXPR = re.compile(r"^\s*(?:(jsonencode)\(\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*\)|([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*))\s*$")

problems = []


def fail(msg):
    problems.append(msg)


def unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


# --- Terraform template subset ---------------------------------------------------

def template_parts(text, where):
    """Split a template into literal strings and expressions (the text inside ${...})."""
    parts, i, literal = [], 0, []
    while i < len(text):
        if text.startswith("$${", i) or text.startswith("%%{", i):
            literal.append(text[i + 1:i + 3])
            i += 3
        elif text.startswith("%{", i):
            raise ValueError(f"{where}: template directives (%{{...}}) are not used by this module; "
                             "compute the value in main.tf and pass it in")
        elif text.startswith("${", i):
            end = text.find("}", i)
            if end < 0:
                raise ValueError(f"{where}: unterminated ${{")
            parts.append("".join(literal))
            literal = []
            parts.append(("expr", text[i + 2:end]))
            i = end + 1
        else:
            literal.append(text[i])
            i += 1
    parts.append("".join(literal))
    return parts


def expr_root(expr, where):
    m = EXPR.match(expr)
    if not m:
        raise ValueError(f"{where}: unsupported template expression ${{{expr}}}: only ${{name}}, "
                         "${name.attr} and ${jsonencode(name)} are allowed")
    path = (m.group(2) or m.group(3)).split(".")
    return bool(m.group(1)), path


def tf_string(value, where):
    """Terraform's conversion of a primitive to string inside ${...}."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"{where}: ${{...}} of a {type(value).__name__} needs jsonencode()")


def render(text, variables, where):
    out = []
    for part in template_parts(text, where):
        if isinstance(part, str):
            out.append(part)
            continue
        is_json, path = expr_root(part[1], where)
        if path[0] not in variables:
            raise ValueError(f"{where}: no value for template variable {path[0]!r}")
        value = variables[path[0]]
        for attr in path[1:]:
            value = value[attr]
        if is_json:
            out.append(json.dumps(value, sort_keys=True, separators=(",", ":")))
        else:
            out.append(tf_string(value, where))
    return "".join(out)


def template_variables(text, where):
    return {expr_root(p[1], where)[1][0] for p in template_parts(text, where) if not isinstance(p, str)}


# --- YAML 1.2 core schema, as Terraform's yamldecode ------------------------------------

class Yaml12Loader(yaml.SafeLoader):
    pass


Yaml12Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in (
        "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _int12(loader, node):
    value = loader.construct_scalar(node)
    if value.startswith("0o"):
        return int(value[2:], 8)
    if value.startswith("0x"):
        return int(value[2:], 16)
    return int(value, 10)


Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _int12)


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


def check_policies(scenario, objects):
    where = f"{scenario}"
    cluster_key_refs = set()
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    drain = None
    for o in objects:
        if o["kind"] == "ConfigMap":
            drain = int(o["data"]["TASKMESH_DRAIN_TIMEOUT_S"])
    if drain is None:
        fail(f"{where}: no ConfigMap with TASKMESH_DRAIN_TIMEOUT_S")
        drain = 0
    for name, d in deployments.items():
        w = f"{where}: Deployment {name}"
        spec = d["spec"]
        strategy = spec.get("strategy", {})
        if strategy.get("type") != "RollingUpdate" or strategy.get("rollingUpdate", {}).get("maxUnavailable") != 0:
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
        if ns is None and kind != "Namespace":
            fail(f"{where}: {kind} {name} has no namespace (kubernetes_manifest needs one)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", required=True)
    ap.add_argument("--values", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--kubernetes-version", action="append", required=True)
    args = ap.parse_args()

    with open(os.path.join(args.module, "main.tf")) as f:
        tf = hcl2.load(f)
    locals_blocks = tf.get("locals", [])
    table = None
    for block in locals_blocks if isinstance(locals_blocks, list) else [locals_blocks]:
        if "manifests" in block:
            table = block["manifests"]
    if table is None:
        print("FAIL: no locals.manifests table in main.tf")
        return 1
    table = {unquote(k): v for k, v in table.items()}
    tdir = os.path.join(args.module, "templates")
    templates = {}
    for key, entry in table.items():
        tname = unquote(entry["template"])
        passed = {unquote(k) for k in entry["vars"]}
        with open(os.path.join(tdir, tname)) as f:
            templates[tname] = f.read()
        used = template_variables(templates[tname], tname)
        if used - passed:
            fail(f"main.tf {key}: {tname} uses {sorted(used - passed)}, which main.tf does not pass")
        if passed - used:
            fail(f"main.tf {key}: passes {sorted(passed - used)}, which {tname} does not use")
        entry["_passed"] = passed
    for tname in sorted(os.listdir(tdir)):
        if tname not in templates:
            fail(f"templates/{tname} is not used by main.tf")

    with open(args.values) as f:
        values = yaml.safe_load(f)
    counts = {}
    for scenario, sc in values["scenarios"].items():
        outdir = os.path.join(args.out, scenario)
        os.makedirs(outdir, exist_ok=True)
        if set(sc["manifests"]) != set(table):
            fail(f"{scenario}: entries {sorted(set(sc['manifests']) ^ set(table))} differ from main.tf's table")
        objects = []
        for key, entry in table.items():
            m = sc["manifests"].get(key)
            if not m or not m.get("enabled"):
                continue
            given = set(m["vars"])
            if given != entry["_passed"]:
                fail(f"{scenario}/{key}: values name {sorted(given ^ entry['_passed'])} unlike main.tf")
                continue
            tname = unquote(entry["template"])
            try:
                text = render(templates[tname], m["vars"], f"{scenario}/{key}")
                obj = yaml.load(text, Loader=Yaml12Loader)
            except (ValueError, KeyError, yaml.YAMLError) as e:
                fail(f"{scenario}/{key}: {e}")
                continue
            for version in args.kubernetes_version:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = "/".join(str(p) for p in e.path)
                    fail(f"{scenario}/{key} ({obj.get('kind')}) invalid for Kubernetes {version} at /{path}: {e.message}")
                except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError,
                        kubernetes_validate.VersionNotSupportedError) as e:
                    fail(f"{scenario}/{key}: {e.message}")
            objects.append(obj)
            with open(os.path.join(outdir, f"{key}.yaml"), "w") as f:
                f.write(text)
        check_policies(scenario, objects)
        kinds = {}
        for o in objects:
            kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
        counts[scenario] = (len(objects), kinds)

    for scenario, (n, kinds) in counts.items():
        summary = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
        print(f"  {scenario}: {n} objects rendered ({summary})")
    print(f"  schemas: Kubernetes {', '.join(args.kubernetes_version)} (strict); "
          f"{len(table)} template entries checked against main.tf")
    if problems:
        for p in problems:
            print(f"FAIL: {p}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
