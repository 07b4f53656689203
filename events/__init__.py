"""CloudEvents over NATS JetStream: event types, encoding, the stream, the publisher and the CLI.

    import events
    result = await events.publish(EventKind.DEPLOYMENT_REQUESTED, {"template": "gemma-3-12b-it", "namespace": "llm"})
    async with await events.Publisher.connect() as publisher: ...

`publish` and `Publisher` load on first use, so that `import events.types` (the
controller's pure core) does not import the NATS client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from events.publisher import Publisher, publish

__all__ = ["Publisher", "publish"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from events import publisher

        return getattr(publisher, name)
    raise AttributeError(f"module 'events' has no attribute {name!r}")
