"""Commands documented in Markdown and scripts: extract them, and check them against the real tools.

- `stokehold …` / `kubectl stokehold …` lines are parsed by the CLI's own click commands
  (options and arguments must exist; nothing is run);
- kubectl `-o jsonpath=` / `-o custom-columns=` expressions are evaluated by the installed
  kubectl (`kubectl annotate --local`, which prints without a cluster) on a rendered
  InferenceService;
- `doc_commands` lists every command of a document in order, with heredocs and the output a
  ```console block shows, for tests that run the documentation as written.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml
from typer.exceptions import TyperException

from tests.manifests.kustomize import kubectl

FENCE = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.DOTALL)


def shell_lines(markdown: str) -> list[str]:
    """Command lines of the bash blocks of a Markdown text (continuations joined, comments and heredocs dropped)."""
    lines: list[str] = []
    for block in FENCE.findall(markdown):
        joined = re.sub(r"\\\n\s*", " ", block)
        heredoc_end: str | None = None
        for raw in joined.splitlines():
            line = raw.strip()
            if heredoc_end is not None:
                if line == heredoc_end:
                    heredoc_end = None
                continue
            marker = re.search(r"<<'?(\w+)'?", line)
            if marker:
                heredoc_end = marker.group(1)
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def words(line: str) -> list[str]:
    """A command line as the shell would split it, without a trailing comment."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def stokehold_args(line: str) -> list[str] | None:
    """The arguments after `stokehold` / `kubectl stokehold` / `<path>/stokehold`, or None for other commands."""
    parts = words(line)
    if parts[:2] == ["kubectl", "stokehold"]:
        return parts[2:]
    if parts and Path(parts[0]).name in ("stokehold", "kubectl-stokehold"):
        return parts[1:]
    return None


class CommandLineError(AssertionError):
    pass


def check_stokehold_args(args: list[str]) -> None:
    """Parse the arguments with the CLI's own (typer) commands, running nothing; CommandLineError when they do not fit."""
    from events.cli import app

    command: Any = typer.main.get_command(app)
    rest = list(args)
    path = ["stokehold"]
    while getattr(command, "commands", None) and rest and rest[0] in command.commands:
        path.append(rest[0])
        command = command.commands[rest.pop(0)]
    if getattr(command, "commands", None):
        raise CommandLineError(f"{' '.join(path)}: no such command {' '.join(rest[:1]) or '(none given)'}")
    try:
        command.make_context(" ".join(path), rest, resilient_parsing=False)
    except TyperException as exc:
        raise CommandLineError(f"{' '.join(path)} {' '.join(rest)}: {exc}") from None


def output_spec(line: str) -> tuple[str, str] | None:
    """('jsonpath'|'custom-columns', expression) of a kubectl command's -o, if it has one of those."""
    parts = words(line)
    if not parts or parts[0] != "kubectl":
        return None
    for index, part in enumerate(parts):
        value = None
        if part in ("-o", "--output") and index + 1 < len(parts):
            value = parts[index + 1]
        elif part.startswith(("-o=", "--output=")):
            value = part.split("=", 1)[1]
        if value is not None:
            kind, _, expression = value.partition("=")
            if kind in ("jsonpath", "custom-columns"):
                return kind, expression
    return None


def custom_columns(expression: str) -> list[tuple[str, str]]:
    """NAME:.path pairs of a custom-columns spec (paths may contain ':' only inside brackets)."""
    columns = []
    for column in re.split(r",(?=[A-Z_]+:)", expression):
        name, _, path = column.partition(":")
        columns.append((name, path))
    return columns


def label_selectors(line: str) -> list[str]:
    parts = words(line)
    selectors = []
    for index, part in enumerate(parts):
        if part in ("-l", "--selector") and index + 1 < len(parts):
            selectors.append(parts[index + 1])
        elif part.startswith(("-l=", "--selector=")):
            selectors.append(part.split("=", 1)[1])
    return selectors


def selector_keys(selector: str) -> list[str]:
    return [re.split(r"!=|==|=|\s+in\s+|\s+notin\s+", term.strip().lstrip("!"))[0].strip() for term in selector.split(",")]


def jsonpath(obj: dict[str, Any], template: str, workdir: Path) -> str:
    """kubectl's own jsonpath printer on one object, without a cluster."""
    path = workdir / "object.yaml"
    path.write_text(yaml.safe_dump(obj))
    done = subprocess.run(
        [kubectl(), "annotate", "--local", "-f", str(path), "stokehold.dev/doc-check=1", "-o", f"jsonpath={template}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"kubectl rejected jsonpath {template!r}: {done.stderr.strip()}")
    return done.stdout


# ------------------------------------------------------------- running documentation

BLOCK = re.compile(r"^```(bash|sh|shell|console)\n(.*?)^```", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class DocCommand:
    """One command of a document, in document order: a shell line (a heredoc's body included), and for a
    ```console block the output lines it shows (`…` stands for anything)."""

    text: str
    line: int  # where it starts in the document, for messages
    shown: tuple[str, ...] = ()

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0]


def doc_commands(markdown: str) -> list[DocCommand]:
    """Every command of the ```bash / ```console blocks of a Markdown text (comments dropped, continuations joined)."""
    found: list[DocCommand] = []
    for block in BLOCK.finditer(markdown):
        language, body = block.group(1), block.group(2)
        start = markdown.count("\n", 0, block.start(2)) + 1
        if language == "console":
            found += _console_commands(body, start)
        else:
            found += _shell_commands(body, start)
    return found


def _shell_commands(body: str, start: int) -> list[DocCommand]:
    commands: list[DocCommand] = []
    lines = re.sub(r"\\\n\s*", " ", body).splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        marker = re.search(r"<<'?(\w+)'?", line)
        text = line
        if marker:  # the heredoc's body and terminator belong to the command
            end = next(i for i in range(index, len(lines)) if lines[i].strip() == marker.group(1))
            text = "\n".join([line, *lines[index:end], marker.group(1)])
            index = end + 1
        commands.append(DocCommand(text, start + index - 1))
    return commands


def _console_commands(body: str, start: int) -> list[DocCommand]:
    commands: list[DocCommand] = []
    for offset, line in enumerate(body.splitlines()):
        if line.startswith("$ "):
            commands.append(DocCommand(line[2:].strip(), start + offset))
        elif commands and line.strip():
            last = commands[-1]
            commands[-1] = DocCommand(last.text, last.line, (*last.shown, line))
    return commands


def _normalized(line: str) -> str:
    return " ".join(line.split())


def missing_output(shown: tuple[str, ...], output: str) -> list[str]:
    """The shown lines that the output lacks, in order (spaces normalized; `…` matches anything)."""
    lines = [_normalized(line) for line in output.splitlines()]
    missing, position = [], 0
    for expected in shown:
        pattern = re.compile(".*".join(re.escape(part) for part in _normalized(expected).split("…")))
        found = next((i for i in range(position, len(lines)) if pattern.fullmatch(lines[i])), None)
        if found is None:
            missing.append(expected)
        else:
            position = found + 1
    return missing
