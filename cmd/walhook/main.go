// Command walhook turns committed PostgreSQL row changes into webhooks.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/spf13/pflag"

	"github.com/walhook/walhook/internal/bench"
)

func main() {
	bench.ReceiverMain() // the receiver process of walhook bench, when asked
	tuneGC()
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "walhook:", err)
		}
		os.Exit(exitCode(err))
	}
}

// Garbage collector settings walhook runs with unless GOGC or GOMEMLIMIT
// say otherwise.
const (
	defaultGOGC     = 400
	defaultMemLimit = 192 << 20
)

// tuneGC trades memory walhook has to spare for CPU it has not: its live
// heap is small (tens of MiB) and short-lived garbage comes with every
// request, so at Go's default GOGC=100 the collector took a tenth of the
// CPU of a busy process. GOGC=400 collects a quarter as often; the soft
// memory limit makes it collect sooner rather than grow past 192 MiB.
func tuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(defaultGOGC)
	}
	if _, set := os.LookupEnv("GOMEMLIMIT"); !set {
		debug.SetMemoryLimit(defaultMemLimit)
	}
}
