package walhook

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook/internal/e2e"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/mapping"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// env is one test's database, config, receiver and (when started) service.
type env struct {
	*e2e.Env
	svc *running
}

// running is a Service running in the test.
type running struct {
	*Service
	wg  conc.WaitGroup
	err error
}

// newEnv creates a database with the demo schema and schemaSQL, installs
// walhook with cfg (the demo config when empty) and starts a receiver.
func newEnv(t *testing.T, cfg string, schemaSQL ...string) *env {
	t.Helper()
	e := &env{Env: e2e.NewEnv(t, cfg, schemaSQL...)}
	e.install()
	return e
}

func (e *env) install() []string {
	e.T.Helper()
	changes, err := Install(context.Background(), e.Conn, e.Config(), InstallOptions{Slot: e.Slot, Publication: e2e.Publication, AllowHTTP: true})
	if err != nil {
		e.T.Fatalf("install: %v", err)
	}
	return changes
}

// testConfig is the Config tests run with: fast standby updates and
// heartbeats, short restarts, private loopback targets allowed.
func (e *env) testConfig() Config {
	return Config{
		DatabaseURL: e.DSN, Mapping: e.Config(), Slot: e.Slot, Publication: e2e.Publication,
		AllowHTTP: true, AllowPrivateTargets: true, StandbyInterval: 100 * time.Millisecond,
		ShutdownTimeout: 10 * time.Second, HeartbeatInterval: 300 * time.Millisecond,
		MinRestartBackoff: 100 * time.Millisecond, MaxRestartBackoff: time.Second, DriftInterval: 200 * time.Millisecond,
		// As walhook run does: follow an install of a changed config file.
		Reload: func() (*mapping.Config, error) { return mapping.Load(e.CfgPath) },
	}
}

// newService builds a Service for the env; opts adjust its config.
func (e *env) newService(opts ...func(*Config)) *Service {
	e.T.Helper()
	cfg := e.testConfig()
	for _, o := range opts {
		o(&cfg)
	}
	logger := slog.New(slog.NewTextHandler(e2e.TestWriter{T: e.T}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	svc, err := New(cfg, logger)
	if err != nil {
		e.T.Fatalf("New: %v", err)
	}
	return svc
}

// start runs walhook against the env's database until stop or test end.
func (e *env) start(opts ...func(*Config)) *Service {
	e.T.Helper()
	return e.run(e.newService(opts...))
}

// run runs svc until stop or test end.
func (e *env) run(svc *Service) *Service {
	r := &running{Service: svc}
	r.wg.Go(func() { r.err = svc.Run(context.Background()) })
	e.svc = r
	e.T.Cleanup(func() { e.stop() })
	return svc
}

// stop shuts the service down gracefully and waits for it.
func (e *env) stop() {
	if e.svc == nil {
		return
	}
	_ = e.svc.Stop(context.Background())
	e.svc.wg.Wait()
	if e.svc.err != nil {
		e.T.Errorf("Run: %v", e.svc.err)
	}
	e.svc = nil
}
