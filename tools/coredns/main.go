// Test tooling only: the dev cluster's DNS, CoreDNS built from its Go module
// with just the plugins a cluster DNS needs (the upstream binary links every
// plugin, cloud back ends included). The plugins run in CoreDNS's own fixed
// order (core/dnsserver/zdirectives.go), whatever the order of these imports.
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
