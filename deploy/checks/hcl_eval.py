"""Evaluate Terraform expressions without Terraform: the subset of HCL2 that
deploy/terraform uses, on top of python-hcl2 (which parses the files but gives
every expression back as source text, "${...}" or "\"...\"").

- parse_expr / parse_template: expressions (literals, templates with ${} and
  %{if}/%{for}, heredocs, traversals with [index] and splats, function calls,
  tuples, objects, for-expressions, ?:, the operators with HCL's precedence);
- evaluate: values are str, int/float, bool, None, list and dict; objects and
  maps are iterated in key order as Terraform does; `&&` and `||` evaluate both
  sides (they do not short-circuit before Terraform 1.12, and the modules
  support 1.9); templatefile() renders with the same evaluator.

The function library is in hcl_functions.py; Terraform's configuration
semantics (a directory of .tf files, module calls, variables with their type
constraints, locals, validations, stubs for what exists only after apply) in
hcl_config.py.
"""
import re

import hcl_functions as fn
from hcl_functions import EvalError, eq, fmt_num, to_bool, to_number, to_str

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
OP = re.compile(r"==|!=|<=|>=|&&|\|\||=>|\.\.\.|::|[-+*/%<>!?:=,.()\[\]{}~]")
LEVELS = [("||",), ("&&",), ("==", "!="), ("<", ">", "<=", ">="), ("+", "-"), ("*", "/", "%")]
ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


# --- parser -------------------------------------------------------------------------
# Nodes: ("lit", v) ("var", name) ("paren", e) ("path", base, steps) ("tmpl", parts)
# ("call", name, args, expand) ("tuple", items) ("object", [(k, v)]) ("cond", c, a, b)
# ("bin", op, l, r) ("un", op, e) ("forl", k, v, coll, val, cond)
# ("form", k, v, coll, key, val, group, cond); template parts: str, node,
# ("tif", cond, then, else), ("tfor", k, v, coll, body). Steps: ("attr", name),
# ("index", node), ("splat", steps).

class Parser:
    def __init__(self, text, where):
        self.s, self.i, self.where = text, 0, where

    def err(self, msg):
        raise EvalError(f"{self.where}: {msg} at {self.s[self.i:self.i + 40]!r}")

    def ws(self):
        s = self.s
        while self.i < len(s):
            if s[self.i] in " \t\r\n":
                self.i += 1
            elif s.startswith("#", self.i) or s.startswith("//", self.i):
                end = s.find("\n", self.i)
                self.i = len(s) if end < 0 else end
            elif s.startswith("/*", self.i):
                end = s.find("*/", self.i)
                self.i = len(s) if end < 0 else end + 2
            else:
                break

    def op(self):
        self.ws()
        m = OP.match(self.s, self.i)
        return m.group(0) if m else None

    def take(self, tok):
        if self.op() == tok:
            self.i += len(tok)
            return True
        return False

    def expect(self, tok):
        if not self.take(tok):
            self.err(f"expected {tok!r}")

    def ident(self):
        self.ws()
        m = IDENT.match(self.s, self.i)
        if not m:
            self.err("expected a name")
        self.i = m.end()
        return m.group(0)

    def keyword(self, word):
        self.ws()
        m = IDENT.match(self.s, self.i)
        if m and m.group(0) == word:
            self.i = m.end()
            return True
        return False

    def parse_all(self):
        e = self.expr()
        self.ws()
        if self.i != len(self.s):
            self.err("unexpected text after the expression")
        return e

    def expr(self):
        c = self.binary(0)
        if self.take("?"):
            a = self.expr()
            self.expect(":")
            return ("cond", c, a, self.expr())
        return c

    def binary(self, level):
        if level == len(LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.op() in LEVELS[level]:
            op = self.op()
            self.i += len(op)
            left = ("bin", op, left, self.binary(level + 1))
        return left

    def unary(self):
        if self.op() in ("!", "-"):
            op = self.op()
            self.i += 1
            return ("un", op, self.unary())
        return self.postfix(self.primary())

    def postfix(self, base):
        steps = []
        while True:
            save = self.i
            op = self.op()
            if op == ".":
                self.i += 1
                if self.take("*"):
                    rest = self.postfix(("lit", None))
                    steps.append(("splat", rest[2] if rest[0] == "path" else []))
                    continue
                self.ws()
                m = re.compile(r"[0-9]+").match(self.s, self.i)
                if m:
                    self.i = m.end()
                    steps.append(("index", ("lit", int(m.group(0)))))
                else:
                    steps.append(("attr", self.ident()))
            elif op == "[":
                self.i += 1
                if self.take("*"):
                    self.expect("]")
                    rest = self.postfix(("lit", None))
                    steps.append(("splat", rest[2] if rest[0] == "path" else []))
                    continue
                steps.append(("index", self.expr()))
                self.expect("]")
            else:
                self.i = save
                break
        return ("path", base, steps) if steps else base

    def primary(self):
        self.ws()
        s, i = self.s, self.i
        c = s[i] if i < len(s) else ""
        if c.isdigit():
            m = NUMBER.match(s, i)
            self.i = m.end()
            return ("lit", fn.parse_number(m.group(0)))
        if s.startswith("<<", i):
            return self.heredoc()
        if c == '"':
            self.i += 1
            parts, stop = self.template_seq(quoted=True)
            if stop:
                self.err(f"%{{{stop}}} without its opening directive")
            return ("tmpl", parts)
        if c == "(":
            self.i += 1
            e = self.expr()
            self.expect(")")
            return ("paren", e)
        if c == "[":
            self.i += 1
            if self.is_for():
                k, v, coll = self.for_head()
                val = self.expr()
                cond = self.expr() if self.keyword("if") else None
                self.expect("]")
                return ("forl", k, v, coll, val, cond)
            items = []
            while not self.take("]"):
                items.append(self.expr())
                if not self.take(","):
                    self.expect("]")
                    break
            return ("tuple", items)
        if c == "{":
            self.i += 1
            if self.is_for():
                k, v, coll = self.for_head()
                key = self.expr()
                self.expect("=>")
                val = self.expr()
                group = self.take("...")
                cond = self.expr() if self.keyword("if") else None
                self.expect("}")
                return ("form", k, v, coll, key, val, group, cond)
            items = []
            while not self.take("}"):
                key = self.expr()
                if key[0] == "var":
                    key = ("lit", key[1])
                if not (self.take("=") or self.take(":")):
                    self.err("expected '=' after an object key")
                items.append((key, self.expr()))
                self.take(",")
            return ("object", items)
        name = self.ident()
        if name in ("true", "false"):
            return ("lit", name == "true")
        if name == "null":
            return ("lit", None)
        while self.s.startswith("::", self.i):  # provider::name::function
            self.i += 2
            name += "::" + self.ident()
        if self.s.startswith("(", self.i):
            self.i += 1
            args, expand = [], False
            while not self.take(")"):
                args.append(self.expr())
                if self.take("..."):
                    expand = True
                if not self.take(","):
                    self.expect(")")
                    break
            return ("call", name, args, expand)
        return ("var", name)

    def is_for(self):
        save = self.i
        ok = self.keyword("for")
        if ok:
            self.ws()
            ok = IDENT.match(self.s, self.i) is not None
        self.i = save
        return ok

    def for_head(self):
        self.keyword("for")
        a = self.ident()
        b = self.ident() if self.take(",") else None
        if not self.keyword("in"):
            self.err("expected 'in'")
        coll = self.expr()
        self.expect(":")
        return (a, b, coll) if b else (None, a, coll)

    def heredoc(self):
        m = re.compile(r"<<(-?)([A-Za-z_][A-Za-z0-9_-]*)[ \t]*\r?\n").match(self.s, self.i)
        if not m:
            self.err("malformed heredoc")
        lines, i = [], m.end()
        while True:
            if i >= len(self.s):
                self.err(f"heredoc without its closing {m.group(2)}")
            end = self.s.find("\n", i)
            line = self.s[i:] if end < 0 else self.s[i:end + 1]
            i = len(self.s) if end < 0 else end + 1
            if line.strip() == m.group(2):
                break
            lines.append(line)
        if m.group(1):
            indent = min((len(x) - len(x.lstrip(" \t")) for x in lines if x.strip()), default=0)
            lines = [x[indent:] for x in lines]
        self.i = i
        return parse_template("".join(lines), self.where)

    def template_seq(self, quoted):
        """Template parts up to the closing quote (quoted) or the end of the text,
        or up to an %{else}/%{endif}/%{endfor}, whose name is returned."""
        s, parts, buf = self.s, [], []

        def flush():
            if buf:
                parts.append("".join(buf))
                buf.clear()

        while True:
            if self.i >= len(s):
                if quoted:
                    self.err("unterminated string")
                flush()
                return parts, None
            c = s[self.i]
            if quoted and c == '"':
                self.i += 1
                flush()
                return parts, None
            if quoted and c == "\\":
                nxt = s[self.i + 1:self.i + 2]
                if nxt in ESCAPES:
                    buf.append(ESCAPES[nxt])
                    self.i += 2
                elif nxt in ("u", "U"):
                    width = 4 if nxt == "u" else 8
                    buf.append(chr(int(s[self.i + 2:self.i + 2 + width], 16)))
                    self.i += 2 + width
                else:
                    self.err("invalid escape sequence")
            elif s.startswith("$${", self.i) or s.startswith("%%{", self.i):
                buf.append(s[self.i + 1:self.i + 3])
                self.i += 3
            elif s.startswith("${", self.i) or s.startswith("%{", self.i):
                directive = s[self.i] == "%"
                self.i += 2
                flush()
                if s.startswith("~", self.i):
                    self.i += 1
                    if parts and isinstance(parts[-1], str):
                        parts[-1] = parts[-1].rstrip(" \t\r\n")
                if not directive:
                    parts.append(self.expr())
                    self.close_interp()
                    continue
                word = self.ident()
                if word in ("else", "endif", "endfor"):
                    self.close_interp()
                    return parts, word
                if word == "if":
                    cond = self.expr()
                    self.close_interp()
                    then, stop = self.template_seq(quoted)
                    other = []
                    if stop == "else":
                        other, stop = self.template_seq(quoted)
                    if stop != "endif":
                        self.err("%{if} without %{endif}")
                    parts.append(("tif", cond, then, other))
                elif word == "for":
                    a = self.ident()
                    b = self.ident() if self.take(",") else None
                    if not self.keyword("in"):
                        self.err("expected 'in'")
                    coll = self.expr()
                    self.close_interp()
                    body, stop = self.template_seq(quoted)
                    if stop != "endfor":
                        self.err("%{for} without %{endfor}")
                    parts.append(("tfor", a if b else None, b or a, coll, body))
                else:
                    self.err(f"unknown template directive %{{{word}")
            else:
                buf.append(c)
                self.i += 1

    def close_interp(self):
        strip = self.take("~")
        self.expect("}")
        if strip:
            while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
                self.i += 1


def parse_expr(text, where="expression"):
    return Parser(text, where).parse_all()


def parse_template(text, where="template"):
    """A template file or heredoc body: no backslash escapes, ends at the end of text."""
    parts, stop = Parser(text, where).template_seq(quoted=False)
    if stop:
        raise EvalError(f"{where}: %{{{stop}}} without its opening directive")
    return ("tmpl", parts)


def to_node(raw, where):
    """An attribute value as python-hcl2 serialises it, as an expression node."""
    if isinstance(raw, str):
        if raw.startswith('"<<') and raw.endswith('"'):
            return Parser(raw[1:-1], where).heredoc()
        if raw.startswith("${") and raw.endswith("}"):
            return parse_expr(raw[2:-1], where)
        return parse_expr(raw, where)
    if isinstance(raw, list):
        return ("tuple", [to_node(x, where) for x in raw])
    if isinstance(raw, dict):
        return ("object", [(("lit", unquote(k)), to_node(v, where)) for k, v in raw.items() if not k.startswith("__")])
    return ("lit", raw)


def unquote(label):
    return label[1:-1] if len(label) >= 2 and label[0] == label[-1] == '"' else label


def free_names(node, out=None):
    """Root names a node reads (for a template: the variables it needs)."""
    out = set() if out is None else out
    if isinstance(node, tuple) and node and node[0] == "var":
        out.add(node[1])
    elif isinstance(node, (tuple, list)):
        for x in node:
            free_names(x, out)
        if node and node[0] in ("forl", "form", "tfor"):
            out.discard(node[1])
            out.discard(node[2])
    return out


# --- evaluation ---------------------------------------------------------------------

class NS:
    """A namespace (var, local, module, data, a resource type): attributes resolved on demand."""

    def __init__(self, addr, getter):
        self.addr, self.getter = addr, getter


class Obj(dict):
    """An object from stubs or a resource's configuration: a missing attribute says where."""
    addr = "?"

    def missing(self, key):
        return f"{self.addr}.{key} is known only after apply: give it in the scenario's stubs"


def wrap(value, addr):
    if isinstance(value, dict) and not isinstance(value, Obj):
        o = Obj({k: wrap(v, f"{addr}.{k}") for k, v in value.items()})
        o.addr = addr
        return o
    if isinstance(value, list):
        return [wrap(v, f"{addr}[{i}]") for i, v in enumerate(value)]
    return value


class Scope:
    def __init__(self, names, parent=None, fallback=None):
        self.names, self.parent, self.fallback = names, parent, fallback

    def lookup(self, name):
        s = self
        while s is not None:
            if name in s.names:
                return s.names[name]
            if s.fallback is not None:
                return s.fallback(name)
            s = s.parent
        raise EvalError(f"unknown name {name!r}")

    def child(self, names):
        return Scope(names, self)


def show(node):
    """A traversal as source text, for messages."""
    if node[0] == "var":
        return node[1]
    if node[0] != "path":
        return "(...)"
    out = [show(node[1])]
    for st in node[2]:
        if st[0] == "attr":
            out.append(f".{st[1]}")
        elif st[0] == "splat":
            out.append(f"[*]{show(('path', ('lit', None), st[1]))[5:] if st[1] else ''}")
        else:
            out.append(f"[{st[1][1]!r}]" if st[1][0] == "lit" else "[...]")
    return "".join(out)


def step(value, st, sc):
    kind = st[0]
    if kind == "splat":
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        return [walk(x, st[1], sc) for x in items]
    if kind == "attr":
        key = st[1]
    else:
        key = evaluate(st[1], sc)
    if isinstance(value, NS):
        return value.getter(to_str(key))
    if value is None:
        raise EvalError(f"attempt to {'get attribute ' + repr(key) if kind == 'attr' else 'index'} from a null value")
    if isinstance(value, list):
        if kind == "attr":
            raise EvalError(f"a list has no attribute {key!r} (use [*].{key} or an index)")
        n = to_number(key)
        if n != int(n) or not 0 <= n < len(value):
            raise EvalError(f"index {fmt_num(n)} out of range for a list of {len(value)}")
        return value[int(n)]
    if isinstance(value, dict):
        key = to_str(key)
        if key not in value:
            if isinstance(value, Obj):
                raise EvalError(value.missing(key))
            raise EvalError(f"no attribute or key {key!r} (has {sorted(value)})")
        return value[key]
    raise EvalError(f"cannot get {key!r} from a {type(value).__name__}")


def walk(value, steps, sc):
    for st in steps:
        value = step(value, st, sc)
    return value


def iterate(coll):
    if coll is None:
        raise EvalError("a for expression over a null value")
    if isinstance(coll, dict):
        return [(k, coll[k]) for k in sorted(coll)]
    if isinstance(coll, list):
        return list(enumerate(coll))
    raise EvalError(f"cannot iterate over a {type(coll).__name__}")


def render_parts(parts, sc):
    if len(parts) == 1 and not isinstance(parts[0], str) and parts[0][0] not in ("tif", "tfor"):
        return evaluate(parts[0], sc)  # "${x}" alone keeps x's type
    out = []
    for p in parts:
        if isinstance(p, str):
            out.append(p)
        elif p[0] == "tif":
            out.append(render_parts_str(p[2] if to_bool(evaluate(p[1], sc)) else p[3], sc))
        elif p[0] == "tfor":
            for k, v in iterate(evaluate(p[3], sc)):
                names = {p[2]: v}
                if p[1]:
                    names[p[1]] = k
                out.append(render_parts_str(p[4], sc.child(names)))
        else:
            v = evaluate(p, sc)
            if v is None:
                raise EvalError("a template interpolates a null value")
            out.append(to_str(v))
    return "".join(out)


def render_parts_str(parts, sc):
    return render_parts(parts + [""], sc)


def evaluate(node, sc):
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "var":
        return sc.lookup(node[1])
    if kind == "paren":
        return evaluate(node[1], sc)
    if kind == "path":
        try:
            v = walk(evaluate(node[1], sc), node[2], sc)
        except EvalError as err:
            if getattr(err, "reported", False) or getattr(err, "shown", False):
                raise
            new = EvalError(f"{show(node)}: {err}")
            new.shown, new.keypath = True, getattr(err, "keypath", [])
            raise new from None
        if isinstance(v, NS):
            raise EvalError(f"{v.addr} is a namespace, not a value")
        return v
    if kind == "tmpl":
        return render_parts(node[1], sc)
    if kind == "tuple":
        return [evaluate(x, sc) for x in node[1]]
    if kind == "object":
        out = {}
        for k, v in node[1]:
            key = evaluate(k, sc)
            if not isinstance(key, (str, int, float)) or isinstance(key, bool):
                raise EvalError(f"object key {key!r} is not a string")
            try:
                out[to_str(key)] = evaluate(v, sc)
            except EvalError as err:
                if not getattr(err, "reported", False):
                    err.keypath = [to_str(key)] + getattr(err, "keypath", [])
                raise
        return out
    if kind == "cond":
        return evaluate(node[2] if to_bool(evaluate(node[1], sc), "condition") else node[3], sc)
    if kind == "un":
        v = evaluate(node[2], sc)
        return (not to_bool(v)) if node[1] == "!" else fn.num(-to_number(v))
    if kind == "bin":
        return binary(node[1], evaluate(node[2], sc), evaluate(node[3], sc))
    if kind == "call":
        return call(node, sc)
    if kind in ("forl", "form"):
        out_l, out_m = [], {}
        for k, v in iterate(evaluate(node[3], sc)):
            names = {node[2]: v}
            if node[1]:
                names[node[1]] = k
            inner = sc.child(names)
            cond = node[-1]
            if cond is not None and not to_bool(evaluate(cond, inner), "for-expression condition"):
                continue
            if kind == "forl":
                out_l.append(evaluate(node[4], inner))
                continue
            key = to_str(evaluate(node[4], inner))
            val = evaluate(node[5], inner)
            if node[6]:
                out_m.setdefault(key, []).append(val)
            elif key in out_m:
                raise EvalError(f"duplicate key {key!r} in a for expression (use ... to group)")
            else:
                out_m[key] = val
        return out_l if kind == "forl" else out_m
    raise EvalError(f"unknown node {kind}")


def binary(op, a, b):
    if op in ("==", "!="):
        return eq(a, b) == (op == "==")
    if op in ("&&", "||"):
        a, b = to_bool(a, op), to_bool(b, op)
        return (a and b) if op == "&&" else (a or b)
    x, y = to_number(a), to_number(b)
    if op in ("<", ">", "<=", ">="):
        return {"<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op]
    if op in ("/", "%") and y == 0:
        raise EvalError("division by zero")
    if op == "%":
        r = abs(x) % abs(y)  # the sign of the dividend, as Go (and Terraform)
        return fn.num(-r if x < 0 else r)
    return fn.num({"+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y, "/": lambda: x / y}[op]())


def call(node, sc):
    name, args, expand = node[1], node[2], node[3]
    if name in ("try", "can"):
        if name == "can" and len(args) != 1 or not args:
            raise EvalError(f"{name}() takes {'one argument' if name == 'can' else 'arguments'}")
        for a in args:
            try:
                v = evaluate(a, sc)
                return True if name == "can" else v
            except EvalError:
                continue
        if name == "can":
            return False
        raise EvalError("try(): no argument could be evaluated")
    vals = [evaluate(a, sc) for a in args]
    if expand:
        if not isinstance(vals[-1], list):
            raise EvalError(f"{name}(...): the expanded argument is not a list")
        vals = vals[:-1] + vals[-1]
    if name == "templatefile":
        return templatefile(*vals)
    f = fn.FUNCTIONS.get(name)
    if f is None:
        raise EvalError(f"function {name}() is not supported by this checker (deploy/checks/hcl_functions.py)")
    try:
        return f(*vals)
    except EvalError as e:
        raise EvalError(f"{name}(): {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise EvalError(f"{name}(): invalid arguments ({e})") from None


_templates = {}


def template_of(path):
    if path not in _templates:
        try:
            with open(path, encoding="utf-8") as f:
                _templates[path] = parse_template(f.read(), path)
        except OSError as e:
            raise EvalError(f"templatefile(): cannot read {path}: {e.strerror}") from None
    return _templates[path]


def templatefile(path, variables):
    if not isinstance(variables, dict):
        raise EvalError("templatefile(): vars must be an object or map")
    tmpl = template_of(path)
    missing = sorted(free_names(tmpl) - set(variables))
    if missing:
        raise EvalError(f"templatefile({path}): vars has no {', '.join(missing)}")

    def undefined(n):
        raise EvalError(f"templatefile({path}): vars has no {n!r}")
    return render_parts_str(tmpl[1], Scope(dict(variables), fallback=undefined))
