"""Where rendered InferenceServices go: the Kubernetes API (`kube`) or a GitOps directory (`dir`)."""
