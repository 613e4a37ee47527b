package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/walhook/walhook/internal/bench"
)

func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("bench", stderr, &c, "database-url", "log-format")
	var o bench.Options
	fs.IntVar(&o.Rows, "rows", 200000, "rows in the catch-up backlog")
	fs.IntSliceVar(&o.TxSizes, "tx-sizes", []int{100, 1}, "backlog shapes: rows per transaction, each caught up separately")
	fs.IntVar(&o.Batch, "batch", 0, "also catch up each shape through a dialect batching this many events per request (0: off)")
	fs.IntVar(&o.Subs, "subscriptions", 1, "subscriptions to bench.created, each its own target URL")
	fs.IntVar(&o.Rate, "rate", 1000, "changes per second (one row per transaction) in the latency phase")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "length of the latency phase")
	fs.BoolVar(&o.JSON, "json", false, "print the results as JSON")
	fs.IntVar(&o.RSSRows, "rss-rows", 0, "instead of the other phases: deliver ONE transaction of this many rows to one subscription and report peak RSS")
	fs.IntSliceVar(&o.HTTPClients, "http-clients", []int{16, 64, 256}, "client counts of the HTTP limit, which is the best of them")
	fs.IntVar(&o.HTTPRequests, "http-requests", 0, "events posted per client count in the HTTP-limit phase (default: the catch-up's deliveries, at most 100000)")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of the delivery phase (catch-up or --rss-rows) to this file")
	fs.StringVar(&o.MemProfile, "memprofile", "", "write a heap profile taken at the end of the delivery phase to this file")
	fs.DurationVar(&o.Timeout, "phase-timeout", 10*time.Minute, "give up on a phase that takes longer than this")
	if err := fs.parse(args, false); err != nil {
		return err
	}
	o.DatabaseURL = c.DatabaseURL
	if err := o.Validate(); err != nil {
		return usageError{err.Error()}
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// walhook's warnings (a pipeline restart, a failed attempt) go to
	// stderr even without LOG_LEVEL: they explain a figure.
	log := quietLogger(stderr, c.LogFormat)
	if os.Getenv("LOG_LEVEL") == "" {
		warn := &slog.HandlerOptions{Level: slog.LevelWarn}
		log = slog.New(slog.NewTextHandler(stderr, warn))
		if c.LogFormat == "json" {
			log = slog.New(slog.NewJSONHandler(stderr, warn))
		}
	}
	progress := stderr
	if o.JSON {
		progress = io.Discard
	}

	res, err := bench.Run(ctx, o, log, progress)
	if err != nil {
		return err
	}
	if o.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	res.Print(stdout)
	return nil
}
