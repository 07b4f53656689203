"""LoRA adapters as a pure reduction of adapter events (no I/O).

The controller and every runtime replica reduce the same events of a template's subject
with this book, so they agree on each deployment's adapter set without talking to each
other: the controller refuses what does not fit (dead letter), a replica loads what does.

- Adapter versions are immutable: a number is never reused with other content, nor after
  it was deleted.
- A deployment's attachments are adapter names, each pinned to a version or following the
  adapter's latest; `deployment.requested` with `adapters` sets the whole set, attach and
  detach change one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from events.types import (
    AdapterVersionDeleted,
    AdapterVersionPublished,
    DeploymentAdapterAttached,
    DeploymentAdapterDetached,
    DeploymentRequested,
    parse_adapter_ref,
)
from templates.schema import LoraLimits

DeploymentKey = tuple[str, str]  # (namespace, name)
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class AdapterError(ValueError):
    """An adapter event that can never succeed; the message is the dead letter's reason."""


@dataclass(frozen=True)
class Target:
    """What an adapter must fit: the deployment's template, the version it serves and its engine's LoRA limits."""

    template: str
    version: int
    limits: LoraLimits | None
    served_model_name: str = ""


def check_fits(adapter: AdapterVersionPublished, target: Target) -> None:
    if adapter.template != target.template:
        raise AdapterError(f"adapter {adapter.ref} is for base template {adapter.template!r}, not {target.template!r}")
    if not adapter.fits(target.template, target.version):
        fits = ", ".join(map(str, adapter.base_versions or ()))
        raise AdapterError(f"adapter {adapter.ref} fits {adapter.template} versions {fits}, not version {target.version}")
    if target.limits is None:
        raise AdapterError(f"{target.template}@{target.version} does not enable LoRA (engine.lora): it serves no adapters")
    if adapter.rank > target.limits.max_rank:
        raise AdapterError(f"adapter {adapter.ref} has rank {adapter.rank}, above the deployment's limit {target.limits.max_rank}")
    if adapter.name == target.served_model_name:
        raise AdapterError(f"adapter name {adapter.name!r} is the base model's served name")


def check_files(names: list[str]) -> None:
    """An adapter directory holds safetensors weights, never pickles (they can run code when loaded)."""
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise AdapterError(f"adapter files {', '.join(pickles)} are pickles: only safetensors are accepted")
    if not any(n.endswith(SAFE_SUFFIXES) for n in names):
        raise AdapterError("the adapter has no .safetensors weights")
    if "adapter_config.json" not in names:
        raise AdapterError("the adapter has no adapter_config.json")


@dataclass
class AdapterBook:
    versions: dict[tuple[str, str], dict[int, AdapterVersionPublished]] = field(default_factory=dict)  # (template, name)
    deleted: set[tuple[str, str, int]] = field(default_factory=set)
    attached: dict[DeploymentKey, dict[str, int | None]] = field(default_factory=dict)  # adapter → pinned version or latest

    # ------------------------------------------------------------------ queries

    def resolve(self, template: str, name: str, version: int | None) -> AdapterVersionPublished | None:
        known = self.versions.get((template, name), {})
        if version is None:
            return known[max(known)] if known else None
        return known.get(version)

    def all_versions(self) -> list[AdapterVersionPublished]:
        return [doc for (_, _), by_number in sorted(self.versions.items()) for _, doc in sorted(by_number.items())]

    def desired(self, key: DeploymentKey, target: Target) -> dict[str, AdapterVersionPublished]:
        """The adapters a deployment serves now: attached, published, fitting its version and limits."""
        result: dict[str, AdapterVersionPublished] = {}
        for name, version in sorted(self.attached.get(key, {}).items()):
            doc = self.resolve(target.template, name, version)
            if doc is None:
                continue
            try:
                check_fits(doc, target)
            except AdapterError:
                continue
            result[name] = doc
        if target.limits is not None:
            result = dict(list(result.items())[: target.limits.max_loras])
        return result

    # ---------------------------------------------------------------- reducer

    def apply(self, data: BaseModel, target: Target | None) -> bool:
        """Reduce one adapter event (or the adapters of a deployment.requested); True if it changed the book.
        `target`: what the event's deployment serves (None for events that name no deployment)."""
        if isinstance(data, AdapterVersionPublished):
            return self._publish(data)
        if isinstance(data, AdapterVersionDeleted):
            return self._delete(data)
        if isinstance(data, DeploymentAdapterAttached | DeploymentAdapterDetached | DeploymentRequested):
            if target is None:
                raise AdapterError(f"no deployment {data.namespace}/{data.deployment_name} of template {data.template!r}")
            if isinstance(data, DeploymentAdapterAttached):
                return self._set(data.key, {**self.attached.get(data.key, {}), data.adapter: data.version}, target)
            if isinstance(data, DeploymentAdapterDetached):
                current = self.attached.get(data.key, {})
                if data.adapter not in current:
                    return False
                return self._set(data.key, {k: v for k, v in current.items() if k != data.adapter}, target)
            if data.adapters is None:
                return False
            return self._set(data.key, dict(parse_adapter_ref(ref) for ref in data.adapters), target)
        return False

    def forget(self, key: DeploymentKey) -> None:
        self.attached.pop(key, None)

    def _publish(self, doc: AdapterVersionPublished) -> bool:
        if (doc.template, doc.name, doc.version) in self.deleted:
            raise AdapterError(f"adapter {doc.ref} was deleted and adapter versions are immutable: publish a new version")
        known = self.versions.setdefault((doc.template, doc.name), {})
        existing = known.get(doc.version)
        if existing is not None:
            if existing == doc:
                return False
            raise AdapterError(f"adapter {doc.ref} exists with other content: versions are immutable, publish a new version")
        known[doc.version] = doc
        return True

    def _delete(self, data: AdapterVersionDeleted) -> bool:
        ident = (data.template, data.name, data.version)
        if ident in self.deleted:
            return False
        known = self.versions.get((data.template, data.name), {})
        if data.version not in known:
            raise AdapterError(f"adapter {data.name}@{data.version} of {data.template} was never published: nothing to delete")
        del known[data.version]
        self.deleted.add(ident)
        return True

    def _set(self, key: DeploymentKey, wanted: dict[str, int | None], target: Target) -> bool:
        for name, version in sorted(wanted.items()):
            if name in self.attached.get(key, {}) and self.attached[key][name] == version:
                continue  # already attached: a later version of the base may have outgrown it, but that is not this event's doing
            doc = self.resolve(target.template, name, version)
            if doc is None:
                shown = name if version is None else f"{name}@{version}"
                raise AdapterError(f"unknown adapter {shown!r} of template {target.template!r}: publish it first")
            check_fits(doc, target)
        if target.limits is not None and len(wanted) > target.limits.max_loras:
            raise AdapterError(f"{len(wanted)} adapters exceed the deployment's limit of {target.limits.max_loras} (engine.lora.max_loras)")
        if self.attached.get(key, {}) == wanted:
            return False
        self.attached[key] = wanted
        return True
