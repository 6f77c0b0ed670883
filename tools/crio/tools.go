//go:build tools

// Package tools pins the CRI-O command that build-tools.sh builds, so `go mod
// tidy` records every module it needs in go.sum.
package tools

import _ "github.com/cri-o/cri-o/cmd/crio"
