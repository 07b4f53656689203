"""`stokehold templates …`: the catalog and template files, offline (nothing is published here).

stokehold templates list                    the built-in catalog (or --catalog DIR)
stokehold templates show NAME[@VERSION]     one version as YAML (or --json)
stokehold templates validate PATH...        exit 1 with field-named errors
stokehold templates from-hf ORG/MODEL       a new template from a Hugging Face ID
stokehold templates fields                  the field reference (docs/template-fields.md), from the schema
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from templates.catalog import CATALOG_DIR, load_catalog, load_file, registry_of, to_yaml
from templates.from_hf import GPU_MEMORY_GB, guess_parsers, template_from_hf
from templates.registry import ImmutableVersionError, VersionRegistry
from templates.schema import VERSION_MAX, TemplateValidationError
from templates.tables import print_table

console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)

app = typer.Typer(help="Browse, check and create template versions (offline).", no_args_is_help=True)

CatalogDir = Annotated[Path, typer.Option("--catalog", help="catalog directory", file_okay=False)]


def _fail(message: str) -> NoReturn:
    error_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


_VERSION_NUMBER = re.compile(r"[0-9]{1,7}")


def parse_ref(ref: str, *, need_version: bool = False) -> tuple[str, int | None]:
    """NAME[@VERSION] → (name, version or None); `ValueError` with a one-line message otherwise."""
    name, at, number = ref.partition("@")
    shown = ref if len(ref) <= 80 else ref[:80] + "…"
    if not name:
        raise ValueError(f"{shown!r} names no template")
    if not at:
        if need_version:
            raise ValueError(f"{shown!r} names no version: use NAME@VERSION")
        return name, None
    if not _VERSION_NUMBER.fullmatch(number) or not 1 <= int(number) <= VERSION_MAX:
        raise ValueError(f"the version in {shown!r} is not a whole number from 1 to {VERSION_MAX}")
    return name, int(number)


def _registry(directory: Path) -> VersionRegistry:
    try:
        return registry_of(load_catalog(directory))
    except (TemplateValidationError, ImmutableVersionError) as exc:
        _fail(str(exc))


@app.command("list")
def list_templates(
    catalog: CatalogDir = CATALOG_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per template and line")] = False,
) -> None:
    """The templates of the catalog, latest version of each (plain full-width columns when not on a terminal)."""
    registry = _registry(catalog)
    records, rows = [], []
    for name in registry.names():
        version = registry.latest(name)
        assert version is not None  # names() lists only templates with versions
        spec = version.spec
        gpus = f"{spec.total_gpus} x {spec.resources.gpu_type}" if spec.total_gpus and spec.resources.gpu_type else str(spec.total_gpus)
        replicas = f"{spec.scaling.min_replicas}-{spec.scaling.max_replicas}"
        rows.append([name, str(version.version), spec.source, spec.task, gpus, replicas, spec.scaling.keep_hot])
        records.append(
            {
                "name": name,
                "version": version.version,
                "source": spec.source,
                "task": spec.task,
                "gpus": spec.total_gpus,
                "gpu_type": spec.resources.gpu_type,
                "min_replicas": spec.scaling.min_replicas,
                "max_replicas": spec.scaling.max_replicas,
                "keep_hot": spec.scaling.keep_hot,
                "content_hash": version.content_hash,
            }
        )
    if as_json:
        for record in records:
            typer.echo(json.dumps(record))
        return
    columns = ["NAME", "VERSION", "SOURCE", "TASK", "GPUS", "REPLICAS", "KEEP HOT"]
    print_table(console, columns, rows, title=f"catalog {catalog}")


@app.command()
def show(
    ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]")],
    catalog: CatalogDir = CATALOG_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML")] = False,
) -> None:
    """One template version (default: the latest) as its canonical document."""
    try:
        name, number = parse_ref(ref)
    except ValueError as exc:
        _fail(str(exc))
    registry = _registry(catalog)
    version = registry.get(name, number)
    if version is None:
        known = ", ".join(v.ref for v in registry.versions(name)) or ", ".join(registry.names())
        _fail(f"{ref} is not in the catalog; there are: {known}")
    if as_json:
        typer.echo(json.dumps(version.to_document(), indent=2))
    else:
        typer.echo(f"# content hash {version.content_hash}")
        typer.echo(to_yaml(version), nl=False)


@app.command()
def fields() -> None:
    """Every template field with its type, default and rules, as Markdown (docs/template-fields.md is this output)."""
    from templates.reference import render_reference

    typer.echo(render_reference(), nl=False)


def template_files(paths: list[Path]) -> list[Path]:
    """The files named, with each directory (not a link to one) replaced by its *.yaml files."""
    return [file for path in paths for file in (sorted(path.glob("*.yaml")) if path.is_dir() and not path.is_symlink() else [path])]


def problem_line(exc: TemplateValidationError, shown: int = 5) -> str:
    """One line for a file that is not a valid template: its name, then each field path and message."""
    parts = [f"{location}: {message}" if location else message for location, message in exc.errors[:shown]]
    more = len(exc.errors) - shown
    return f"{exc.source}: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


@app.command()
def validate(paths: Annotated[list[Path], typer.Argument(metavar="PATH...", help="YAML files or directories of them")]) -> None:
    """Check template version files: one line per file, exit status 1 if any is invalid (errors name the file and field)."""
    files = template_files(paths)
    if not files:
        _fail("no template files found")
    failed = 0
    for path in files:
        try:
            version = load_file(path)
        except TemplateValidationError as exc:
            failed += 1
            error_console.print(f"[red]✗[/] {escape(problem_line(exc))}", soft_wrap=True)
            continue
        console.print(f"[green]✓[/] {escape(str(path))}: {version.ref} {version.content_hash}", soft_wrap=True)
    if failed:
        _fail(f"{failed} of {len(files)} file(s) invalid")


NO_GUESS = "no tool-call or reasoning parser guessed from the ID: add `tools`/`reasoning` if the model card names them"


@app.command("from-hf")
def from_hf(
    hf_id: Annotated[str, typer.Argument(metavar="ORG/MODEL", help="Hugging Face model ID")],
    gpus: Annotated[
        int | None, typer.Option("--gpus", min=0, max=16, help="GPUs per pod; 0 for a CPU template (default: from the model size)")
    ] = None,
    gpu_type: Annotated[str, typer.Option("--gpu-type", help=f"one of {', '.join(GPU_MEMORY_GB)}")] = "nvidia-a100-80gb",
    name: Annotated[str | None, typer.Option("--name", help="template name (default: from the ID)")] = None,
    version: Annotated[int, typer.Option("--version", min=1)] = 1,
    quantization: Annotated[str | None, typer.Option("--quantization", help="awq, gptq, fp8, …")] = None,
    max_model_len: Annotated[int | None, typer.Option("--max-model-len")] = 8192,
    task: Annotated[str, typer.Option("--task", help="generate, embed or score")] = "generate",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the YAML here instead of stdout")] = None,
) -> None:
    """A new template version for a Hugging Face model, sized from the parameter count in its ID, parsers from its family."""
    try:
        document = template_from_hf(
            hf_id,
            gpus=gpus,
            gpu_type=gpu_type,
            name=name,
            version=version,
            max_model_len=max_model_len,
            quantization=quantization,
            task=task,
        )
    except TemplateValidationError as exc:
        _fail(str(exc))
    guess = guess_parsers(hf_id, task)
    said = guess.describe() if guess else NO_GUESS
    error_console.print(escape(said), soft_wrap=True)  # stderr: stdout stays the YAML document
    text = to_yaml(document)
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    error_console.print(f"wrote {output} ({document.ref}, {document.content_hash})", soft_wrap=True)


__all__ = ["app", "parse_ref", "problem_line", "template_files"]
