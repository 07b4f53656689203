"""Kubernetes-safe names derived from free text such as Hugging Face model IDs.

`google/gemma-7b` becomes `google--gemma-7b` (the `/` → `--` convention of the
llm-serve registry), lower-cased and DNS-1123 valid. Names longer than the limit
are cut and given a short hash of the original so they stay unique and stable.
"""

from __future__ import annotations

import functools
import hashlib
import re

DNS1123_LABEL_MAX = 63
DNS1123_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_INVALID = re.compile(r"[^a-z0-9-]+")
_HASH_LEN = 8


def short_hash(text: str, length: int = _HASH_LEN) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def is_dns1123_label(name: str) -> bool:
    return len(name) <= DNS1123_LABEL_MAX and _matches_dns1123_label(name)


@functools.lru_cache(maxsize=4096)  # the same few names come with every version and event of a template
def _matches_dns1123_label(name: str) -> bool:
    return DNS1123_LABEL_RE.fullmatch(name) is not None


def k8s_name(text: str, max_len: int = DNS1123_LABEL_MAX) -> str:
    """Turn any text into a stable DNS-1123 label of at most `max_len` characters."""
    if max_len < _HASH_LEN + 2:
        raise ValueError(f"max_len must be at least {_HASH_LEN + 2}")
    name = text.strip().lower().replace("/", "--").replace("_", "-").replace(".", "-")
    name = _INVALID.sub("-", name).strip("-")
    if not name:
        return f"x-{short_hash(text)}"
    if len(name) <= max_len:
        return name
    head = name[: max_len - _HASH_LEN - 1].rstrip("-")
    return f"{head}-{short_hash(text)}"
