"""`stokehold templates …`: the catalog and template files, offline (nothing is published here).

stokehold templates list                    the built-in catalog (or --catalog DIR)
stokehold templates show NAME[@VERSION]     one version as YAML (or --json)
stokehold templates validate PATH...        exit 1 with field-named errors
stokehold templates from-hf ORG/MODEL       a new template from a Hugging Face ID
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from templates.catalog import CATALOG_DIR, load_catalog, load_file, registry_of, to_yaml
from templates.from_hf import GPU_MEMORY_GB, template_from_hf
from templates.registry import ImmutableVersionError, VersionRegistry
from templates.schema import TemplateValidationError

console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)

app = typer.Typer(help="Browse, check and create template versions (offline).", no_args_is_help=True)

CatalogDir = Annotated[Path, typer.Option("--catalog", help="catalog directory", file_okay=False)]


def _fail(message: str) -> NoReturn:
    error_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(1)


def _registry(directory: Path) -> VersionRegistry:
    try:
        return registry_of(load_catalog(directory))
    except (TemplateValidationError, ImmutableVersionError) as exc:
        _fail(str(exc))


@app.command("list")
def list_templates(catalog: CatalogDir = CATALOG_DIR) -> None:
    """The templates of the catalog, latest version of each."""
    registry = _registry(catalog)
    table = Table("NAME", "VERSION", "SOURCE", "TASK", "GPUS", "REPLICAS", "KEEP HOT", title=f"catalog {catalog}", title_justify="left")
    for name in registry.names():
        version = registry.latest(name)
        assert version is not None  # names() lists only templates with versions
        spec = version.spec
        gpus = f"{spec.total_gpus} x {spec.resources.gpu_type}" if spec.total_gpus and spec.resources.gpu_type else str(spec.total_gpus)
        replicas = f"{spec.scaling.min_replicas}-{spec.scaling.max_replicas}"
        table.add_row(name, str(version.version), spec.source, spec.task, gpus, replicas, spec.scaling.keep_hot)
    console.print(table)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]")],
    catalog: CatalogDir = CATALOG_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML")] = False,
) -> None:
    """One template version (default: the latest) as its canonical document."""
    name, _, number = ref.partition("@")
    if number and (not number.isdigit() or int(number) < 1):
        _fail(f"version {number!r} in {ref!r} is not a number from 1")
    registry = _registry(catalog)
    version = registry.get(name, int(number) if number else None)
    if version is None:
        known = ", ".join(v.ref for v in registry.versions(name)) or ", ".join(registry.names())
        _fail(f"{ref} is not in the catalog; there are: {known}")
    if as_json:
        typer.echo(json.dumps(version.to_document(), indent=2))
    else:
        typer.echo(f"# content hash {version.content_hash}")
        typer.echo(to_yaml(version), nl=False)


@app.command()
def validate(paths: Annotated[list[Path], typer.Argument(metavar="PATH...", help="YAML files or directories of them")]) -> None:
    """Check template version files; exit status 1 with every error named by file and field."""
    files = [file for path in paths for file in (sorted(path.glob("*.yaml")) if path.is_dir() else [path])]
    if not files:
        _fail("no template files found")
    failed = 0
    for path in files:
        try:
            version = load_file(path)
        except TemplateValidationError as exc:
            failed += 1
            for location, message in exc.errors:
                error_console.print(f"[red]✗[/] {path}: {location or '<root>'}: {message}", soft_wrap=True, markup=True)
            continue
        console.print(f"[green]✓[/] {path}: {version.ref} {version.content_hash}", soft_wrap=True)
    if failed:
        _fail(f"{failed} of {len(files)} file(s) invalid")


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
    task: Annotated[str, typer.Option("--task", help="generate or embed")] = "generate",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the YAML here instead of stdout")] = None,
) -> None:
    """A new template version for a Hugging Face model, sized from the parameter count in its ID."""
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
    text = to_yaml(document)
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    error_console.print(f"wrote {output} ({document.ref}, {document.content_hash})", soft_wrap=True)


__all__ = ["app"]
