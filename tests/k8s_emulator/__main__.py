"""Run the emulator as its own process: `python -m tests.k8s_emulator --kubeconfig /tmp/kubeconfig`.

Prints the URL once listening, serves until SIGINT/SIGTERM. Faults, resets and KServe
statuses are then driven through the admin routes under `/_emulator/` (see README.md).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from tests.k8s_emulator.server import KubernetesEmulator


def main() -> None:
    parser = argparse.ArgumentParser(description="Kubernetes API emulator (KServe resources, Leases, Events, Namespaces)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--token", default="stokehold-emulator-token", help="bearer token clients must send ('' for none)")
    parser.add_argument("--plain-http", action="store_true", help="serve HTTP instead of HTTPS (kubectl then sends no token)")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for this server here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault injector")
    args = parser.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with KubernetesEmulator(host=args.host, port=args.port, token=args.token or None, tls=not args.plain_http, seed=args.seed) as emulator:
        if args.kubeconfig is not None:
            emulator.write_kubeconfig(args.kubeconfig)
        print(emulator.url, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
