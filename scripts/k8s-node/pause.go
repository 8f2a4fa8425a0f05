// The sandbox ("pause") container of the test node (scripts/k8s-node.sh): holds a pod's
// namespaces, reaps the zombies of the pod's shared PID namespace, and exits on SIGTERM or
// SIGINT. What registry.k8s.io/pause does, built here because no registry is reachable.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Printed by --version; scripts/k8s-node.sh rebuilds the binary when it differs.
const version = "corral-pause 1"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "--version" {
		fmt.Println(version)
		return
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			return
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
