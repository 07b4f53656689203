"""The controller: JetStream events in, KServe InferenceServices out, status events back."""
