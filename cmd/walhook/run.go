package main

import (
	"context"
	"errors"

	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/internal/metrics"
)

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("run", stderr, &c, "database-url", "config", "slot", "publication", "listen", "log-format", "allow-http", "allow-private-targets")
	shutdown := fs.Duration("shutdown-timeout", 30*time.Second, "on SIGTERM, how long in-flight deliveries may take to finish")
	standby := fs.Duration("standby-interval", 10*time.Second, "how often the slot position is reported to PostgreSQL")
	allowCIDRs := fs.StringSlice("allow-target-cidr", nil, "destination ranges allowed even without --allow-private-targets (e.g. 10.20.0.0/16); repeatable")
	if err := fs.parse(args, true); err != nil {
		return err
	}
	var cidrs []netip.Prefix
	for _, s := range *allowCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return usageError{fmt.Sprintf("--allow-target-cidr %q: %v", s, err)}
		}
		cidrs = append(cidrs, p.Masked())
	}
	log := newLogger(stderr, c.LogFormat)
	cfg, mapper, rules, err := loadConfigRules(c.Config)
	if err != nil {
		return err
	}

	// Two-phase shutdown: the first signal stops reading and drains, the
	// second stops at once.
	soft, stopSoft := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stopSoft()
	hard, stopHard := context.WithCancel(ctx)
	defer stopHard()
	var wg conc.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		select {
		case <-soft.Done():
		case <-hard.Done():
			return
		}
		if ctx.Err() != nil {
			stopHard()
			return
		}
		log.Info("stopping: draining deliveries; signal again to stop at once")
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(again)
		select {
		case <-again:
			stopHard()
		case <-hard.Done():
		}
	})
	defer stopHard()

	state, m := newServiceState(), metrics.New(version)
	if c.Listen != "" {
		srv, err := startHealth(c.Listen, state, m)
		if err != nil {
			return err
		}
		defer srv.Close()
		log.Info("serving /metrics, /healthz and /readyz", "addr", srv.listener.Addr().String())
		wg.Go(func() { _ = srv.Serve(srv.listener) })
	}

	if err := checkInstalled(hard, c.DatabaseURL, c.Publication, mapper); err != nil {
		var mismatch installMismatch
		if errors.As(err, &mismatch) {
			return err
		}
		// PostgreSQL may be restarting: the pipeline retries the connection,
		// and checks the slot when it gets one.
		log.Warn("could not check the installation; starting anyway", "err", err)
	}
	log.Info("walhook starting", "version", version, "slot", c.Slot, "publication", c.Publication, "tables", len(cfg.Tables))
	err = serve(soft, hard, serviceConfig{
		DatabaseURL:     c.DatabaseURL,
		Config:          cfg,
		Mapper:          mapper,
		Rules:           rules,
		Slot:            c.Slot,
		Publication:     c.Publication,
		AllowHTTP:       c.AllowHTTP,
		AllowPrivate:    c.AllowPrivate,
		AllowCIDRs:      cidrs,
		StandbyInterval: *standby,
		ShutdownTimeout: *shutdown,
		State:           state,
		Metrics:         m,
		Logger:          log,
	})
	if err != nil {
		return err
	}
	log.Info("walhook stopped")
	return nil
}

type healthServer struct {
	*http.Server
	listener net.Listener
}

// startHealth listens for /healthz, /readyz and /metrics (see
// newHTTPHandler). Binding happens here, not in the goroutine, so a taken
// port is an error at start.
func startHealth(addr string, state *serviceState, m *metrics.Metrics) (*healthServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: newHTTPHandler(state, m), ReadHeaderTimeout: 5 * time.Second}
	return &healthServer{Server: srv, listener: ln}, nil
}
