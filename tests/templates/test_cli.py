"""`stokehold templates …`: list, show, validate and from-hf, through the root command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
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
    result = runner.invoke(app, ["templates", "show", "gemma-3-12b-it", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["template"]["name"] == "gemma-3-12b-it"


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
    bad_line, yaml_line, summary = result.stderr.splitlines()  # one line per bad file
    assert bad_line.startswith(f"✗ {bad}: ") and "spec.scaling.keep_hot: " in bad_line
    assert "spec.resources: gpu_type is set but gpus is 0" in bad_line
    assert yaml_line == f"✗ {not_yaml}: not valid YAML at line 1, column 20: expected ',' or ']', but got '<stream end>'"
    assert summary == "error: 2 of 3 file(s) invalid"


SHADOW_HASH = "$6$saltsalt$Zm9vYmFyYmF6cXV4aGFzaGhhc2g"


def _hostile_files(root: Path) -> dict[str, Path]:
    """Files a template command may be pointed at, none of them a template; each must be refused in one line."""
    files = {
        "5,000-digit number": root / "big-number.yaml",
        "20,000 nested [": root / "nested.yaml",
        "binary junk": root / "junk.yaml",
        "shadow-style file": root / "shadow",
        "a directory": root / "a-directory.yaml",
        "a FIFO": root / "fifo.yaml",
        "a symbolic link": root / "link.yaml",
        "YAML naming an alias": root / "alias.yaml",
    }
    files["5,000-digit number"].write_text("version: " + "9" * 5000 + "\n")
    files["20,000 nested ["].write_text("[" * 20_000)
    files["binary junk"].write_bytes(bytes(range(256)) * 16)
    files["shadow-style file"].write_text(f"root:{SHADOW_HASH}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    files["a directory"].mkdir()
    os.mkfifo(files["a FIFO"])  # reading it would wait forever for a writer
    files["a symbolic link"].symlink_to(files["shadow-style file"])
    files["YAML naming an alias"].write_text(f"template: *{SHADOW_HASH[3:11]}\n")
    return files


@pytest.mark.parametrize("command", [["templates", "validate"], ["--nats-url", "nats://127.0.0.1:1", "publish"]])
def test_hostile_files_are_refused_in_one_line_each_without_echoing_them(tmp_path: Path, command: list[str]) -> None:
    files = _hostile_files(tmp_path)

    # the directory stands for its *.yaml entries; the shadow file is not one of them, so it is named too
    result = runner.invoke(app, [*command, str(tmp_path), str(files["shadow-style file"])], env=WIDE)

    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == len(files) + 1, lines  # one per file, then the summary
    for what, path in files.items():
        [line] = [line for line in lines if f" {path}: " in line]
        assert "Traceback" not in line, what
    assert "Traceback" not in result.output
    assert SHADOW_HASH not in result.output and "daemon" not in result.output and SHADOW_HASH[3:11] not in result.output
    by_path = {path: next(line for line in lines if f" {path}: " in line) for path in files.values()}
    assert "symbolic link" in by_path[files["a symbolic link"]]
    assert "directory" in by_path[files["a directory"]]
    assert "regular file" in by_path[files["a FIFO"]]
    assert "<unknown key>" in by_path[files["shadow-style file"]]


def test_a_directory_argument_is_read_for_its_yaml_files_but_a_link_to_one_is_not(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "tiny-demo.yaml").write_text((CATALOG_DIR / "tiny-demo.yaml").read_text())
    (tmp_path / "link").symlink_to(catalog)

    real = runner.invoke(app, ["templates", "validate", str(catalog)], env=WIDE)
    linked = runner.invoke(app, ["templates", "validate", str(tmp_path / "link")], env=WIDE)

    assert real.exit_code == 0 and "tiny-demo@1" in real.stdout
    assert linked.exit_code == 1 and "symbolic link" in linked.stderr


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


def test_from_hf_names_are_collision_free_and_absurd_sizes_are_one_line() -> None:
    names = {}
    for hf_id in ("Google/Gemma_7B", "google/gemma.7b", "google/gemma-7b"):
        result = runner.invoke(app, ["templates", "from-hf", hf_id])
        assert result.exit_code == 0, result.output
        names[hf_id] = yaml.safe_load(result.stdout)["template"]["name"]
    absurd = runner.invoke(app, ["templates", "from-hf", "org/" + "4" * 400 + "b"])

    assert len(set(names.values())) == 3, names
    assert names["google/gemma-7b"] == "google--gemma-7b"
    assert absurd.exit_code == 1 and absurd.stderr.count("\n") == 1 and "hf_id: " in absurd.stderr
    assert "Traceback" not in absurd.output


def test_a_version_reference_must_be_a_small_whole_number() -> None:
    for ref in ("tiny-demo@0", "tiny-demo@1.0", "tiny-demo@", "tiny-demo@٣", "tiny-demo@" + "1" * 5000):
        result = runner.invoke(app, ["templates", "show", ref])
        assert result.exit_code == 1 and "not a whole number from 1 to 1000000" in result.stderr, ref
        assert result.stderr.count("\n") == 1, ref


def test_from_hf_refuses_bad_input_with_the_field() -> None:
    not_an_id = runner.invoke(app, ["templates", "from-hf", "just-a-name"])
    bad_name = runner.invoke(app, ["templates", "from-hf", "acme/model-7b", "--name", "Bad_Name"])

    assert not_an_id.exit_code == 1 and "hf_id:" in not_an_id.stderr
    assert bad_name.exit_code == 1 and "template.name:" in bad_name.stderr and "Traceback" not in bad_name.output
