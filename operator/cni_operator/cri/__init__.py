"""CRI v1 messages, generated from k8s.io/cri-api v0.33.13 `pkg/apis/runtime/v1/api.proto`
(Apache-2.0, The Kubernetes Authors; vendored here as cri_runtime_v1.proto without its
gogoproto options). Regenerate with scripts/gen-cri-stubs.sh; never edit by hand."""
