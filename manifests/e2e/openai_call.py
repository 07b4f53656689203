"""One chat completion through the official `openai` SDK, timed; used by kind-e2e.sh.

The kind cluster has no DNS for Knative's hostnames, so the request goes to a local
port-forward of the ingress gateway with the service's host name in the `Host` header.
Prints one JSON line: {"seconds": ..., "model": ..., "reply": ...}; exits 1 on any error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from urllib.parse import urlparse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:18080/v1 (a port-forward of the gateway)")
    parser.add_argument("--service-url", required=True, help="the service's URL, e.g. http://tiny-demo-predictor.ns.example.com")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--prompt", default="Say hello.")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds; a cold start waits for a pod to load the model")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    host = urlparse(args.service_url).netloc or args.service_url
    from openai import OpenAI, OpenAIError

    client = OpenAI(base_url=args.base_url, api_key="unused", default_headers={"Host": host}, timeout=args.timeout, max_retries=0)
    started = time.perf_counter()
    try:
        reply = client.chat.completions.create(
            model=args.model, messages=[{"role": "user", "content": args.prompt}], max_tokens=16, temperature=0.0
        )
    except OpenAIError as exc:
        print(f"chat completion via {args.base_url} (Host: {host}) failed: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    content = reply.choices[0].message.content if reply.choices else None
    print(json.dumps({"seconds": round(seconds, 3), "model": reply.model, "reply": content}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
