"""`stokehold models …` (build the tiny model) and `stokehold runtime head|worker …` (the launcher)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from runtimes.tiny_model import DEFAULT_SEED
from templates.tables import print_table

app = typer.Typer(help="Build and inspect models for the runtime.", no_args_is_help=True, add_completion=False)
serve_app = typer.Typer(
    help="Run the serving runtime (vLLM's OpenAI server; Ray for tensor parallel or multi-node).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command("build-tiny")
def build_tiny(
    directory: Path = typer.Argument(..., help="where to write the model (created if missing)"),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="random seed: the same seed gives the same files"),
) -> None:
    """Build the tiny random-weight Llama (tokenizer and chat template included) into DIRECTORY."""
    from runtimes.tiny_model import build_tiny_model, describe, file_hashes

    out = build_tiny_model(directory, seed=seed)
    rows = [[name, digest[:16]] for name, digest in file_hashes(out).items()]
    print_table(console, ["FILE", "SHA256"], rows, title=f"tiny model in {out} (seed {seed})")
    _print_facts(describe(out))


@app.command("describe")
def describe_model(directory: Path = typer.Argument(..., exists=True, file_okay=False, help="a model directory")) -> None:
    """Show a model directory's architecture facts (from config.json)."""
    from runtimes.tiny_model import describe

    try:
        facts = describe(directory)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: cannot read {directory / 'config.json'}: {exc}", err=True)
        raise typer.Exit(1) from None
    _print_facts(facts)


def _print_facts(facts: dict[str, Any]) -> None:
    """One "key: value" line each, not a Python repr."""
    for key, value in facts.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else "-" if value is None else str(value)
        typer.echo(f"{key}: {shown}")


def _launch(role: str, ctx: typer.Context) -> None:
    from runtimes.launcher import main

    raise typer.Exit(main([role, *ctx.args]))


@serve_app.command("head", context_settings=PASS_THROUGH)
def head(ctx: typer.Context) -> None:
    """Serve the model: [--executor auto|ray|mp] [--ray-port N] [vLLM arguments…] (`head --help` for the launcher's own)."""
    _launch("head", ctx)


@serve_app.command("worker", context_settings=PASS_THROUGH)
def worker(ctx: typer.Context) -> None:
    """Join the head's Ray cluster and block: [--head-address HOST] [--ray-port N] (default $HEAD_SVC)."""
    _launch("worker", ctx)


@serve_app.command("cache-fill", context_settings=PASS_THROUGH)
def cache_fill(ctx: typer.Context) -> None:
    """Fill a version's model-cache folder once (the pre-download Job): --source S --dest D --content-hash H --template T --version V."""
    _launch("cache-fill", ctx)
