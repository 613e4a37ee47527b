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

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/mapping"
)

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("run", stderr, &c, "database-url", "config", "slot", "publication", "listen", "log-format", "allow-http", "allow-private-targets")
	shutdown := fs.Duration("shutdown-timeout", walhook.DefaultShutdownTimeout, "on SIGTERM, how long in-flight deliveries may take to finish")
	standby := fs.Duration("standby-interval", cdc.DefaultStandbyInterval, "how often the slot position is reported to PostgreSQL")
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
	cfg, _, err := loadConfig(c.Config)
	if err != nil {
		return err
	}
	svc, err := walhook.New(walhook.Config{
		DatabaseURL:         c.DatabaseURL,
		Mapping:             cfg,
		Slot:                c.Slot,
		Publication:         c.Publication,
		AllowHTTP:           c.AllowHTTP,
		AllowPrivateTargets: c.AllowPrivate,
		AllowTargetCIDRs:    cidrs,
		StandbyInterval:     *standby,
		ShutdownTimeout:     *shutdown,
		// After `walhook install` with a changed config, follow it.
		Reload: func() (*mapping.Config, error) {
			cfg, _, err := loadConfig(c.Config)
			return cfg, err
		},
	}, log)
	if err != nil {
		return err
	}
	if c.Listen != "" {
		srv, err := startHealth(c.Listen, svc.Handler())
		if err != nil {
			return err
		}
		defer srv.Close()
		log.Info("serving /metrics, /healthz and /readyz", "addr", srv.listener.Addr().String())
		var wg conc.WaitGroup
		defer wg.Wait()
		defer srv.Close()
		wg.Go(func() { _ = srv.Serve(srv.listener) })
	}

	// Two-phase shutdown: the first signal stops reading and drains, the
	// second stops at once.
	var wg conc.WaitGroup
	defer wg.Wait()
	done := make(chan struct{})
	defer close(done)
	wg.Go(func() {
		sig := make(chan os.Signal, 2)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(sig)
		select {
		case <-sig:
		case <-done:
			return
		}
		log.Info("stopping: draining deliveries; signal again to stop at once")
		stopCtx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var second conc.WaitGroup
		defer second.Wait()
		second.Go(func() {
			select {
			case <-sig:
				cancel()
			case <-done:
			}
		})
		_ = svc.Stop(stopCtx)
	})
	err = svc.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

type healthServer struct {
	*http.Server
	listener net.Listener
}

// startHealth listens for /healthz, /readyz and /metrics. Binding happens
// here, not in the goroutine, so a taken port is an error at start.
func startHealth(addr string, h http.Handler) (*healthServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	return &healthServer{Server: srv, listener: ln}, nil
}
