// Command walhook turns committed PostgreSQL row changes into webhooks.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/walhook/walhook/internal/bench"
)

func main() {
	bench.ReceiverMain() // the receiver process of walhook bench, when asked
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "walhook:", err)
		}
		os.Exit(exitCode(err))
	}
}
