"""`stokehold templates …`: list, show, validate and from-hf, through the root command."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from events.cli import app
from templates.catalog import CATALOG_DIR, load_catalog, load_file

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def test_list_shows_every_catalog_template() -> None:
    result = runner.invoke(app, ["templates", "list"], env=WIDE)

    assert result.exit_code == 0, result.output
    for version in load_catalog():
        assert version.name in result.stdout


def test_show_prints_the_canonical_document_with_its_hash() -> None:
    result = runner.invoke(app, ["templates", "show", "tiny-demo@1"])

    assert result.exit_code == 0, result.output
    version = load_file(CATALOG_DIR / "tiny-demo.yaml")
    assert result.stdout.startswith(f"# content hash {version.content_hash}\n")
    assert yaml.safe_load(result.stdout) == version.to_document()


def test_show_as_json_defaults_to_the_latest_version() -> None:
    result = runner.invoke(app, ["templates", "show", "gemma-7b-it", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["template"]["name"] == "gemma-7b-it"


def test_show_an_unknown_version_lists_the_known_ones() -> None:
    result = runner.invoke(app, ["templates", "show", "tiny-demo@7"])

    assert result.exit_code == 1
    assert "tiny-demo@7 is not in the catalog" in result.stderr and "tiny-demo@1" in result.stderr


def test_validate_accepts_the_catalog_directory() -> None:
    result = runner.invoke(app, ["templates", "validate", str(CATALOG_DIR)], env=WIDE)

    assert result.exit_code == 0, result.output
    assert result.stdout.count("✓") == len(load_catalog())


def test_validate_names_every_bad_field_and_exits_1(tmp_path: Path) -> None:
    document = load_file(CATALOG_DIR / "tiny-demo.yaml").to_document()
    document["spec"]["scaling"]["keep_hot"] = "forever"
    document["spec"]["resources"]["gpu_type"] = "nvidia-l4"  # gpu_type without gpus
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    not_yaml = tmp_path / "not-yaml.yaml"
    not_yaml.write_text("template: [unclosed")

    result = runner.invoke(app, ["templates", "validate", str(CATALOG_DIR / "tiny-demo.yaml"), str(bad), str(not_yaml)], env=WIDE)

    assert result.exit_code == 1
    assert f"{bad}: spec.scaling.keep_hot:" in result.stderr
    assert f"{bad}: spec.resources:" in result.stderr and "gpu_type is set but gpus is 0" in result.stderr
    assert f"{not_yaml}: <root>: not valid YAML" in result.stderr
    assert "2 of 3 file(s) invalid" in result.stderr


def test_from_hf_writes_a_valid_template(tmp_path: Path) -> None:
    output = tmp_path / "llama.yaml"

    result = runner.invoke(
        app,
        [
            "templates",
            "from-hf",
            "meta-llama/Llama-3.1-70B-Instruct",
            "--gpu-type",
            "nvidia-h100-80gb",
            "--name",
            "llama-70b",
            "-o",
            str(output),
        ],
    )

    assert result.exit_code == 0, result.output
    version = load_file(output)
    assert (version.name, version.spec.source, version.spec.resources.gpus) == ("llama-70b", "hf://meta-llama/Llama-3.1-70B-Instruct", 4)
    assert runner.invoke(app, ["templates", "validate", str(output)]).exit_code == 0


def test_from_hf_refuses_bad_input_with_the_field() -> None:
    not_an_id = runner.invoke(app, ["templates", "from-hf", "just-a-name"])
    bad_name = runner.invoke(app, ["templates", "from-hf", "acme/model-7b", "--name", "Bad_Name"])

    assert not_an_id.exit_code == 1 and "hf_id:" in not_an_id.stderr
    assert bad_name.exit_code == 1 and "template.name:" in bad_name.stderr and "Traceback" not in bad_name.output
