"""CEL (``x-kubernetes-validations``) for the subset our CRDs use.

The rules in our CRDs use a small part of CEL: has(), size(), ternaries, boolean and integer arithmetic,
comparisons, string contains/startsWith/endsWith/matches, duration(), and the all/exists macros. This is
a small interpreter for exactly that subset. Rules outside it are skipped (listed in
SchemaRegistry.skipped_cel_rules; a test asserts that only transition rules are skipped), as are
transition rules (those reading ``oldSelf``): the API server only evaluates them on update.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterator
from typing import Any

from infra.verify.problems import Location, Problem, json_type
from infra.verify.structural import Schema

# A parsed rule: (tag, operands...), e.g. ("op", "&&", left, right); see _Parser and evaluate.
CelNode = tuple[Any, ...]


class CelUnsupportedError(Exception):
    pass


class CelEvalError(Exception):
    pass


_CEL_TOKEN_RE = re.compile(
    r"""
    \s*(?:
      (?P<num>\d+\.\d+|\d+)
    | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>==|!=|<=|>=|&&|\|\||[<>!?:+\-*/%()\[\],.])
    )""",
    re.VERBOSE,
)
_CEL_MACROS = ("all", "exists", "exists_one")
_CEL_METHODS = ("contains", "startsWith", "endsWith", "matches", "size")
_GO_DURATION_RE = re.compile(r"([-+]?)((?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|ms|s|m|h))+|0)")
_GO_DURATION_PART_RE = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def is_transition_rule(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


def iter_rules(schema: Schema, path: Location) -> Iterator[tuple[Location, dict[str, Any]]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for name, sub in schema.get("properties", {}).items():
        yield from iter_rules(sub, (*path, name))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from iter_rules(schema["additionalProperties"], (*path, "*"))
    if isinstance(schema.get("items"), dict):
        yield from iter_rules(schema["items"], (*path, 0))


def rule_problems(schema: Schema, value: Any, path: Location) -> list[Problem]:
    problems: list[Problem] = []
    for rule in schema.get("x-kubernetes-validations", []):
        source = rule["rule"]
        if is_transition_rule(source):
            continue
        try:
            ast = compile_rule(source)
        except CelUnsupportedError:
            continue
        where = path + tuple(p for p in rule.get("fieldPath", "").split(".") if p)
        try:
            ok = evaluate(ast, {"self": value})
        except CelEvalError as exc:
            problems.append((where, f"validation rule {source!r} failed to evaluate: {exc}"))
            continue
        if ok is not True:
            problems.append((where, f"{rule.get('message') or 'failed rule'} (rule: {source})"))
    if isinstance(value, dict):
        properties = schema.get("properties")
        if properties:
            for name, item in value.items():
                if name in properties:
                    problems.extend(rule_problems(properties[name], item, (*path, name)))
        elif isinstance(schema.get("additionalProperties"), dict):
            for name, item in value.items():
                problems.extend(rule_problems(schema["additionalProperties"], item, (*path, name)))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for position, item in enumerate(value):
            problems.extend(rule_problems(schema["items"], item, (*path, position)))
    return problems


@functools.cache
def compile_rule(source: str) -> CelNode:
    tokens: list[tuple[str, str]] = []
    position = 0
    source_stripped = source.rstrip()
    while position < len(source_stripped):
        match = _CEL_TOKEN_RE.match(source_stripped, position)
        if not match or match.end() == position:
            raise CelUnsupportedError(f"cannot read {source_stripped[position : position + 20]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    parser = _Parser(tokens)
    ast = parser.expression()
    if parser.position != len(tokens):
        raise CelUnsupportedError(f"unexpected {tokens[parser.position][1]!r}")
    return ast


class _Parser:
    """Recursive descent over CEL's precedence: ?: < || < && < relations < +- < */% < unary < member."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise CelUnsupportedError("unexpected end of rule")
        token = self.tokens[self.position]
        if expected is not None and token[1] != expected:
            raise CelUnsupportedError(f"expected {expected!r}, got {token[1]!r}")
        self.position += 1
        return token

    def expression(self) -> CelNode:
        condition = self.binary(0)
        if self.peek() == "?":
            self.take("?")
            then = self.expression()
            self.take(":")
            return ("cond", condition, then, self.expression())
        return condition

    _LEVELS = (("||",), ("&&",), ("==", "!=", "<", "<=", ">", ">=", "in"), ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> CelNode:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek() in self._LEVELS[level]:
            op = self.take()[1]
            left = ("op", op, left, self.binary(level + 1))
        return left

    def unary(self) -> CelNode:
        if self.peek() == "!":
            self.take()
            return ("not", self.unary())
        if self.peek() == "-":
            self.take()
            return ("neg", self.unary())
        return self.member()

    def member(self) -> CelNode:
        node = self.primary()
        while self.peek() in (".", "["):
            if self.take()[1] == "[":
                node = ("index", node, self.expression())
                self.take("]")
                continue
            kind, name = self.take()
            if kind != "ident":
                raise CelUnsupportedError(f"expected a field name after '.', got {name!r}")
            if self.peek() != "(":
                node = ("select", node, name)
                continue
            self.take("(")
            if name in _CEL_MACROS:
                var_kind, var = self.take()
                if var_kind != "ident":
                    raise CelUnsupportedError(f"{name}() needs a variable name")
                self.take(",")
                body = self.expression()
                self.take(")")
                node = ("macro", name, node, var, body)
            elif name in _CEL_METHODS:
                node = ("call", name, [node, *self.arguments()])
            else:
                raise CelUnsupportedError(f"method {name}()")
        return node

    def arguments(self) -> list[CelNode]:
        args: list[CelNode] = []
        while self.peek() != ")":
            args.append(self.expression())
            if self.peek() == ",":
                self.take(",")
        self.take(")")
        return args

    def primary(self) -> CelNode:
        kind, text = self.take()
        if kind == "num":
            return ("lit", float(text) if "." in text else int(text))
        if kind == "str":
            return ("lit", _cel_unquote(text))
        if kind == "op" and text == "(":
            inner = self.expression()
            self.take(")")
            return inner
        if kind == "op" and text == "[":
            return ("list", self.arguments_until("]"))
        if kind != "ident":
            raise CelUnsupportedError(f"unexpected {text!r}")
        if text in ("true", "false", "null"):
            return ("lit", {"true": True, "false": False, "null": None}[text])
        if self.peek() != "(":
            return ("var", text)
        self.take("(")
        if text == "has":
            argument = self.expression()
            self.take(")")
            if argument[0] != "select":
                raise CelUnsupportedError("has() needs a field selection")
            return ("has", argument[1], argument[2])
        if text in ("size", "duration", "string", "int"):
            return ("call", text, self.arguments())
        raise CelUnsupportedError(f"function {text}()")

    def arguments_until(self, closing: str) -> list[CelNode]:
        items: list[CelNode] = []
        while self.peek() != closing:
            items.append(self.expression())
            if self.peek() == ",":
                self.take(",")
        self.take(closing)
        return items


def _cel_unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), body)


def evaluate(node: CelNode, env: dict[str, Any]) -> Any:
    tag = node[0]
    if tag == "lit":
        return node[1]
    if tag == "var":
        if node[1] not in env:
            raise CelEvalError(f"undeclared reference to {node[1]!r}")
        return env[node[1]]
    if tag == "select":
        target = evaluate(node[1], env)
        if not isinstance(target, dict):
            raise CelEvalError(f"cannot select {node[2]!r} from {json_type(target)}")
        if node[2] not in target:
            raise CelEvalError(f"no such key: {node[2]}")
        return target[node[2]]
    if tag == "has":
        target = evaluate(node[1], env)
        if not isinstance(target, dict):
            raise CelEvalError(f"has() on {json_type(target)}")
        return node[2] in target
    if tag == "index":
        target, key = evaluate(node[1], env), evaluate(node[2], env)
        try:
            return target[key]
        except (KeyError, IndexError, TypeError) as exc:
            raise CelEvalError(f"no such key or index: {key!r}") from exc
    if tag == "list":
        return [evaluate(item, env) for item in node[1]]
    if tag == "not":
        return not _cel_bool(evaluate(node[1], env))
    if tag == "neg":
        return -_cel_number(evaluate(node[1], env))
    if tag == "cond":
        return evaluate(node[2] if _cel_bool(evaluate(node[1], env)) else node[3], env)
    if tag == "op":
        return _cel_operator(node[1], node[2], node[3], env)
    if tag == "call":
        return _cel_call(node[1], [evaluate(arg, env) for arg in node[2]])
    if tag == "macro":
        _, name, target_node, var, body = node
        target = evaluate(target_node, env)
        if not isinstance(target, list | dict):
            raise CelEvalError(f"{name}() on {json_type(target)}")
        results = [_cel_bool(evaluate(body, {**env, var: item})) for item in target]
        if name == "all":
            return all(results)
        if name == "exists":
            return any(results)
        return sum(results) == 1
    raise CelEvalError(f"unknown node {tag}")


def _cel_operator(op: str, left_node: CelNode, right_node: CelNode, env: dict[str, Any]) -> Any:
    if op in ("||", "&&"):
        # CEL's logical operators are commutative over errors: `false || error` is an error, but
        # `error || true` is true.
        outcomes: list[bool | CelEvalError] = []
        for side in (left_node, right_node):
            try:
                outcomes.append(_cel_bool(evaluate(side, env)))
            except CelEvalError as exc:
                outcomes.append(exc)
        decisive = op == "||"
        if decisive in outcomes:
            return decisive
        for outcome in outcomes:
            if isinstance(outcome, CelEvalError):
                raise outcome
        return not decisive
    left, right = evaluate(left_node, env), evaluate(right_node, env)
    if op == "==":
        return _cel_equal(left, right)
    if op == "!=":
        return not _cel_equal(left, right)
    if op == "in":
        if not isinstance(right, list | dict):
            raise CelEvalError(f"'in' on {json_type(right)}")
        return left in right
    if op in ("<", "<=", ">", ">="):
        comparable = (isinstance(left, str) and isinstance(right, str)) or (_is_number(left) and _is_number(right))
        if not comparable:
            raise CelEvalError(f"cannot compare {json_type(left)} with {json_type(right)}")
        return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]
    if op == "+":
        if isinstance(left, str) and isinstance(right, str):
            return left + right
        if isinstance(left, list) and isinstance(right, list):
            return left + right
        return _cel_number(left) + _cel_number(right)
    left_number, right_number = _cel_number(left), _cel_number(right)
    if op == "-":
        return left_number - right_number
    if op == "*":
        return left_number * right_number
    if right_number == 0:
        raise CelEvalError("division by zero")
    if isinstance(left_number, int) and isinstance(right_number, int):
        quotient = abs(left_number) // abs(right_number) * (1 if (left_number >= 0) == (right_number >= 0) else -1)
        return quotient if op == "/" else left_number - quotient * right_number
    return left_number / right_number if op == "/" else math.fmod(left_number, right_number)


def _cel_call(name: str, args: list[Any]) -> Any:
    if name == "size":
        if len(args) != 1 or not isinstance(args[0], str | list | dict):
            raise CelEvalError("size() needs one string, list or map")
        return len(args[0])
    if name == "duration":
        if len(args) != 1 or not isinstance(args[0], str):
            raise CelEvalError("duration() needs one string")
        return _go_duration_seconds(args[0])
    if name == "string":
        return args[0] if isinstance(args[0], str) else json.dumps(args[0])
    if name == "int":
        try:
            return int(args[0])
        except (TypeError, ValueError) as exc:
            raise CelEvalError(f"int({args[0]!r})") from exc
    target, *rest = args
    if not isinstance(target, str) or len(rest) != 1 or not isinstance(rest[0], str):
        raise CelEvalError(f"{name}() needs a string receiver and one string argument")
    if name == "contains":
        return rest[0] in target
    if name == "startsWith":
        return target.startswith(rest[0])
    if name == "endsWith":
        return target.endswith(rest[0])
    try:
        return re.search(rest[0], target) is not None  # CEL matches() is an unanchored RE2 search
    except re.error as exc:
        raise CelEvalError(f"invalid regular expression {rest[0]!r}") from exc


def _go_duration_seconds(text: str) -> float:
    match = _GO_DURATION_RE.fullmatch(text)
    if not match:
        raise CelEvalError(f"invalid duration {text!r} (expected e.g. 1.5s, 300ms, 1h2m)")
    total = sum(float(number) * _GO_DURATION_UNITS[unit] for number, unit in _GO_DURATION_PART_RE.findall(text))
    return -total if match.group(1) == "-" else total


def _cel_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise CelEvalError(f"expected a bool, got {json_type(value)}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cel_number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CelEvalError(f"expected a number, got {json_type(value)}")
    return value


def _cel_equal(left: Any, right: Any) -> bool:
    if _is_number(left) and _is_number(right):
        return bool(left == right)  # CEL compares int, uint and double by value
    return type(left) is type(right) and bool(left == right)
