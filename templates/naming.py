"""Kubernetes-safe names derived from free text such as Hugging Face model IDs.

`google/gemma-7b` becomes `google--gemma-7b` (the `/` → `--` convention of the
llm-serve registry). Names are DNS-1123 labels that start with a letter, so they also
make valid Service names. The mapping never gives two texts one name:

- text already in the plain form (lower-case letters, digits, single `-` between them,
  at most one `/`, starting with a letter) maps to itself with `/` → `--`, which can be undone;
- any other text (capitals, `_`, `.`, a leading digit, a name too long) is normalised the
  same way and gets a short hash of the original text, so `Google/Gemma_7B`,
  `google/gemma.7b` and `google/gemma-7b` get three different names, each stable.
"""

from __future__ import annotations

import hashlib
import re

DNS1123_LABEL_MAX = 63
DNS1123_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_PLAIN = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?:/[a-z0-9]+(?:-[a-z0-9]+)*)?")
_INVALID = re.compile(r"[^a-z0-9]+")
_HASH_LEN = 8


def short_hash(text: str, length: int = _HASH_LEN) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def is_dns1123_label(name: str) -> bool:
    return len(name) <= DNS1123_LABEL_MAX and DNS1123_LABEL_RE.fullmatch(name) is not None


# The longest InferenceService name whose derived names all stay valid (KServe v0.16, Knative 1.15).
# The strictest: a multi-node service's worker pods carry the label `app: isvc.<name>-predictor-worker`,
# 22 characters more than the name, and a label value has at most 63. The others fit then too:
# `<name>-predictor` (the Knative Service; a host label and a label value), `latest-<name>-predictor`
# (a tag route's host label), `<name>-predictor-worker` (a Service), `isvc.<name>-predictor`.
SERVICE_NAME_MAX = DNS1123_LABEL_MAX - len("isvc.-predictor-worker")  # 41
DNS1035_LABEL_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # KServe's rule for InferenceService names


def service_name_problem(name: str) -> str | None:
    """Why `name` cannot name an InferenceService (None when it can)."""
    if DNS1035_LABEL_RE.fullmatch(name) is None:
        return (
            "is not a valid Kubernetes name for an InferenceService (KServe wants a DNS-1035 label: lower-case letters, "
            "digits and '-', starting with a letter and ending with a letter or digit)"
        )
    if len(name) > SERVICE_NAME_MAX:
        return (
            f"is not a valid Kubernetes name for an InferenceService: it has {len(name)} characters, at most {SERVICE_NAME_MAX} "
            "leave room for the names KServe derives from it (up to the label value 'isvc.<name>-predictor-worker', 63 at most)"
        )
    return None


def k8s_name(text: str, max_len: int = DNS1123_LABEL_MAX) -> str:
    """Turn any text into a stable DNS-1123 label of at most `max_len` characters that starts with a letter."""
    if max_len < _HASH_LEN + 3:
        raise ValueError(f"max_len must be at least {_HASH_LEN + 3}")
    plain = text.replace("/", "--")
    if _PLAIN.fullmatch(text) and len(plain) <= max_len:
        return plain
    # '/' → '--', every other run of other characters → '-'
    head = "--".join(_INVALID.sub("-", part.lower()).strip("-") for part in text.split("/")).strip("-")
    if not head[:1].isalpha():
        head = f"m-{head}" if head else "m"
    head = head[: max_len - _HASH_LEN - 1].rstrip("-")
    return f"{head}-{short_hash(text)}"
