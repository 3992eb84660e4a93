// Command etcd is etcd's own server entry point, built from go.etcd.io/etcd/server/v3 at the
// version that the pinned k8s.io/kubernetes module requires, so the apiserver and etcd always match.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
