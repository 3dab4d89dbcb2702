//go:build tools

// Package tools pins the Kubernetes commands that scripts/k8s-test-tools builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
