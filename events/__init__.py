"""CloudEvents over NATS JetStream: event types, encoding, the stream, the publisher and the CLI."""
