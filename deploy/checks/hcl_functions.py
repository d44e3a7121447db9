"""Terraform's built-in functions, the ones deploy/terraform uses and their
neighbours, for hcl_eval.py; plus the value helpers they share (conversion
to string, number and bool, equality) and Terraform's YAML 1.2 decoding.

Values: str, int/float, bool, None, list (tuples, lists and sets) and dict
(objects and maps). Sets are lists sorted as Terraform orders them.
"""
import base64
import decimal
import hashlib
import ipaddress
import json
import math
import os
import re

import yaml


class EvalError(Exception):
    """An error Terraform would report while evaluating (try() and can() catch it)."""


# --- values -----------------------------------------------------------------------

def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def num(x):
    """Integral results are ints (4096 / 1024 is 4, as in Terraform's output)."""
    if isinstance(x, float):
        if math.isinf(x) or math.isnan(x):
            raise EvalError("the result is not a finite number")
        if x.is_integer():
            return int(x)
    return x


def parse_number(text):
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if not re.fullmatch(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", text):
        raise EvalError(f"{text!r} is not a number")
    d = decimal.Decimal(text)
    return int(d) if d == d.to_integral_value() else float(text)


def fmt_num(n):
    if isinstance(n, int):
        return str(n)
    if n.is_integer():
        return str(int(n))
    text = repr(n)
    return format(decimal.Decimal(text), "f") if "e" in text else text


def type_name(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if is_num(v):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(v), type(v).__name__)


def to_str(v):
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if is_num(v):
        return fmt_num(v)
    raise EvalError(f"a string is required, got {type_name(v)}")


def to_number(v, what=None):
    if is_num(v):
        return v
    if isinstance(v, str):
        return parse_number(v)
    raise EvalError(f"{what + ': ' if what else ''}a number is required, got {type_name(v)}")


def to_bool(v, what=None):
    if isinstance(v, bool):
        return v
    if v in ("true", "false"):
        return v == "true"
    raise EvalError(f"{what + ': ' if what else ''}a bool is required, got {type_name(v)}")


def eq(a, b):
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if is_num(a) and is_num(b):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(eq(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def need(v, kind, what):
    if not isinstance(v, kind) or v is None:
        raise EvalError(f"{what} must be a {kind.__name__ if kind is not dict else 'map or object'}, got {type_name(v)}")
    return v


def toset(items):
    out = []
    for x in need(items, list, "the argument"):
        if not any(eq(x, y) for y in out):
            out.append(x)
    if all(isinstance(x, str) for x in out):
        return sorted(out)
    if all(is_num(x) for x in out):
        return sorted(out)
    return out


# --- YAML 1.2 core schema, as Terraform's yamldecode ------------------------------------

class Yaml12Loader(yaml.SafeLoader):
    pass


Yaml12Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in (
        "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:timestamp")]
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


def yamldecode(text):
    try:
        return yaml.load(need(text, str, "the argument"), Loader=Yaml12Loader)
    except yaml.YAMLError as e:
        raise EvalError(f"invalid YAML: {e}") from None


# --- functions ------------------------------------------------------------------------

def jsonencode(v):
    text = json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    for c, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(c, esc)
    return text


def merge(*maps):
    out = {}
    for m in maps:
        if m is not None:
            out.update(need(m, dict, "every argument"))
    return out


def coalesce(*args):
    for a in args:
        if a is not None and a != "":
            return a
    raise EvalError("no non-null, non-empty-string arguments")


def length(v):
    if isinstance(v, (str, list, dict)):
        return len(v)
    raise EvalError(f"length of a {type_name(v)}")


def lookup(m, key, *default):
    need(m, dict, "the first argument")
    if key in m:
        return m[key]
    if default:
        return default[0]
    raise EvalError(f"the map has no key {key!r} and no default is given")


def re2(pattern):
    try:
        return re.compile(need(pattern, str, "the pattern").replace(r"\z", r"\Z"))
    except re.error as e:
        raise EvalError(f"invalid regular expression {pattern!r}: {e}") from None


def _groups(m):
    if not m.re.groups:
        return m.group(0)
    if m.re.groupindex and len(m.re.groupindex) == m.re.groups:
        return m.groupdict()
    return list(m.groups())


def regex(pattern, s):
    m = re2(pattern).search(need(s, str, "the string"))
    if not m:
        raise EvalError(f"pattern {pattern!r} did not match {s!r}")
    return _groups(m)


def replace(s, sub, rep):
    need(s, str, "the string")
    if len(sub) >= 2 and sub[0] == sub[-1] == "/":
        rep = re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", rep.replace("\\", "\\\\"))
        return re2(sub[1:-1]).sub(rep, s)
    return s.replace(sub, rep)


FMT = re.compile(r"%([-+ #0]*)([0-9]+)?(?:\.([0-9]+))?([a-zA-Z%])")


def format_(f, *args):
    out, pos, ai = [], 0, 0
    for m in FMT.finditer(need(f, str, "the format")):
        out.append(f[pos:m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if ai >= len(args):
            raise EvalError(f"not enough arguments for {f!r}")
        a, ai = args[ai], ai + 1
        spec = "%" + flags + (width or "") + ("." + prec if prec else "")
        if verb == "d":
            n = to_number(a)
            if n != int(n):
                raise EvalError(f"%d of a fractional number {a}")
            out.append((spec + "d") % int(n))
        elif verb in "feEgG":
            out.append((spec + verb) % float(to_number(a)))
        elif verb in "xXob":
            out.append(format(int(to_number(a)), flags + (width or "") + verb))
        elif verb == "s":
            out.append((spec + "s") % to_str(a))
        elif verb == "q":
            out.append((spec + "s") % json.dumps(to_str(a), ensure_ascii=False))
        elif verb == "v":
            out.append((spec + "s") % (jsonencode(a) if isinstance(a, (list, dict)) else to_str(a)))
        elif verb == "t":
            out.append((spec + "s") % to_str(to_bool(a)))
        else:
            raise EvalError(f"unsupported format verb %{verb}")
    if ai < len(args):
        raise EvalError(f"too many arguments for {f!r}")
    out.append(f[pos:])
    return "".join(out)


def flatten(v):
    out = []
    for x in need(v, list, "the argument"):
        out.extend(flatten(x) if isinstance(x, list) else [x])
    return out


def _range(*a):
    a = [to_number(x) for x in a]
    start, stop, stepv = (0, a[0], 1) if len(a) == 1 else (a[0], a[1], a[2] if len(a) > 2 else (1 if a[1] >= a[0] else -1))
    out, x = [], start
    while (x < stop) if stepv > 0 else (x > stop):
        out.append(num(x))
        x += stepv
    return out


def _net(prefix):
    if "/" not in need(prefix, str, "the prefix"):
        raise EvalError(f"invalid CIDR {prefix!r}")
    try:
        return ipaddress.ip_network(prefix, strict=False)
    except ValueError as e:
        raise EvalError(f"invalid CIDR {prefix!r}: {e}") from None


def cidrhost(prefix, hostnum):
    net, n = _net(prefix), int(to_number(hostnum))
    if not -net.num_addresses <= n < net.num_addresses:
        raise EvalError(f"prefix {prefix} has no host {n}")
    return str(net[n])


def cidrsubnet(prefix, newbits, netnum):
    net = _net(prefix)
    newlen = net.prefixlen + int(to_number(newbits))
    if newlen > net.max_prefixlen or not 0 <= int(to_number(netnum)) < 2 ** int(to_number(newbits)):
        raise EvalError(f"cannot cut subnet {netnum} of {newbits} bits out of {prefix}")
    first = int(net.network_address) + int(to_number(netnum)) * 2 ** (net.max_prefixlen - newlen)
    return f"{type(net.network_address)(first)}/{newlen}"


def _slice(lst, start, end):
    start, end = int(to_number(start)), int(to_number(end))
    if not 0 <= start <= end <= len(need(lst, list, "the list")):
        raise EvalError(f"slice({start}, {end}) out of range for {len(lst)} elements")
    return lst[start:end]


def _substr(s, offset, n):
    offset, n = int(to_number(offset)), int(to_number(n))
    if offset < 0:
        offset += len(s)
    return s[offset:] if n < 0 else s[offset:offset + n]


def _file(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise EvalError(f"cannot read {path}: {e.strerror}") from None


def _hash(algo):
    return lambda s: hashlib.new(algo, to_str(s).encode()).hexdigest()


def _tostring(v):
    return None if v is None else to_str(v) if not isinstance(v, (list, dict)) else _fail(f"tostring of a {type_name(v)}")


def _fail(msg):
    raise EvalError(msg)


def _minmax(f):
    def g(*a):
        if not a:
            raise EvalError("needs at least one number")
        return f(to_number(x) for x in a)
    return g


FUNCTIONS = {
    # conversion
    "tostring": _tostring,
    "tonumber": lambda v: None if v is None else to_number(v),
    "tobool": lambda v: None if v is None else to_bool(v),
    "tolist": lambda v: list(need(v, list, "the argument")),
    "toset": toset,
    "tomap": lambda v: dict(need(v, dict, "the argument")),
    "nonsensitive": lambda v: v,
    "sensitive": lambda v: v,
    # numbers
    "floor": lambda n: math.floor(to_number(n)),
    "ceil": lambda n: math.ceil(to_number(n)),
    "abs": lambda n: abs(to_number(n)),
    "signum": lambda n: (to_number(n) > 0) - (to_number(n) < 0),
    "pow": lambda a, b: num(float(to_number(a)) ** to_number(b)),
    "max": _minmax(max),
    "min": _minmax(min),
    "sum": lambda lst: num(sum(to_number(x) for x in need(lst, list, "the argument"))),
    "parseint": lambda s, base: int(need(s, str, "the string"), int(to_number(base))),
    # strings
    "format": format_,
    "join": lambda sep, lst: need(sep, str, "the separator").join(to_str(x) for x in need(lst, list, "the list")),
    "split": lambda sep, s: need(s, str, "the string").split(need(sep, str, "the separator")),
    "replace": replace,
    "regex": regex,
    "regexall": lambda p, s: [_groups(m) for m in re2(p).finditer(need(s, str, "the string"))],
    "lower": lambda s: need(s, str, "the argument").lower(),
    "upper": lambda s: need(s, str, "the argument").upper(),
    "title": lambda s: re.sub(r"\b[a-z]", lambda m: m.group(0).upper(), need(s, str, "the argument")),
    "trimspace": lambda s: need(s, str, "the argument").strip(),
    "trim": lambda s, chars: need(s, str, "the argument").strip(chars),
    "trimprefix": lambda s, p: s[len(p):] if need(s, str, "the argument").startswith(p) else s,
    "trimsuffix": lambda s, p: s[:-len(p)] if p and need(s, str, "the argument").endswith(p) else s,
    "chomp": lambda s: re.sub(r"(?:\r?\n)+$", "", need(s, str, "the argument")),
    "startswith": lambda s, p: need(s, str, "the argument").startswith(p),
    "endswith": lambda s, p: need(s, str, "the argument").endswith(p),
    "strcontains": lambda s, p: p in need(s, str, "the argument"),
    "strrev": lambda s: need(s, str, "the argument")[::-1],
    "substr": _substr,
    "indent": lambda n, s: s.replace("\n", "\n" + " " * int(to_number(n))),
    # collections
    "merge": merge,
    "coalesce": coalesce,
    "coalescelist": lambda *a: next((x for x in a if x), None) or _fail("no non-empty list argument"),
    "concat": lambda *lists: [x for lst in lists for x in need(lst, list, "every argument")],
    "contains": lambda lst, v: any(eq(x, v) for x in need(lst, list, "the first argument")),
    "length": length,
    "keys": lambda m: sorted(need(m, dict, "the argument")),
    "values": lambda m: [m[k] for k in sorted(need(m, dict, "the argument"))],
    "lookup": lookup,
    "element": lambda lst, i: need(lst, list, "the list")[int(to_number(i)) % len(lst)] if lst else _fail("element() of an empty list"),
    "index": lambda lst, v: next((i for i, x in enumerate(need(lst, list, "the list")) if eq(x, v)), None)
    if any(eq(x, v) for x in lst) else _fail("the value is not in the list"),
    "one": lambda lst: (need(lst, list, "the argument")[0] if lst else None) if len(lst) <= 1 else _fail("one() of a list of more than one element"),
    "alltrue": lambda lst: all(to_bool(x) for x in need(lst, list, "the argument")),
    "anytrue": lambda lst: any(to_bool(x) for x in need(lst, list, "the argument")),
    "distinct": lambda lst: [x for i, x in enumerate(need(lst, list, "the argument")) if not any(eq(x, y) for y in lst[:i])],
    "compact": lambda lst: [x for x in need(lst, list, "the argument") if x not in (None, "")],
    "flatten": flatten,
    "reverse": lambda lst: list(reversed(need(lst, list, "the argument"))),
    "sort": lambda lst: sorted(to_str(x) for x in need(lst, list, "the argument")),
    "slice": _slice,
    "range": _range,
    "zipmap": lambda ks, vs: {to_str(k): v for k, v in zip(need(ks, list, "the keys"), need(vs, list, "the values"))},
    "setunion": lambda *sets: toset([x for s in sets for x in s]),
    # encoding, hashing, files
    "jsonencode": jsonencode,
    "jsondecode": lambda s: json.loads(need(s, str, "the argument")),
    "yamldecode": yamldecode,
    "base64encode": lambda s: base64.b64encode(to_str(s).encode()).decode(),
    "base64decode": lambda s: base64.b64decode(need(s, str, "the argument"), validate=True).decode(),
    "base64sha256": lambda s: base64.b64encode(hashlib.sha256(to_str(s).encode()).digest()).decode(),
    "sha256": _hash("sha256"),
    "sha1": _hash("sha1"),
    "md5": _hash("md5"),
    "file": _file,
    "fileexists": lambda p: os.path.isfile(p),
    "abspath": os.path.abspath,
    "basename": os.path.basename,
    "dirname": os.path.dirname,
    # network
    "cidrhost": cidrhost,
    "cidrsubnet": cidrsubnet,
    "cidrnetmask": lambda p: str(_net(p).netmask),
}
