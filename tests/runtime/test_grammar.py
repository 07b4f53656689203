"""Unsatisfiable structured-output constraints are found before the engine sees them (the real engine: test_server_vllm.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from runtimes.grammar import constraint_problem, printed_dead_rules

xgr = pytest.importorskip("xgrammar")


def test_rules_that_never_finish_are_found() -> None:
    assert printed_dead_rules('root ::= (("a") | ("b" root))') == []
    assert printed_dead_rules("root ::= ((root))") == ["root"]
    assert printed_dead_rules('root ::= (("a" x) | ("b"))\nx ::= ((x "c"))') == ["x"]  # a dead end after "a"
    assert printed_dead_rules('root ::= (("a" x{0, -1}))\nx ::= ((x))') == ["x"]
    assert printed_dead_rules('root ::= (("a"))\nunused ::= ((unused))') == []  # unreachable rules do not matter
    assert printed_dead_rules('root ::= ((x+ [a-z]* "q"?)) (=([ \\n]* [,}\\]]))\nx ::= (("\\"" | [^\\\\"]))') == []
    assert printed_dead_rules('root ::= Regex("^[a-z]+\\\\]$", json_string=true)') == []


def test_forms_it_does_not_know_claim_nothing() -> None:
    assert printed_dead_rules('root ::= TagDispatch(("<a>", x))\nx ::= ((x))') is None
    assert printed_dead_rules("root ::= ((undefined))") is None
    assert printed_dead_rules("start ::= ((start))") is None  # no root rule
    assert printed_dead_rules("not a grammar") is None


def schema(document: Any) -> SimpleNamespace:
    return SimpleNamespace(json=document, grammar=None)


@pytest.mark.parametrize(
    "document",
    [
        {"$ref": "#"},
        json.dumps({"$ref": "#"}),
        {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]},
        {"type": "array", "items": {"$ref": "#"}, "minItems": 1},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "required": ["a"], "$defs": {"x": {"$ref": "#/$defs/x"}}},
    ],
)
def test_schemas_that_recurse_without_a_way_out(document: Any) -> None:
    problem = constraint_problem(schema(document))
    assert problem is not None and "cannot be satisfied by any finite output" in problem


TREE = {
    "type": "object",
    "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#"}}},
    "required": ["v", "kids"],
}
EVERYDAY = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z]+$"},
        "when": {"type": "string", "format": "date-time"},
        "n": {"type": "number", "minimum": 0},
        "tags": {"type": "array", "items": {"enum": ["a", 'b"c']}, "maxItems": 3},
    },
    "required": ["name", "when"],
}


@pytest.mark.parametrize(
    "document",
    [
        {"type": "object", "properties": {"next": {"$ref": "#"}}},  # a linked list that may end
        TREE,
        {"anyOf": [{"type": "null"}, {"type": "array", "items": {"$ref": "#"}}]},
        EVERYDAY,
        {"type": "string", "minLength": 5, "maxLength": 2},  # xgrammar refuses it: vLLM answers that one itself
        "{not json",
    ],
)
def test_satisfiable_or_foreign_schemas_pass(document: Any) -> None:
    assert constraint_problem(schema(document)) is None


def test_grammars_in_ebnf_and_lark() -> None:
    def grammar(text: str) -> SimpleNamespace:
        return SimpleNamespace(json=None, grammar=text)

    assert constraint_problem(grammar('root ::= "a" x | "b"\nx ::= x "c"')) == (
        "The grammar cannot be satisfied by any finite output: rule(s) x recurse without a way out."
    )
    assert constraint_problem(grammar('start: start "a"')) is not None
    assert constraint_problem(grammar('root ::= "a"+ [^x]* ("b" | "c"){2,3}')) is None
    assert constraint_problem(grammar('start: "a"+')) is None
    assert constraint_problem(SimpleNamespace(json=None, grammar=None)) is None  # regex, choice, …: vLLM's
    assert constraint_problem(None) is None


def test_xgrammars_own_json_grammar_is_read_and_sound() -> None:
    assert printed_dead_rules(str(xgr.Grammar.builtin_json_grammar())) == []
