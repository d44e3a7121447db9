"""Terraform configuration semantics on top of hcl_eval: type constraints
(parse_type, convert: optional(type, default) defaults in nested objects, lists
and maps, as Terraform applies them to module inputs), a directory of .tf
files (Config), one instance of it (Instance: input variables converted to
their types, validations, lazily evaluated locals in dependency order,
outputs), and call_module, which instantiates a root configuration (variable
defaults, then a tfvars file, then overrides) and the child module one of its
`module` blocks calls, with that block's arguments evaluated in the root.

What exists only after apply comes from `stubs`, a nested mapping:
{"module": {name: {output: value}}, "data": {type: {name: {attr: value}}},
 resource_type: {name: value}}. A resource that is not stubbed has the
attributes its configuration sets (count and for_each give lists and maps);
reading any other attribute fails, naming the stub to add.

Problems are collected as strings "file:line: what"; an EvalError is raised
only when nothing more can be evaluated.
"""
import glob
import os
import re

import hcl2
from hcl2 import SerializationOptions

import hcl_functions as fn
from hcl_eval import NS, Obj, Scope, evaluate, to_node, unquote, wrap
from hcl_functions import EvalError, to_bool, to_number, to_str

HCL_OPTIONS = SerializationOptions(with_comments=False, wrap_objects=True, wrap_tuples=True)
META_ARGS = {"source", "version", "count", "for_each", "providers", "depends_on", "lifecycle",
             "provider", "provisioner", "connection", "dynamic"}


# --- type constraints ---------------------------------------------------------------

def parse_type(node):
    """("string",) ("number",) ("bool",) ("any",) ("list"|"set"|"map", T) ("tuple", [T])
    ("object", {name: (T, optional, default)})."""
    if node[0] == "var" and node[1] in ("string", "number", "bool", "any"):
        return (node[1],)
    if node[0] == "call" and node[1] in ("list", "set", "map") and len(node[2]) == 1:
        return (node[1], parse_type(node[2][0]))
    if node[0] == "call" and node[1] == "tuple" and node[2][0][0] == "tuple":
        return ("tuple", [parse_type(x) for x in node[2][0][1]])
    if node[0] == "call" and node[1] == "object" and node[2][0][0] == "object":
        attrs = {}
        for k, v in node[2][0][1]:
            name = evaluate(k, Scope({}))
            if v[0] == "call" and v[1] == "optional":
                default = evaluate(v[2][1], Scope({})) if len(v[2]) > 1 else None
                attrs[name] = (parse_type(v[2][0]), True, default)
            else:
                attrs[name] = (parse_type(v), False, None)
        return ("object", attrs)
    raise EvalError(f"unsupported type constraint {node}")


def convert(v, t, path, dropped):
    """Terraform's conversion of v to type t, with optional() defaults applied.
    Object attributes the type lacks are dropped (Terraform drops them
    silently); their paths are appended to `dropped`."""
    if v is None:
        return None
    kind = t[0]
    if kind == "any":
        return v
    try:
        if kind == "string":
            if isinstance(v, (dict, list)):
                raise EvalError("a string is required")
            return to_str(v)
        if kind == "number":
            return to_number(v)
        if kind == "bool":
            return to_bool(v)
    except EvalError as e:
        raise EvalError(f"{path}: {e}") from None
    if kind in ("list", "set", "tuple"):
        if not isinstance(v, list):
            raise EvalError(f"{path}: a {kind} is required, got {fn.type_name(v)}")
        if kind == "tuple":
            if len(v) != len(t[1]):
                raise EvalError(f"{path}: a tuple of {len(t[1])} elements is required")
            return [convert(x, tt, f"{path}[{i}]", dropped) for i, (x, tt) in enumerate(zip(v, t[1]))]
        out = [convert(x, t[1], f"{path}[{i}]", dropped) for i, x in enumerate(v)]
        return fn.toset(out) if kind == "set" else out
    if not isinstance(v, dict):
        raise EvalError(f"{path}: an {'object' if kind == 'object' else 'map'} is required, got {fn.type_name(v)}")
    if kind == "map":
        return {k: convert(x, t[1], f'{path}["{k}"]', dropped) for k, x in v.items()}
    out = {}
    for name, (at, optional, default) in t[1].items():
        if v.get(name) is not None:
            out[name] = convert(v[name], at, f"{path}.{name}", dropped)
        elif optional:
            out[name] = convert(default, at, f"{path}.{name}", dropped)
        elif name in v:
            out[name] = None
        else:
            raise EvalError(f"{path}: attribute {name!r} is required")
    dropped.extend(f"{path}.{k}" for k in sorted(set(v) - set(t[1])))
    return out


def load_hcl(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return text, hcl2.loads(text, serialization_options=HCL_OPTIONS)
    except Exception as e:  # python-hcl2 raises lark's errors
        raise EvalError(f"{path}: does not parse: {e}") from None


def is_blocks(raw):
    return isinstance(raw, list) and raw and all(isinstance(x, dict) and x.get("__is_block__") for x in raw)


class Config:
    """The .tf files of one directory, by kind of block; each item is (body, file)."""

    def __init__(self, directory):
        self.dir = os.path.normpath(directory)
        self.variables, self.locals, self.outputs, self.modules = {}, {}, {}, {}
        self.resources, self.data, self.lines = {}, {}, {}
        files = sorted(glob.glob(os.path.join(self.dir, "*.tf")))
        if not files:
            raise EvalError(f"{self.dir}: no .tf files")
        for path in files:
            text, doc = load_hcl(path)
            self.lines[path] = text.splitlines()
            for kind, target in (("variable", self.variables), ("output", self.outputs), ("module", self.modules)):
                for block in doc.get(kind, []):
                    for label, body in block.items():
                        target[unquote(label)] = (body, path)
            for block in doc.get("locals", []):
                for name, raw in block.items():
                    if not name.startswith("__"):
                        self.locals[name] = (raw, path)
            for kind, target in (("resource", self.resources), ("data", self.data)):
                for block in doc.get(kind, []):
                    for rtype, named in block.items():
                        for name, body in named.items():
                            if not name.startswith("__"):
                                target[(unquote(rtype), unquote(name))] = (body, path)

    def line(self, path, *patterns):
        """Line of the first match of the last pattern, each searched after the previous match."""
        lines, n = self.lines.get(path, []), -1
        for p in patterns:
            rx = re.compile(p)
            n = next((i for i in range(n + 1, len(lines)) if rx.search(lines[i])), n)
        return f"{path}:{max(n, 0) + 1}"


def silent(msg):
    """Raise an error that follows one reported already (it is not reported again)."""
    e = EvalError(msg)
    e.reported = e.silent = True
    raise e


def var_type(body, where):
    return parse_type(to_node(body.get("type", "any"), where))


class Instance:
    """One instance of a Config: its variables, locals and outputs."""

    def __init__(self, cfg, problems, stubs=None, root_dir=None, outputs_of=None):
        self.cfg, self.problems, self.stubs = cfg, problems, stubs or {}
        self.outputs_of = outputs_of or {}  # "data.terraform_remote_state.x": dir of that state's configuration
        self.root_dir = root_dir or cfg.dir
        self.vars, self.bad_vars, self._locals, self._busy, self.children = {}, set(), {}, [], {}
        self._memo = {}

    def memo(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def fail(self, msg):
        if msg not in self.problems:
            self.problems.append(msg)

    # --- names ---------------------------------------------------------------
    def scope(self, extra=None):
        names = {
            "var": NS("var", self.var),
            "local": NS("local", self.local),
            "module": NS("module", lambda n: self.children[n] if n in self.children else
                         self.memo(("module", n), lambda: self.module(n))),
            "data": NS("data", lambda t: NS(f"data.{t}", lambda n: self.memo(("data", t, n), lambda: self.resource("data", t, n)))),
            "path": {"module": self.cfg.dir, "root": self.root_dir, "cwd": "."},
            "terraform": {"workspace": "default"},
        }
        names.update(extra or {})
        return Scope(names, fallback=self.resource_type)

    def var(self, name):
        if name in self.vars:
            return self.vars[name]
        if name in self.bad_vars:  # reported already: what depends on it is not
            silent(f"var.{name} has no valid value")
        raise EvalError(f"reference to undeclared input variable var.{name}")

    def local(self, name):
        if name not in self._locals:
            if name not in self.cfg.locals:
                raise EvalError(f"reference to undeclared local value local.{name}")
            if name in self._busy:
                raise EvalError(f"local.{name} depends on itself: {' -> '.join(self._busy + [name])}")
            raw, path = self.cfg.locals[name]
            where = self.cfg.line(path, r"^\s*locals\s*\{", rf"^\s*\"?{re.escape(name)}\"?\s*=")
            self._busy.append(name)
            try:
                self._locals[name] = evaluate(to_node(raw, where), self.scope())
            except EvalError as e:
                self._locals[name] = self.located(e, path, [r"^\s*locals\s*\{", rf"^\s*\"?{re.escape(name)}\"?\s*="],
                                                  f"local.{name}")
            finally:
                self._busy.pop()
        value = self._locals[name]
        if isinstance(value, EvalError):
            raise value
        return value

    def located(self, e, path, patterns, label):
        """e as reported once, where it starts (not again in every dependant):
        file:line of the innermost object key it happened under, and that key path."""
        if getattr(e, "reported", False):
            return e
        keys = getattr(e, "keypath", [])
        where = self.cfg.line(path, *patterns, *(rf'^\s*"?{re.escape(k)}"?\s*[=:]' for k in keys))
        keys = "".join(f".{k}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", k) else f'["{k}"]' for k in keys)
        out = EvalError(f"{where}: {label}{keys}: {e}")
        out.reported, out.silent = True, getattr(e, "silent", False)
        return out

    def module(self, name):
        stub = self.stubs.get("module", {}).get(name)
        if name not in self.cfg.modules:
            raise EvalError(f"reference to undeclared module module.{name}")
        if stub is None:
            raise EvalError(f"module.{name}'s outputs exist only after apply: give them in the scenario's stubs")
        d = self.module_dir(name)
        return self.outputs_obj(stub, f"module.{name}", d if d and os.path.isdir(d) else None)

    def outputs_obj(self, stub, addr, config_dir):
        """Stubbed outputs of a module or remote state; with the configuration that
        declares them, a stub or a reference to an undeclared output fails."""
        obj = wrap(stub, addr)
        if config_dir is None or not isinstance(obj, Obj):
            return obj
        declared = set(Config(config_dir).outputs)
        for key in sorted(set(obj) - declared):
            self.fail(f"stub {addr}.{key}: {config_dir} declares no such output")
        obj.missing = lambda key: (f"{addr}.{key} is not in the scenario's stubs" if key in declared
                                   else f"{addr}.{key}: {config_dir} declares no output {key!r}")
        return obj

    def module_dir(self, name):
        body, path = self.cfg.modules[name]
        src = to_str(evaluate(to_node(body.get("source", '""'), path), Scope({})))
        return os.path.normpath(os.path.join(self.cfg.dir, src)) if src.startswith(".") else None

    def resource_type(self, rtype):
        if any(t == rtype for t, _ in self.cfg.resources) or rtype in self.stubs:
            return NS(rtype, lambda n: self.memo((rtype, n), lambda: self.resource("resource", rtype, n)))
        raise EvalError(f"unknown name {rtype!r} (no variable, local, module, data source or resource)")

    def resource(self, kind, rtype, name):
        addr = f"{'data.' if kind == 'data' else ''}{rtype}.{name}"
        stub = (self.stubs.get("data", {}) if kind == "data" else self.stubs).get(rtype, {}).get(name)
        if stub is not None:
            if addr in self.outputs_of and isinstance(stub, dict):
                out = wrap(stub, addr)
                out["outputs"] = self.outputs_obj(stub.get("outputs", {}), f"{addr}.outputs", self.outputs_of[addr])
                return out
            return wrap(stub, addr)
        decls = self.cfg.data if kind == "data" else self.cfg.resources
        if (rtype, name) not in decls:
            raise EvalError(f"reference to undeclared {addr}")
        body, _ = decls[(rtype, name)]
        sc = self.scope()
        if "count" in body:
            n = int(to_number(evaluate(to_node(body["count"], addr), sc), f"{addr}.count"))
            return [self.block_obj(body, self.scope({"count": {"index": i}}), f"{addr}[{i}]") for i in range(n)]
        if "for_each" in body:
            fe = evaluate(to_node(body["for_each"], addr), sc)
            items = fe.items() if isinstance(fe, dict) else [(k, k) for k in fe]
            return {k: self.block_obj(body, self.scope({"each": {"key": k, "value": v}}), f'{addr}["{k}"]')
                    for k, v in items}
        return self.block_obj(body, sc, addr)

    def block_obj(self, body, sc, addr):
        """The attributes a resource's configuration sets (what is known at plan time)."""
        out = Obj()
        out.addr = addr
        for key, raw in body.items():
            if key.startswith("__") or key in META_ARGS:
                continue
            if is_blocks(raw):
                out[key] = [self.block_obj(b, sc, f"{addr}.{key}[{i}]") for i, b in enumerate(raw)]
                continue
            try:
                out[key] = evaluate(to_node(raw, addr), sc)
            except EvalError:
                pass  # unknown until apply: reading it fails with the stub hint
        return out

    # --- inputs, validations, locals, outputs ----------------------------------------
    def set_inputs(self, given, where, failed=()):
        for name in sorted(set(given) - set(self.cfg.variables)):
            self.fail(f"{where}: an argument named {name!r} is not expected here ({self.cfg.dir} declares no such variable)")
        for name, (body, path) in self.cfg.variables.items():
            line = self.cfg.line(path, rf'^\s*variable\s+"{re.escape(name)}"')
            if name in failed:
                self.bad_vars.add(name)
                continue
            try:
                t = var_type(body, line)
                if name in given and not (given[name] is None and body.get("nullable") is False):
                    value = given[name]
                elif "default" in body:
                    value = evaluate(to_node(body["default"], line), Scope({}))
                else:
                    raise EvalError("required, and not set")
                dropped = []
                self.vars[name] = convert(value, t, f"var.{name}", dropped)
                for d in dropped:
                    self.fail(f"{where}: {d} is not an attribute of the type of variable {name!r} ({line}); "
                              "Terraform drops it silently")
            except EvalError as e:
                self.bad_vars.add(name)
                self.fail(f"{where}: variable {name!r} ({line}): {e}")

    def validate(self):
        for name, (body, path) in self.cfg.variables.items():
            if name not in self.vars:
                continue
            for i, rule in enumerate(body.get("validation", [])):
                pats = [rf'^\s*variable\s+"{re.escape(name)}"'] + [r"^\s*validation\s*\{"] * (i + 1)
                where = self.cfg.line(path, *pats)
                try:
                    ok = to_bool(evaluate(to_node(rule["condition"], where), self.scope()), "the condition")
                except EvalError as e:
                    self.fail(f"{where}: validation {i + 1} of var.{name} cannot be evaluated: {e}")
                    continue
                if not ok:
                    try:
                        msg = evaluate(to_node(rule.get("error_message", '""'), where), self.scope())
                    except EvalError as e:
                        msg = f"(error_message fails: {e})"
                    self.fail(f"{where}: var.{name} = {self.vars[name]!r} fails its validation: {msg}")

    def all_locals(self):
        out = {}
        for name in self.cfg.locals:
            try:
                out[name] = self.local(name)
            except EvalError as e:
                if not getattr(e, "silent", False):
                    self.fail(str(e))
        return out

    def all_outputs(self, addr="outputs"):
        """The outputs, as an object that tells an undeclared output from one that failed."""
        out = Obj()
        out.addr = addr
        for name, (body, path) in self.cfg.outputs.items():
            block = rf'^\s*output\s+"{re.escape(name)}"'
            try:
                out[name] = evaluate(to_node(body.get("value"), self.cfg.line(path, block)), self.scope())
            except EvalError as e:
                e = self.located(e, path, [block, r"^\s*value\s*="], f"output {name!r}")
                if not e.silent:
                    self.fail(str(e))
        out.missing = lambda key: silent(f"{addr}.{key} has no value") if key in self.cfg.outputs \
            else f"{addr}: {self.cfg.dir} declares no output {key!r}"
        return out


def read_tfvars(path):
    _, doc = load_hcl(path)
    return {k: evaluate(to_node(raw, path), Scope({})) for k, raw in doc.items() if not k.startswith("__")}


def call_module(root_dir, name, problems, variables=None, tfvars="terraform.tfvars.example", stubs=None, key=None,
                outputs_of=None):
    """Instantiate root_dir (its variables: defaults, then tfvars when the file
    exists, then `variables`) and the module its `module "name"` block calls
    (the instance `key` of a for_each, the first one by default).
    outputs_of: {"data.terraform_remote_state.NAME": directory of the
    configuration whose state it reads}, to check the stubbed outputs.
    Returns (root, child); the child's locals and outputs and the root's
    outputs are evaluated, their problems appended to `problems`."""
    cfg = Config(root_dir)
    given = {}
    if tfvars and os.path.isfile(os.path.join(root_dir, tfvars)):
        given.update(read_tfvars(os.path.join(root_dir, tfvars)))
    given.update(variables or {})
    root = Instance(cfg, problems, stubs, outputs_of=outputs_of)
    root.set_inputs(given, f"{cfg.dir} (root variables)")
    root.validate()
    root.all_locals()
    if name not in cfg.modules:
        raise EvalError(f"{cfg.dir} has no module block {name!r} (has {sorted(cfg.modules)})")
    body, path = cfg.modules[name]
    block = rf'^\s*module\s+"{re.escape(name)}"'
    child_dir = root.module_dir(name)
    if child_dir is None:
        raise EvalError(f"{cfg.line(path, block)}: module.{name} has no local source")
    extra, key_of = {}, None
    if "count" in body:
        n = int(to_number(evaluate(to_node(body["count"], path), root.scope()), "count"))
        if n < 1:
            where = cfg.line(path, block, r"^\s*count\s*=")
            raise EvalError(f"{where}: module.{name} has count = {n} with these variables")
        extra["count"], key_of = {"index": 0}, 0
    elif "for_each" in body:
        fe = evaluate(to_node(body["for_each"], path), root.scope())
        items = dict(fe) if isinstance(fe, dict) else {to_str(k): k for k in fe}
        if not items:
            raise EvalError(f"{cfg.line(path, block)}: module.{name}'s for_each is empty with these variables")
        key_of = key if key is not None else sorted(items)[0]
        extra["each"] = {"key": key_of, "value": items[key_of]}
    args, failed = {}, set()
    for arg, raw in body.items():
        if arg.startswith("__") or arg in META_ARGS:
            continue
        arg_line = rf"^\s*{re.escape(arg)}\s*="
        try:
            args[arg] = evaluate(to_node(raw, cfg.line(path, block, arg_line)), root.scope(extra))
        except EvalError as e:
            failed.add(arg)
            e = root.located(e, path, [block, arg_line], f"module.{name} argument {arg}")
            if not e.silent:
                root.fail(str(e))
    child = Instance(Config(child_dir), problems, root_dir=root.root_dir)
    child.set_inputs(args, f"{cfg.line(path, block)}: module.{name}", failed)
    child.validate()
    child.all_locals()
    outputs = child.all_outputs(f"module.{name}")
    root.children[name] = outputs if key_of is None else [outputs] if key_of == 0 else {key_of: outputs}
    root.all_outputs()
    return root, child
