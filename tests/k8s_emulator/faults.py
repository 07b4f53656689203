"""Injected faults: a seeded fraction of matching API calls fails, is throttled, conflicts or is slow.

Rules are checked in order; the first rule that matches a call and "fires" (its seeded coin
toss comes up, and it has not used up `times`) decides what happens to the call. Counters
tell a test how many calls were seen and how many faults of each kind were injected.
"""

from __future__ import annotations

import random
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

FaultKind = Literal["error", "throttle", "conflict", "delay", "disconnect"]
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class FaultRule:
    """One kind of fault for a fraction of the calls that match the filters.

    - `error`: HTTP `status` (default 500) with an InternalError `Status`;
    - `throttle`: 429 TooManyRequests with `Retry-After: retry_after`;
    - `conflict`: 409 Conflict (writes only, as a real conflict can only happen on a write);
    - `delay`: the call is served normally after `delay_s` seconds;
    - `disconnect`: the connection is closed without an answer.
    """

    kind: FaultKind
    fraction: float = 1.0
    methods: frozenset[str] | None = None  # e.g. {"PUT"}; None: any
    path: str | None = None  # regular expression searched in the URL path
    user_agent: str | None = None  # regular expression searched in the User-Agent (to target one client)
    times: int | None = None  # fire at most this many times
    status: int = 500
    retry_after: int = 1
    delay_s: float = 0.2
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fraction must be between 0 and 1")
        if self.methods is not None:
            self.methods = frozenset(m.upper() for m in self.methods)

    def matches(self, method: str, path: str, user_agent: str) -> bool:
        if self.kind == "conflict" and method not in WRITE_METHODS:
            return False
        if self.methods is not None and method not in self.methods:
            return False
        if self.path is not None and not re.search(self.path, path):
            return False
        if self.user_agent is not None and not re.search(self.user_agent, user_agent):
            return False
        return self.times is None or self.fired < self.times

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRule:
        data = dict(data)
        if data.get("methods") is not None:
            data["methods"] = frozenset(data["methods"])
        return cls(**data)


class FaultInjector:
    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._seed = seed
        self._random = random.Random(seed)
        self.rules: list[FaultRule] = []
        self.calls: Counter[str] = Counter()  # by method, plus "total"
        self.injected: Counter[str] = Counter()  # by fault kind, plus "total"
        self.responses: Counter[int] = Counter()  # HTTP status of every API answer, injected or not

    def add(self, kind: FaultKind, fraction: float = 1.0, **options: Any) -> FaultRule:
        return self.add_rule(FaultRule(kind, fraction, **options))

    def add_rule(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self, *, seed: int | None = None) -> None:
        """Remove every rule and zero the counters; reseed so a run repeats exactly."""
        with self._lock:
            self.rules.clear()
            self.calls.clear()
            self.injected.clear()
            self.responses.clear()
            self._random = random.Random(self._seed if seed is None else seed)

    def decide(self, method: str, path: str, user_agent: str = "") -> FaultRule | None:
        method = method.upper()
        with self._lock:
            self.calls[method] += 1
            self.calls["total"] += 1
            for rule in self.rules:
                if not rule.matches(method, path, user_agent):
                    continue
                if rule.fraction < 1.0 and self._random.random() >= rule.fraction:
                    continue
                rule.fired += 1
                self.injected[rule.kind] += 1
                self.injected["total"] += 1
                return rule
            return None

    def answered(self, status: int) -> None:
        with self._lock:
            self.responses[status] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": dict(self.calls),
                "injected": dict(self.injected),
                "responses": {str(code): count for code, count in self.responses.items()},
                "rules": [{"kind": r.kind, "fraction": r.fraction, "fired": r.fired} for r in self.rules],
            }
