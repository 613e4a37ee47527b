package main

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/internal/bench"
	"github.com/walhook/walhook/internal/e2e"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/mapping"
)

// TestMain serves as walhook bench's receiver when the bench under test
// starts this binary as one.
func TestMain(m *testing.M) {
	bench.ReceiverMain()
	pgtest.Main(m)
}

// env is one test's database, config and receiver, with walhook installed;
// start runs the service in this process.
type env struct {
	*e2e.Env
}

func newEnv(t *testing.T, cfg string, schemaSQL ...string) *env {
	t.Helper()
	e := &env{e2e.NewEnv(t, cfg, schemaSQL...)}
	if _, err := walhook.Install(context.Background(), e.Conn, e.Config(), walhook.InstallOptions{Slot: e.Slot, AllowHTTP: true}); err != nil {
		t.Fatalf("install: %v", err)
	}
	return e
}

// start runs walhook in this process until the test ends.
func (e *env) start() {
	e.T.Helper()
	logger := slog.New(slog.NewTextHandler(e2e.TestWriter{T: e.T}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	svc, err := walhook.New(walhook.Config{
		DatabaseURL: e.DSN, Mapping: e.Config(), Slot: e.Slot, AllowHTTP: true, AllowPrivateTargets: true,
		StandbyInterval: 100 * time.Millisecond, ShutdownTimeout: 10 * time.Second, HeartbeatInterval: 300 * time.Millisecond,
		Reload: func() (*mapping.Config, error) { return mapping.Load(e.CfgPath) },
	}, logger)
	if err != nil {
		e.T.Fatalf("New: %v", err)
	}
	var wg conc.WaitGroup
	var runErr error
	wg.Go(func() { runErr = svc.Run(context.Background()) })
	e.T.Cleanup(func() {
		_ = svc.Stop(context.Background())
		wg.Wait()
		if runErr != nil {
			e.T.Errorf("Run: %v", runErr)
		}
	})
}
