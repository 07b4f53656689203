"""Where the objects that warm the model cache go: pre-download Jobs and KServe LocalModelCaches.

They are created once and never changed: a Job's pod template is immutable and its name is keyed by
the version's content hash, and a LocalModelCache is keyed by its source. An object of the same name
that exists already means the work is done or under way (whoever made it), so `ensure` reads first
and writes only what is missing: applying the same version again writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from kubernetes.client import ApiClient, BatchV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from controller.labels import Object, is_managed
from controller.render_cache import JOB_KIND, LMC_KIND
from controller.sinks.base import PermanentSinkError, TransientSinkError
from controller.sinks.kube import PooledApi

LMC_GROUP, LMC_VERSION, LMC_PLURAL = "serving.kserve.io", "v1alpha1", "localmodelcaches"


class CacheSink(Protocol):
    async def ensure(self, obj: Object) -> bool:
        """Create `obj` unless an object of its kind and name exists (never updated); True when this call created it."""
        ...

    async def read(self, obj: Object) -> Object | None:
        """The live LocalModelCache of `obj`'s name, None when there is none: its status tells how far KServe's copy got."""
        ...

    async def close(self) -> None: ...


class KubeCacheSink(PooledApi):
    """`CacheSink` on the Kubernetes API: batch/v1 Jobs (namespaced) and LocalModelCaches (cluster-scoped)."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespaces: Iterable[str] | None = None,
        workers: int = 4,
        request_timeout: float | tuple[float, float] = (5.0, 30.0),
    ) -> None:
        super().__init__(api_client, namespaces=namespaces, workers=workers, request_timeout=request_timeout, thread_name="kube-cache-sink")
        self._batch = BatchV1Api(self._client)
        self._custom = CustomObjectsApi(self._client)

    async def ensure(self, obj: Object) -> bool:
        if not is_managed(obj):
            raise PermanentSinkError("refusing to write an object that is not labelled as managed by stokehold")
        kind = obj.get("kind")
        metadata = obj.get("metadata") or {}
        name, namespace = str(metadata.get("name") or ""), str(metadata.get("namespace") or "")
        if not name:
            raise PermanentSinkError(f"the {kind} has no metadata.name")
        if kind == JOB_KIND:
            if not namespace:
                raise PermanentSinkError(f"the Job {name} has no metadata.namespace")
            if self.namespaces is not None and namespace not in self.namespaces:
                raise PermanentSinkError(f"namespace {namespace!r} is not one this controller manages")
            where = f"Job {namespace}/{name}"
            if await self._call(f"read {where}", self._batch.read_namespaced_job, name, namespace, missing_ok=True) is not None:
                return False
            return await self._create(where, self._batch.create_namespaced_job, namespace, obj)
        if kind == LMC_KIND:
            where = f"LocalModelCache {name}"
            get = self._custom.get_cluster_custom_object
            if await self._call(f"read {where}", get, LMC_GROUP, LMC_VERSION, LMC_PLURAL, name, missing_ok=True) is not None:
                return False
            return await self._create(where, self._custom.create_cluster_custom_object, LMC_GROUP, LMC_VERSION, LMC_PLURAL, obj)
        raise PermanentSinkError(f"not a model-cache object: kind {kind!r}")

    async def read(self, obj: Object) -> Object | None:
        if obj.get("kind") != LMC_KIND:
            raise PermanentSinkError(f"only a LocalModelCache's progress is read, not a {obj.get('kind')!r}")
        name = str((obj.get("metadata") or {}).get("name") or "")
        get = self._custom.get_cluster_custom_object
        where = f"read LocalModelCache {name}"
        live: Object | None = await self._call(where, get, LMC_GROUP, LMC_VERSION, LMC_PLURAL, name, missing_ok=True)
        return live

    async def _create(self, where: str, fn: Callable[..., object], *args: Any) -> bool:
        try:
            await self._call(f"create {where}", fn, *args)
        except TransientSinkError as exc:
            cause = exc.__cause__
            if isinstance(cause, ApiException) and cause.status == 409:  # created meanwhile (another writer): there it is
                return False
            raise
        except PermanentSinkError as exc:
            cause = exc.__cause__
            # KServe's webhook allows one LocalModelCache per source: another one already caches it
            if isinstance(cause, ApiException) and cause.status == 403 and "has the same StorageURI" in str(cause.body or ""):
                return False
            raise
        return True
