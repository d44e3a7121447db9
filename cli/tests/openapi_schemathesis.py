"""Runs the Schemathesis CLI (from .deps/python-schemathesis) with its arguments.

Used by cli/tests/openapi.rs. One patch first: on CPython before 3.11.8,
`ast.parse` can raise "SystemError: AST constructor recursion depth mismatch"
(CPython gh-106905) when Hypothesis reads a lambda's source to describe it;
Schemathesis's coverage phase then reports a runtime error for an operation.
The description only names a filter in reprs, so a failure to build it falls
back to a fixed text; nothing about the generated data or the checks changes.
"""

import runpy
import sys

from hypothesis.internal import lambda_sources

_describe = lambda_sources.lambda_description


def _lambda_description(f):
    try:
        return _describe(f)
    except SystemError:
        return "lambda: <source unavailable>"


lambda_sources.lambda_description = _lambda_description
sys.argv[0] = "schemathesis"
runpy.run_module("schemathesis.cli", run_name="__main__")
