//go:build tools

// Package tools pins the containerd commands that build-tools.sh builds, so
// `go mod tidy` records every module they need in go.sum.
package tools

import (
	_ "github.com/containerd/containerd/cmd/containerd"
	_ "github.com/containerd/containerd/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/cmd/ctr"
)
