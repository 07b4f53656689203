"""Shared fixtures: one real nats-server and one Kubernetes API emulator per test module; `figures` for reports."""

pytest_plugins = ["tests.fixtures.nats", "tests.fixtures.kube", "tests.fixtures.figures"]
