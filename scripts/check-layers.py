#!/usr/bin/env python3
"""Checks the shape of the tree that the compiler does not.

1. No import cycle between the modules of a crate. A module's edges are the
   modules it names through `crate::...`, `super::...` or `self::...` paths
   outside its `#[cfg(test)]` code; `mod` declarations are not edges. A cycle
   (a -> b -> ... -> a) fails, and the cycle is printed.
2. No non-test source file over 700 lines, and no test file over 1,000 lines.

Run from anywhere: `python3 scripts/check-layers.py`. Exits 1 on a finding.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = ["policies", "contract", "registry", "runtime", "router", "cli"]
MAX_SOURCE_LINES = 700
MAX_TEST_LINES = 1000

PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super|self)::\{([^;]*)\};", re.S)


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("lib", "main"):
        rel = rel[:-1]
    elif rel[-1] == "mod":
        rel = rel[:-1]
    return tuple(rel)


def non_test_text(text):
    """The file without its `#[cfg(test)]` items (a test module or function)."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        j = text.find("{", m.end())
        semi = text.find(";", m.end())
        if semi != -1 and (j == -1 or semi < j):  # `#[cfg(test)] mod tests;`
            i = semi + 1
            continue
        depth, k = 0, j
        while k < len(text):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        i = k + 1
    out.append(text[i:])
    text = "".join(out)
    # Comments and strings name paths without using them.
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def resolve(modules, here, head, rest):
    if head == "crate":
        base = ()
    elif head == "self":
        base = here
    else:  # super, possibly repeated
        base = here[:-1]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    parts = base + tuple(rest)
    # The longest prefix that is a module of the crate.
    for n in range(len(parts), -1, -1):
        if parts[:n] in modules:
            return parts[:n]
    return None


def crate_graph(crate):
    src = os.path.join(ROOT, crate, "src")
    files = {}
    for dirpath, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(dirpath, name)
                files[module_of(src, path)] = path
    modules = set(files)
    graph = {m: set() for m in modules}
    for here, path in files.items():
        text = non_test_text(open(path, encoding="utf-8").read())
        refs = []
        for m in USE_GROUP_RE.finditer(text):
            for item in re.split(r",\s*", m.group(2)):
                item = item.strip().split(" as ")[0]
                if item:
                    refs.append((m.group(1), tuple(p for p in item.split("::") if p and p != "{")))
        for m in PATH_RE.finditer(text):
            refs.append((m.group(1), tuple(m.group(2).split("::")[1:])))
        for head, rest in refs:
            target = resolve(modules, here, head, rest)
            if target is not None and target != here:
                # Naming a descendant's item through its parent is an edge to
                # the descendant; an ancestor that only declares or re-exports
                # its children is not a cycle with them.
                graph[here].add(target)
    return graph


def find_cycle(graph):
    colour, stack = {}, []

    def visit(node):
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # A parent module (mod.rs/lib.rs) is where children are declared:
            # an edge to an ancestor is only a cycle if the ancestor also names
            # this module's items, which the walk finds anyway.
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if colour.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def is_test_file(path):
    parts = path.split(os.sep)
    return "tests" in parts or "benches" in parts or "examples" in parts


def main():
    failed = False
    for crate in CRATES:
        graph = crate_graph(crate)
        # The crate root declares and re-exports every module; it is not a layer.
        graph.pop((), None)
        for deps in graph.values():
            deps.discard(())
        cycle = find_cycle(graph)
        if cycle:
            failed = True
            print(f"{crate}: import cycle: " + " -> ".join("::".join(m) or "crate" for m in cycle))
    for crate in CRATES:
        for dirpath, _, names in os.walk(os.path.join(ROOT, crate)):
            if "target" in dirpath.split(os.sep):
                continue
            for name in names:
                if not name.endswith(".rs"):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)
                lines = sum(1 for _ in open(path, encoding="utf-8"))
                limit = MAX_TEST_LINES if is_test_file(rel) else MAX_SOURCE_LINES
                if lines > limit:
                    failed = True
                    print(f"{rel}: {lines} lines (limit {limit})")
    if failed:
        sys.exit(1)
    print("layers ok: no import cycle between modules; file sizes within limits")


if __name__ == "__main__":
    main()
