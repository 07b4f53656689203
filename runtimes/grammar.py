"""Refuse structured-output constraints that no finite output can satisfy, before they reach the engine.

xgrammar compiles a schema such as `{"$ref": "#"}` (or an object whose required property is the
object itself) into a grammar whose rules recurse without a way out. vLLM accepts it, and the engine
then finds no allowed token at the first step (or at a later one), terminates the request and the
client gets HTTP 500. Here such a grammar is refused with vLLM's own validation error, so the client
gets a 400 that names the problem, in both the streaming and the non-streaming case.

The check is the classic one for context-free grammars: a rule is productive when one of its
alternatives derives a finite string from terminals and productive rules; every rule reachable from
the root must be productive. It reads the grammar as xgrammar prints it, and checks nothing (leaves
the constraint to vLLM) when it meets a form it does not know.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ROOT_RULE = "root"

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
    |(?P<string>"(?:[^"\\]|\\.)*")
    |(?P<cls>\[(?:[^\]\\]|\\.)*\])
    |(?P<look>\(=)
    |(?P<call>[A-Za-z_][A-Za-z0-9_]*\()
    |(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)
    |(?P<rep>\{\s*\d+\s*(?:,\s*-?\d*\s*)?\})
    |(?P<op>[()|*+?,=])
    """,
    re.VERBOSE,
)
_RULE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*) ::= (?P<body>.*)$")
_REPEAT_MIN = re.compile(r"\{\s*(\d+)")


class GrammarFormError(ValueError):
    """The printed grammar has a form this module does not read."""


# expression nodes: ("t",) terminal, ("ref", name), ("seq", items), ("alt", items), ("rep", node, minimum)
Node = tuple[Any, ...]
TERMINAL: Node = ("t",)


@dataclass
class _Parser:
    tokens: list[tuple[str, str]]
    position: int = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise GrammarFormError("unexpected end of rule")
        self.position += 1
        return token

    def expect_close(self) -> None:
        if self.take() != ("op", ")"):
            raise GrammarFormError("expected ')'")

    def alternatives(self) -> Node:
        options = [self.sequence()]
        while self.peek() == ("op", "|"):
            self.take()
            options.append(self.sequence())
        return options[0] if len(options) == 1 else ("alt", options)

    def sequence(self) -> Node:
        items = []
        while (token := self.peek()) is not None and token not in (("op", ")"), ("op", "|")):
            items.append(self.item())
        return items[0] if len(items) == 1 else ("seq", items)

    def item(self) -> Node:
        node = self.atom()
        while (token := self.peek()) is not None and (token[0] == "rep" or token in (("op", "*"), ("op", "+"), ("op", "?"))):
            kind, text = self.take()
            if kind == "rep":
                match = _REPEAT_MIN.match(text)
                assert match is not None
                node = ("rep", node, int(match.group(1)))
            else:
                node = ("rep", node, 1 if text == "+" else 0)
        return node

    def atom(self) -> Node:
        kind, text = self.take()
        if kind in ("string", "cls"):
            return TERMINAL
        if kind == "name":
            return ("ref", text)
        if kind == "op" and text == "(":
            node = self.alternatives()
            self.expect_close()
            return node
        if kind == "look":  # a lookahead consumes nothing
            self.alternatives()
            self.expect_close()
            return TERMINAL
        if kind == "call" and text == "Regex(":  # a regular expression matches some string
            depth = 1
            while depth:
                kind, text = self.take()
                depth += {("op", "("): 1, ("op", ")"): -1}.get((kind, text), 0) + (1 if kind in ("call", "look") else 0)
            return TERMINAL
        raise GrammarFormError(f"unknown form {text!r}")


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise GrammarFormError(f"unknown form at {text[position : position + 20]!r}")
        position = match.end()
        if match.lastgroup != "ws":
            yield str(match.lastgroup), match.group()


def parse_rules(printed: str) -> dict[str, Node]:
    """Rule name → expression, from a grammar as xgrammar prints it (one rule per line)."""
    rules: dict[str, Node] = {}
    for line in printed.splitlines():
        if not line.strip():
            continue
        match = _RULE.match(line)
        if match is None:
            raise GrammarFormError(f"not a rule: {line[:40]!r}")
        parser = _Parser(list(_tokens(match.group("body"))))
        node = parser.sequence()
        if parser.peek() is not None:
            raise GrammarFormError(f"unexpected {parser.peek()!r}")
        rules[match.group("name")] = node
    return rules


def _productive(node: Node, productive: set[str]) -> bool:
    kind = node[0]
    if kind == "t":
        return True
    if kind == "ref":
        return node[1] in productive
    if kind == "seq":
        return all(_productive(item, productive) for item in node[1])
    if kind == "alt":
        return any(_productive(item, productive) for item in node[1])
    return node[2] == 0 or _productive(node[1], productive)  # rep


def _references(node: Node) -> Iterator[str]:
    kind = node[0]
    if kind == "ref":
        yield node[1]
    elif kind in ("seq", "alt"):
        for item in node[1]:
            yield from _references(item)
    elif kind == "rep":
        yield from _references(node[1])


def dead_rules(rules: dict[str, Node], root: str = ROOT_RULE) -> list[str]:
    """The rules reachable from `root` that derive no finite string (empty: every rule can finish)."""
    if root not in rules:
        raise GrammarFormError(f"no rule {root!r}")
    productive: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, node in rules.items():
            if name not in productive and _productive(node, productive):
                productive.add(name)
                changed = True
    reachable, pending = {root}, [root]
    while pending:
        for name in _references(rules[pending.pop()]):
            if name not in rules:
                raise GrammarFormError(f"rule {name!r} is not defined")
            if name not in reachable:
                reachable.add(name)
                pending.append(name)
    return sorted(reachable - productive)


def printed_dead_rules(printed: str) -> list[str] | None:
    """`dead_rules` of a printed grammar; None when its form is not understood (then nothing is claimed)."""
    try:
        return dead_rules(parse_rules(printed))
    except GrammarFormError:
        return None


# ------------------------------------------------------------------ the engine boundary (xgrammar, vLLM)


def constraint_problem(structured_outputs: Any) -> str | None:
    """Why a request's structured-output constraint (vLLM's `StructuredOutputsParams`) can never be met, or None."""
    import xgrammar as xgr  # vLLM's grammar engine

    if structured_outputs is None:
        return None
    try:
        if structured_outputs.json is not None:
            what, schema = "JSON schema", structured_outputs.json
            grammar = xgr.Grammar.from_json_schema(schema if isinstance(schema, str) else json.dumps(schema))
        elif structured_outputs.grammar is not None:
            what, grammar = "grammar", _grammar(structured_outputs.grammar)
        else:
            return None  # regex, choice, json_object, structural tags: vLLM validates them
    except Exception:  # a constraint xgrammar refuses: vLLM answers it with its own 400
        return None
    dead = printed_dead_rules(str(grammar))
    if not dead:
        return None
    if what == "grammar":
        return f"The grammar cannot be satisfied by any finite output: rule(s) {', '.join(dead)} recurse without a way out."
    return (
        "The JSON schema cannot be satisfied by any finite output: it recurses without a way out, "
        'as {"$ref": "#"} does, or a required property that holds the object itself.'
    )


def _grammar(text: str) -> Any:
    import xgrammar as xgr
    from vllm.v1.structured_output.utils import grammar_is_likely_lark

    return xgr.Grammar.from_lark(text) if grammar_is_likely_lark(text) else xgr.Grammar.from_ebnf(text)  # as vLLM reads it


def guard_structured_outputs(engine_client: Any) -> None:
    """Make `engine_client.generate` refuse unsatisfiable constraints with vLLM's `VLLMValidationError` (HTTP 400).

    It raises when called, before the stream starts, so vLLM's exception handlers answer 400 for
    streaming requests too. Everything else goes to vLLM's own `generate`, unchanged."""
    from vllm.exceptions import VLLMValidationError

    generate = engine_client.generate

    def checked_generate(prompt: Any, sampling_params: Any, *args: Any, **kwargs: Any) -> Any:
        problem = constraint_problem(getattr(sampling_params, "structured_outputs", None))
        if problem is not None:
            raise VLLMValidationError(problem)
        return generate(prompt, sampling_params, *args, **kwargs)

    engine_client.generate = checked_generate
