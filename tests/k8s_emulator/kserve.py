"""Acting as KServe: the `status` an InferenceService has while it loads, once ready, or after a failure."""

from __future__ import annotations

from typing import Literal

from tests.k8s_emulator.resources import Object
from tests.k8s_emulator.store import now_rfc3339

ModelState = Literal["Pending", "Standby", "Loading", "Loaded", "FailedToLoad"]
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# KServe v0.16.0 records a deprecated mode under its new name (and defaults to Knative, its config's "Serverless")
NEW_MODE_NAMES = {"Serverless": "Knative", "RawDeployment": "Standard"}
KNOWN_MODES = ("Knative", "Standard", "ModelMesh")
TRANSITION = {
    "Pending": "InProgress",
    "Standby": "InProgress",
    "Loading": "InProgress",
    "Loaded": "UpToDate",
    "FailedToLoad": "BlockedByFailedLoad",
}


def _condition(kind: str, ready: bool | None, reason: str | None, message: str | None) -> Object:
    condition: Object = {
        "type": kind,
        "status": {True: "True", False: "False", None: "Unknown"}[ready],
        "lastTransitionTime": now_rfc3339(),
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def recorded_deployment_mode(isvc: Object) -> str:
    """The `status.deploymentMode` KServe v0.16.0 records: the one already recorded, else the annotation's mode by its new name."""
    recorded = (isvc.get("status") or {}).get("deploymentMode")
    if recorded:
        return str(recorded)
    annotation = str(((isvc.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION, ""))
    mode = NEW_MODE_NAMES.get(annotation, annotation)
    return mode if mode in KNOWN_MODES else "Knative"


def isvc_status(
    name: str,
    namespace: str,
    *,
    ready: bool | None,
    reason: str | None = None,
    message: str | None = None,
    url: str | None = None,
    model_state: ModelState | None = None,
    observed_generation: int | None = None,
    domain: str = "example.com",
    deployment_mode: str | None = None,
) -> Object:
    """A KServe-shaped status.

    - `ready=True`: every condition True, `url`, traffic 100% on the latest revision, model Loaded;
    - `ready=False`: Ready/PredictorReady False with `reason`/`message`; with reason `FailedToLoad`
      (or `model_state="FailedToLoad"`) also `modelStatus.lastFailureInfo`;
    - `ready=None`: conditions Unknown (KServe has not decided yet), model Pending unless given.
    """
    if model_state is None:
        model_state = "Loaded" if ready else "FailedToLoad" if reason == "FailedToLoad" else "Pending" if ready is None else "Loading"
    revision = f"{name}-predictor-00001"
    status: Object = {
        "conditions": [
            _condition("IngressReady", ready, None if ready else reason, None if ready else message),
            _condition("PredictorReady", ready, None if ready else reason, None if ready else message),
            _condition("Ready", ready, None if ready else reason, None if ready else message),
        ],
        "modelStatus": {
            "states": {"activeModelState": model_state if model_state == "Loaded" else "", "targetModelState": model_state},
            "transitionStatus": TRANSITION[model_state],
            "copies": {"failedCopies": 1 if model_state == "FailedToLoad" else 0, "totalCopies": 1},
        },
        "components": {"predictor": {"latestCreatedRevision": revision}},
    }
    if model_state == "FailedToLoad":
        status["modelStatus"]["lastFailureInfo"] = {
            "reason": "ModelLoadFailed",
            "message": message or "the model failed to load",
            "exitCode": 1,
        }
    if ready:
        status["url"] = url or f"http://{name}.{namespace}.{domain}"
        status["address"] = {"url": f"http://{name}-predictor.{namespace}.svc.cluster.local"}
        predictor = status["components"]["predictor"]
        predictor["latestReadyRevision"] = revision
        predictor["url"] = f"http://{name}-predictor.{namespace}.{domain}"
        predictor["traffic"] = [{"latestRevision": True, "percent": 100, "revisionName": revision}]
    elif url:
        status["url"] = url
    if observed_generation is not None:
        status["observedGeneration"] = observed_generation
    if deployment_mode is not None:
        status["deploymentMode"] = deployment_mode
    return status
