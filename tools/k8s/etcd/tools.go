//go:build tools

// Package tools pins the etcd server that scripts/k8s-test-tools builds.
package tools

import _ "go.etcd.io/etcd/server/v3"
