"""Security tests: hostile events, NATS subject permissions, least privilege in the cluster (docs/security.md)."""
