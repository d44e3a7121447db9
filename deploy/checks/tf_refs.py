#!/usr/bin/env python3
"""Every reference in the Terraform under deploy/terraform resolves.

There is no terraform binary here, so this does the part of `terraform validate`
that needs no provider schemas. For every directory holding .tf files (a root or
a module; .terraform/ is ignored) it checks, within that directory:

  var.NAME               a `variable "NAME"` block
  local.NAME             a key of some `locals` block
  data.TYPE.NAME         a `data "TYPE" "NAME"` block
  ephemeral.TYPE.NAME    an `ephemeral "TYPE" "NAME"` block
  module.NAME[.OUTPUT]   a `module "NAME"` block, and with a local source
                         (./x, ../x) an `output "OUTPUT"` in that directory
  TYPE.NAME              a `resource "TYPE" "NAME"` block (any other root)
  each.key/value         only in a block with for_each
  count.index            only in a block with count
  self.*                 only in provisioner, connection and postcondition blocks
  path.module/root/cwd, terraform.workspace/applying

Names bound by `for` expressions (and %{for} template directives) and the
iterators of `dynamic` blocks are local. Module calls with a local source are
checked too: every argument must be a variable of the module, and every variable
of the module without a default must be passed. Duplicate declarations are
errors. Variables and locals that nothing references are warnings.

The .tf files are read with a small HCL tokenizer of its own: string literals
and heredocs are skipped except for their ${...} and %{...} parts, comments are
skipped, and line numbers are exact. No third-party package is needed.

Usage: tf_refs.py [--no-warnings] [--quiet] [DIR ...]   (default: deploy/terraform)
Exit status 1 with one line per problem, `file:line: message`.
"""
import argparse
import os
import re
import sys
from dataclasses import dataclass, field, replace

KEYWORDS = {"true", "false", "null", "for", "in", "if"}
MODULE_META = {"source", "version", "count", "for_each", "providers", "depends_on"}
OPEN_KINDS = {"io", "do", "so", "ho"}  # ${  %{  "  <<EOF
CLOSE_KINDS = {"ic", "dc", "sc", "hc"}
PUNCT = re.compile(r"\.\.\.|=>|==|!=|<=|>=|&&|\|\||::|.", re.S)
IDENT = re.compile(r"[^\W\d][\w-]*")
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
HEREDOC = re.compile(r"<<-?([^\W\d][\w-]*)([^\n]*)\n")
# each., count., self., path. and terraform.: (Ctx flag needed, valid attributes, where).
SPECIAL = {
    "each": ("for_each", {"key", "value"}, "a block with for_each"),
    "count": ("count", {"index"}, "a block with count"),
    "self": ("self_ok", None, "a provisioner, connection or postcondition block"),
    "path": (None, {"module", "root", "cwd"}, ""),
    "terraform": (None, {"workspace", "applying"}, ""),
}


class HCLError(Exception):
    def __init__(self, line, msg):
        super().__init__(msg)
        self.line = line


# --- tokenizer ------------------------------------------------------------------
# A token is (kind, value, line). Kinds: id, num, p (punctuation), nl, lit
# (literal text of a template), so/sc (quoted string), ho/hc (heredoc),
# io/ic (${ }), do/dc (%{ }).


class Lexer:
    def __init__(self, text):
        self.s, self.i, self.line, self.toks = text, 0, 1, []

    def emit(self, kind, value=""):
        self.toks.append((kind, value, self.line))

    def run(self):
        self.code(None)
        return self.toks

    def code(self, close):
        """Expressions and bodies; with close ('ic'/'dc'), up to the '}' ending an interpolation."""
        s, depth = self.s, 0
        while self.i < len(s):
            c = s[self.i]
            if c == "\n":
                self.emit("nl")
                self.line += 1
                self.i += 1
            elif c in " \t\r\ufeff":
                self.i += 1
            elif c == "#" or s.startswith("//", self.i):
                while self.i < len(s) and s[self.i] != "\n":
                    self.i += 1
            elif s.startswith("/*", self.i):
                end = s.find("*/", self.i + 2)
                if end < 0:
                    raise HCLError(self.line, "unterminated /* comment")
                self.line += s.count("\n", self.i, end)
                self.i = end + 2
            elif IDENT.match(s, self.i) or c.isdigit():
                after_dot = self.toks and self.toks[-1][:2] == ("p", ".")  # a.0.1: two indexes
                kind, rx = ("id", IDENT) if not c.isdigit() else ("num", re.compile(r"\d+") if after_dot else NUMBER)
                end = rx.match(s, self.i).end()
                self.emit(kind, s[self.i:end])
                self.i = end
            elif c == '"':
                self.emit("so")
                self.i += 1
                self.template(quoted=True)
            elif s.startswith("<<", self.i) and (h := HEREDOC.match(s, self.i)):
                if h.group(2).strip():
                    raise HCLError(self.line, f"heredoc <<{h.group(1)}: the marker must end its line")
                self.emit("ho", h.group(1))
                self.i, self.line = h.end(), self.line + 1
                self.template(quoted=False, marker=h.group(1))
            elif c == "}" and close and depth == 0:
                self.emit(close)
                self.i += 1
                return
            else:
                depth += {"{": 1, "}": -1}.get(c, 0)
                op = PUNCT.match(s, self.i).group()
                self.emit("p", op)
                self.i += len(op)
        if close:
            raise HCLError(self.line, "unterminated ${ or %{")

    def template(self, quoted, marker=None):
        """A quoted string (quoted) or a heredoc body (marker): literal text is
        skipped; ${...} and %{...} are tokenized as code."""
        s, start_line = self.s, self.line
        at_line_start, lit = not quoted, []

        def flush():
            if lit:
                self.emit("lit", "".join(lit))
                lit.clear()

        while self.i < len(s):
            if at_line_start:
                end = s.find("\n", self.i)
                end = len(s) if end < 0 else end
                if s[self.i:end].strip() == marker:
                    self.i = end
                    flush()
                    self.emit("hc")
                    return
                at_line_start = False
            c = s[self.i]
            if quoted and c == '"':
                self.i += 1
                flush()
                self.emit("sc")
                return
            if quoted and c == "\\":
                lit.append(s[self.i:self.i + 2])
                self.i += 2
            elif c == "\n":
                if quoted:
                    raise HCLError(start_line, "unterminated string")
                lit.append(c)
                self.line += 1
                self.i += 1
                at_line_start = True
            elif s.startswith("$${", self.i) or s.startswith("%%{", self.i):
                lit.append(s[self.i + 1:self.i + 3])
                self.i += 3
            elif s.startswith("${", self.i) or s.startswith("%{", self.i):
                flush()
                self.emit("io" if c == "$" else "do")
                self.i += 2
                self.code("ic" if c == "$" else "dc")
            else:
                lit.append(c)
                self.i += 1
        raise HCLError(start_line, "unterminated string" if quoted else f"unterminated heredoc <<{marker}")


def matches(toks):
    """Index of the closing token of every opening one."""
    out, stack = {}, []
    for j, (kind, val, line) in enumerate(toks):
        if kind in OPEN_KINDS or (kind == "p" and val in "([{"):
            stack.append(j)
        elif kind in CLOSE_KINDS or (kind == "p" and val in ")]}"):
            if not stack:
                raise HCLError(line, f"unbalanced {val or kind!r}")
            out[stack.pop()] = j
    if stack:
        raise HCLError(toks[stack[-1]][2], f"unclosed {toks[stack[-1]][1] or toks[stack[-1]][0]!r}")
    return out


# --- bodies -------------------------------------------------------------------------


@dataclass
class Attr:
    name: str
    line: int
    a: int  # expression tokens: toks[a:b]
    b: int


@dataclass
class Block:
    type: str
    labels: list
    line: int
    body: list


def parse_body(toks, m, i, nested):
    items = []
    while i < len(toks):
        kind, val, line = toks[i]
        if kind == "nl":
            i += 1
        elif nested and (kind, val) == ("p", "}"):
            return items, i + 1
        elif kind == "id" and i + 1 < len(toks) and toks[i + 1][:2] == ("p", "="):
            j = i + 2
            while j < len(toks) and toks[j][0] != "nl" and toks[j][:2] != ("p", "}"):
                j = m[j] + 1 if j in m else j + 1
            items.append(Attr(val, line, i + 2, j))
            i = j
        elif kind == "id":
            labels, j = [], i + 1
            while j < len(toks) and toks[j][0] in ("id", "so"):
                if toks[j][0] == "id":
                    labels.append(toks[j][1])
                    j += 1
                else:
                    labels.append(literal(toks, j, m[j]))
                    j = m[j] + 1
            if j >= len(toks) or toks[j][:2] != ("p", "{"):
                raise HCLError(line, f"expected '{{' after block header {val}")
            body, i = parse_body(toks, m, j + 1, True)
            items.append(Block(val, labels, line, body))
        else:
            raise HCLError(line, f"unexpected {val or kind!r}")
    if nested:
        raise HCLError(toks[-1][2] if toks else 1, "unclosed block")
    return items, i


def literal(toks, a, b):
    """Text of the quoted string toks[a..b] (so ... sc), or None when it interpolates."""
    inner = toks[a + 1:b]
    if any(t[0] != "lit" for t in inner):
        return None
    return "".join(t[1] for t in inner)


# --- expressions ------------------------------------------------------------------------


def first(toks, a, b):
    while a < b and (toks[a][0] == "nl" or toks[a][:2] == ("p", "~")):
        a += 1
    return a


def walk(toks, m, a, b, bound, out, in_object=False):
    """References (parts, line) in toks[a:b] whose root is not a bound name."""
    j, item_start = a, True
    while j < b:
        kind, val, line = toks[j]
        if kind == "nl" or (kind, val) == ("p", ","):
            item_start = in_object
            j += 1
            continue
        if j in m:
            k = m[j]
            f = first(toks, j + 1, k)
            if kind == "p" and val in "[{" and f < k and toks[f][:2] == ("id", "for"):
                walk_for(toks, m, f + 1, k, bound, out)
            elif kind in ("so", "ho"):
                walk_template(toks, m, j + 1, k, bound, out)
            else:
                walk(toks, m, j + 1, k, bound, out, in_object=(kind, val) == ("p", "{"))
            j, item_start = k + 1, False
            continue
        if kind != "id":
            j, item_start = j + 1, False
            continue
        nxt = toks[j + 1][:2] if j + 1 < b else None
        if in_object and item_start and nxt in (("p", "="), ("p", ":")):
            j, item_start = j + 2, False  # an object key
            continue
        item_start = False
        if nxt == ("p", "("):
            j += 1  # a function
            continue
        if nxt == ("p", "::"):  # provider::NS::FUNC(...)
            while j + 1 < b and toks[j + 1][:2] == ("p", "::"):
                j += 2
            j += 1
            continue
        if val in KEYWORDS or (j > a and toks[j - 1][:2] == ("p", ".")):  # f(x).attr, (x).attr
            j += 1
            continue
        parts, k = [val], j + 1
        while k < b:
            t = toks[k][:2]
            if t == ("p", ".") and k + 1 < b and toks[k + 1][0] in ("id", "num"):
                parts.append(toks[k + 1][1])
                k += 2
            elif t == ("p", ".") and k + 1 < b and toks[k + 1][:2] == ("p", "*"):
                parts.append("*")
                k += 2
            elif t == ("p", "["):
                walk(toks, m, k + 1, m[k], bound, out)
                parts.append("[]")
                k = m[k] + 1
            else:
                break
        if val not in bound:
            out.append((parts, line))
        j = k


def for_names(toks, a, b):
    """`NAME [, NAME] in` from toks[a:]; the names and the index after `in`."""
    names, j = [], a
    while j < b and toks[j][:2] != ("id", "in"):
        if toks[j][0] == "id":
            names.append(toks[j][1])
        j += 1
    return set(names), j + 1


def walk_for(toks, m, a, b, bound, out):
    names, j = for_names(toks, a, b)
    k, q = j, 0  # the ':' ending the collection (a ? b : c inside it is skipped)
    while k < b:
        t = toks[k][:2]
        if k in m:
            k = m[k] + 1
            continue
        if t == ("p", "?"):
            q += 1
        elif t == ("p", ":"):
            if q == 0:
                break
            q -= 1
        k += 1
    walk(toks, m, j, k, bound, out)
    walk(toks, m, k + 1, b, bound | names, out)


def directive(toks, m, j):
    f = first(toks, j + 1, m[j])
    return toks[f][1] if f < m[j] and toks[f][0] == "id" else None


def walk_template(toks, m, a, b, bound, out):
    j = a
    while j < b:
        kind = toks[j][0]
        if kind == "io":
            walk(toks, m, j + 1, m[j], bound, out)
            j = m[j] + 1
        elif kind == "do":
            kw, f = directive(toks, m, j), first(toks, j + 1, m[j])
            if kw == "for":
                names, c = for_names(toks, f + 1, m[j])
                walk(toks, m, c, m[j], bound, out)
                depth, e = 1, m[j] + 1
                while e < b:
                    if toks[e][0] == "do":
                        depth += {"for": 1, "endfor": -1}.get(directive(toks, m, e), 0)
                        if depth == 0:
                            break
                    e = m[e] + 1 if e in m else e + 1
                walk_template(toks, m, m[j] + 1, e, bound | names, out)
                j = m[e] + 1 if e < b else b
            else:
                if kw == "if":
                    walk(toks, m, f + 1, m[j], bound, out)
                j = m[j] + 1
        else:
            j = j + 1


# --- one directory -----------------------------------------------------------------------


@dataclass
class Ctx:
    file: str
    bound: frozenset = frozenset()
    for_each: bool = False
    count: bool = False
    self_ok: bool = False
    owner: tuple = ()
    skip: frozenset = frozenset()


@dataclass
class Dir:
    path: str
    variables: dict = field(default_factory=dict)  # name -> (file, line, has_default)
    locals: dict = field(default_factory=dict)  # name -> (file, line)
    outputs: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)  # (type, name) -> (file, line)
    data: dict = field(default_factory=dict)
    ephemeral: dict = field(default_factory=dict)
    modules: dict = field(default_factory=dict)  # name -> (file, line, source, {arg: line})
    refs: list = field(default_factory=list)  # (parts, file, line, owner)
    errors: list = field(default_factory=list)  # (file, line, message)


class Scanner:
    def __init__(self, d):
        self.d = d

    def declare(self, table, key, file, line, what, value=None):
        if key in table:
            f, l = table[key][:2]
            self.d.errors.append((file, line, f"duplicate {what} (first declared at {f}:{l})"))
            return
        table[key] = (file, line) + (value if value is not None else ())

    def expr(self, attr, ctx):
        out = []
        walk(self.toks, self.m, attr.a, attr.b, ctx.bound, out)
        for parts, line in out:
            self.ref(parts, line, ctx)

    def ref(self, parts, line, ctx):
        root, attr = parts[0], (parts[1] if len(parts) > 1 else None)
        err = lambda msg: self.d.errors.append((ctx.file, line, msg))
        if root in SPECIAL:
            flag, valid, where = SPECIAL[root]
            text = root if root == "self" else f"{root}.{attr or ''}"
            if flag and not getattr(ctx, flag):
                err(f"{text} used outside {where}")
            elif valid and attr not in valid:
                err(f"invalid reference {text} (one of {', '.join(f'{root}.{v}' for v in sorted(valid))})")
        else:
            self.d.refs.append((parts, ctx.file, line, ctx.owner))

    def body(self, items, ctx):
        for it in items:
            if isinstance(it, Attr):
                if it.name not in ctx.skip:
                    self.expr(it, ctx)
                continue
            inner = replace(ctx, skip=frozenset())
            if it.type == "dynamic":
                name = it.labels[0] if it.labels else "?"
                for sub in it.body:
                    if isinstance(sub, Attr) and sub.name == "iterator":
                        f = first(self.toks, sub.a, sub.b)
                        name = self.toks[f][1] if f < sub.b else name
                with_it = replace(inner, bound=ctx.bound | {name})
                for sub in it.body:
                    if isinstance(sub, Attr) and sub.name == "for_each":
                        self.expr(sub, inner)
                    elif isinstance(sub, Attr) and sub.name != "iterator":
                        self.expr(sub, with_it)
                    elif isinstance(sub, Block):
                        self.body(sub.body, with_it)
            elif it.type == "lifecycle":
                self.body(it.body, replace(inner, skip=frozenset({"ignore_changes"})))
            elif it.type in ("provisioner", "connection", "postcondition"):
                self.body(it.body, replace(inner, self_ok=True))
            else:
                self.body(it.body, inner)

    def file(self, path, text):
        toks = Lexer(text).run()
        self.toks, self.m = toks, matches(toks)
        items, _ = parse_body(toks, self.m, 0, False)
        d = self.d
        for it in items:
            if isinstance(it, Attr):
                d.errors.append((path, it.line, f"unexpected argument {it.name} at the top level"))
                continue
            ctx = Ctx(path)
            attrs = {a.name: a for a in it.body if isinstance(a, Attr)}
            loop = replace(ctx, for_each="for_each" in attrs, count="count" in attrs)
            t, lab = it.type, it.labels
            if t in ("resource", "data", "ephemeral") and len(lab) == 2:
                table = {"resource": d.resources, "data": d.data, "ephemeral": d.ephemeral}[t]
                self.declare(table, tuple(lab), path, it.line, f"{t} \"{lab[0]}\" \"{lab[1]}\"")
                self.body(it.body, replace(loop, skip=frozenset({"provider"})))
            elif t == "module" and len(lab) == 1:
                src = attrs.get("source")
                source = None
                if src:
                    f = first(toks, src.a, src.b)
                    if f < src.b and toks[f][0] == "so":
                        source = literal(toks, f, self.m[f])
                args = {a: at.line for a, at in attrs.items() if a not in MODULE_META}
                self.declare(d.modules, lab[0], path, it.line, f"module \"{lab[0]}\"", (source, args))
                self.body(it.body, replace(loop, skip=frozenset({"source", "version", "providers"})))
            elif t == "variable" and len(lab) == 1:
                self.declare(d.variables, lab[0], path, it.line, f"variable \"{lab[0]}\"", ("default" in attrs,))
                self.body(it.body, replace(ctx, owner=("var", lab[0]), skip=frozenset({"type"})))
            elif t == "locals":
                for a in it.body:
                    if isinstance(a, Attr):
                        self.declare(d.locals, a.name, path, a.line, f"local \"{a.name}\"")
                        self.expr(a, replace(ctx, owner=("local", a.name)))
            elif t == "output" and len(lab) == 1:
                self.declare(d.outputs, lab[0], path, it.line, f"output \"{lab[0]}\"")
                self.body(it.body, ctx)
            elif t == "provider":
                self.body(it.body, replace(ctx, skip=frozenset({"alias"})))
            elif t in ("terraform", "moved", "removed"):
                pass  # addresses and settings, no expressions to resolve
            elif t == "check":
                for sub in it.body:
                    if isinstance(sub, Block) and sub.type == "data" and len(sub.labels) == 2:
                        self.declare(d.data, tuple(sub.labels), path, sub.line, f"data \"{sub.labels[0]}\" \"{sub.labels[1]}\"")
                        self.body(sub.body, replace(ctx, skip=frozenset({"provider"})))
                    elif isinstance(sub, Block):
                        self.body(sub.body, ctx)
            elif t in ("resource", "data", "ephemeral", "module", "variable", "output"):
                d.errors.append((path, it.line, f"{t} block with labels {lab} (wrong number of labels)"))
            else:
                self.body(it.body, loop)


def scan_dir(path):
    d = Dir(path)
    sc = Scanner(d)
    for name in sorted(os.listdir(path)):
        fp = os.path.join(path, name)
        if not name.endswith(".tf") or not os.path.isfile(fp):
            continue
        shown = display(fp)
        try:
            with open(fp, encoding="utf-8") as f:
                sc.file(shown, f.read())
        except HCLError as e:
            d.errors.append((shown, e.line, f"cannot tokenize: {e}"))
    return d


def display(path):
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


# --- resolution ------------------------------------------------------------------------


def is_name(p):
    return p not in ("[]", "*") and not p[0].isdigit()


def resolve(d, get_dir):
    """Problems and warnings of one directory; get_dir(path) scans a module source."""
    errors, used_vars, used_locals = list(d.errors), set(), set()

    def err(file, line, msg):
        errors.append((file, line, msg))

    for parts, file, line, owner in d.refs:
        root = parts[0]
        names = [p for p in parts[1:3] if is_name(p)] if len(parts) > 1 else []
        if root in ("var", "local"):
            if len(parts) < 2 or not is_name(parts[1]):
                err(file, line, f"invalid reference {root} (needs {root}.NAME)")
                continue
            table, used = (d.variables, used_vars) if root == "var" else (d.locals, used_locals)
            if owner != (root, parts[1]):
                used.add(parts[1])
            if parts[1] not in table:
                err(file, line, f"unresolved reference {root}.{parts[1]}")
        elif root in ("data", "ephemeral"):
            if len(parts) < 3 or len(names) < 2 or names != parts[1:3]:
                err(file, line, f"invalid reference {'.'.join(parts)} (needs {root}.TYPE.NAME)")
            elif tuple(names) not in (d.data if root == "data" else d.ephemeral):
                err(file, line, f"unresolved reference {root}.{names[0]}.{names[1]}")
        elif root == "module":
            if len(parts) < 2 or not is_name(parts[1]):
                err(file, line, "invalid reference module (needs module.NAME)")
                continue
            mod = d.modules.get(parts[1])
            if mod is None:
                err(file, line, f"unresolved reference module.{parts[1]}")
                continue
            rest = [p for p in parts[2:] if p not in ("[]", "*")]
            target = local_source(d.path, mod[2])
            if rest and target and os.path.isdir(target):
                if rest[0] not in get_dir(target).outputs:
                    err(file, line, f"unresolved reference module.{parts[1]}.{rest[0]} "
                        f"(no output \"{rest[0]}\" in {display(target)})")
        else:
            if len(parts) < 2 or not is_name(parts[1]):
                err(file, line, f"invalid reference {root} (a resource reference needs TYPE.NAME)")
            elif (root, parts[1]) not in d.resources:
                err(file, line, f"unresolved reference {root}.{parts[1]}")

    for name, (file, line, source, args) in d.modules.items():
        target = local_source(d.path, source)
        if source is None:
            err(file, line, f"module \"{name}\": no literal source")
            continue
        if target is None:
            continue  # a registry or remote module: its variables are not here
        if not os.path.isdir(target) or not any(f.endswith(".tf") for f in os.listdir(target)):
            err(file, line, f"module \"{name}\": source {source} is not a directory with .tf files")
            continue
        mod = get_dir(target)
        for arg, aline in sorted(args.items(), key=lambda a: a[1]):
            if arg not in mod.variables:
                err(file, aline, f"module \"{name}\": unsupported argument \"{arg}\" "
                    f"(no variable \"{arg}\" in {display(target)})")
        for var, (vfile, vline, has_default) in sorted(mod.variables.items()):
            if not has_default and var not in args:
                err(file, line, f"module \"{name}\": missing required argument \"{var}\" "
                    f"(variable without a default at {vfile}:{vline})")

    warnings = [(v[0], v[1], f"warning: {what} \"{name}\" is declared but never used")
                for what, table, used in (("variable", d.variables, used_vars), ("local", d.locals, used_locals))
                for name, v in table.items() if name not in used]
    return errors, warnings


def local_source(base, source):
    if source and (source.startswith("./") or source.startswith("../")):
        return os.path.normpath(os.path.join(base, source))
    return None


def tf_dirs(root):
    if os.path.isfile(root):
        return [os.path.dirname(root) or "."]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(n for n in dirnames if n != ".terraform")
        if any(f.endswith(".tf") for f in filenames):
            out.append(dirpath)
    return out


def check(roots):
    """(errors, warnings, stats) for every Terraform directory under roots."""
    cache = {}

    def get_dir(path):
        key = os.path.realpath(path)
        if key not in cache:
            cache[key] = scan_dir(path)
        return cache[key]

    dirs = sorted({p for r in roots for p in tf_dirs(r)})
    errors, warnings, nrefs = [], [], 0
    for path in dirs:
        d = get_dir(path)
        e, w = resolve(d, get_dir)
        errors += e
        warnings += w
        nrefs += len(d.refs)
    order = lambda x: (x[0], x[1], x[2])
    return sorted(set(errors), key=order), sorted(set(warnings), key=order), (len(dirs), nrefs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", help="Terraform trees (default: deploy/terraform of this repository)")
    ap.add_argument("--no-warnings", action="store_true", help="do not print unused variables and locals")
    ap.add_argument("--quiet", action="store_true", help="no summary line (on stderr) when there is no problem")
    args = ap.parse_args(argv)
    roots = args.dirs or [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "terraform")]
    roots = [os.path.normpath(r) for r in roots]
    for r in roots:
        if not os.path.exists(r):
            print(f"tf_refs: {r}: no such file or directory", file=sys.stderr)
            return 2
    errors, warnings, (ndirs, nrefs) = check(roots)
    if not args.no_warnings:
        for file, line, msg in warnings:
            print(f"{file}:{line}: {msg}")
    for file, line, msg in errors:
        print(f"{file}:{line}: {msg}")
    if errors or not args.quiet:
        print(f"tf_refs: {ndirs} directories, {nrefs} references: "
              f"{len(errors)} problems, {len(warnings)} warnings", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
