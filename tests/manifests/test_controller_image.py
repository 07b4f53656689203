"""controller/Dockerfile: multi-stage, slim, non-root, the project without the runtime extras.

No Docker engine here, so the image is not built in CI; these checks read the Dockerfile and
check that what it installs (the project, no extras) is enough to start the controller.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.manifests.kustomize import one, render

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "controller" / "Dockerfile"
RUNTIME_ONLY_MODULES = ("vllm", "ray", "torch", "transformers", "openai")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def copied_sources() -> set[str]:
    """What the build stage copies from the context (every COPY argument but the destination)."""
    return {src.rstrip("/") for k, a in instructions() if k == "COPY" and not a.startswith("--from") for src in a.split()[:-1]}


def test_multi_stage_from_a_slim_python() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    args = dict(a.split("=", 1) for k, a in instructions() if k == "ARG" and "=" in a)
    for stage in all_stages:
        base = stage[0][1].split()[0]
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert re.match(r"^python:3\.11[.\d]*-slim", base), base
    final = all_stages[-1]
    assert any(k == "COPY" and a.startswith("--from=") for k, a in final), "the final stage copies the build's result"
    assert not any(k == "RUN" and "pip install" in a for k, a in final), "nothing is installed in the final stage"


def test_installs_the_project_without_extras() -> None:
    installs = [a for k, a in instructions() if k == "RUN" and "pip install" in a]
    assert installs and all(re.search(r"pip install \.(\s|$)", a) for a in installs), installs
    assert "[runtime" not in DOCKERFILE.read_text()
    # every package the project declares is copied into the build
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied_sources(), f"not copied: {packages - copied_sources()}"


def test_runs_as_the_non_root_user_the_deployment_expects() -> None:
    users = [a for k, a in stages()[-1] if k == "USER"]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root USER lets runAsNonRoot verify it"
    pod = one(render("overlays/default"), "Deployment", "stokehold-controller")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid or uid)


def test_entrypoint_runs_the_controller() -> None:
    entry = [a for k, a in stages()[-1] if k == "ENTRYPOINT"]
    cmd = [a for k, a in stages()[-1] if k == "CMD"]
    assert entry == ['["stokehold"]']
    container = one(render("overlays/default"), "Deployment", "stokehold-controller")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["controller", "run"]
    assert cmd == ['["controller", "run"]']


def test_dockerignore_keeps_the_virtualenv_out() -> None:
    ignore = (REPO / "controller" / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore.index("*") < min(i for i, line in enumerate(ignore) if line.startswith("!")), "ignore everything, then allow"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == copied_sources()


def test_controller_starts_without_runtime_modules() -> None:
    """What the image has (no runtime extras) is enough: `stokehold controller run` imports no vLLM, Ray, torch or openai."""
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {RUNTIME_ONLY_MODULES!r}: raise ImportError('runtime-only module: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import controller.app, controller.render, events.cli\n"
        "from typer.testing import CliRunner\n"
        "result = CliRunner().invoke(events.cli.app, ['controller', 'run', '--help'])\n"
        "assert result.exit_code == 0 and '--leader-election' in result.output, result.output\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
