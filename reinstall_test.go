package walhook

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/demo"
	"github.com/walhook/walhook/internal/e2e"
)

// auditConfig is the demo config mapping public.audit_log too.
func auditConfig(t *testing.T) string {
	return replace(t, string(demo.Config), "  - table: public.customers",
		"  - table: public.audit_log\n    noun: audit\n    acl: \"true\"\n  - table: public.customers")
}

// TestRunFollowsAnInstall: walhook install with a new config, while
// walhook runs, reaches the running process through the stream; with
// Config.Reload it restarts its pipeline on the new config.
func TestRunFollowsAnInstall(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	svc := e.start() // with Reload, as walhook run

	e2e.WaitFor(t, 30*time.Second, "the service to stream", func() bool { return svc.Health().Ready })
	e.writeConfig(auditConfig(t))
	e.install()
	e.Exec(`SELECT walhook.subscribe('audit.created', $1, '1')`, e.Recv.URL+"/audit")
	e.Exec(`INSERT INTO public.audit_log (id, note) VALUES (1, 'now mapped')`)
	e.Recv.WaitRows(t, "/audit", 1)
}

// TestRunStopsOnAnInstallItCannotFollow: without Config.Reload, an install
// of another config stops Run with a message saying what to do.
func TestRunStopsOnAnInstallItCannotFollow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	svc := e.newService(func(c *Config) { c.Reload = nil })
	done := make(chan error, 1)
	go func() { done <- svc.Run(context.Background()) }() //nolint:conc // the test reads Run's error
	e2e.WaitFor(t, 30*time.Second, "the service to stream", func() bool { return svc.Health().Ready })
	e.writeConfig(auditConfig(t))
	e.install()
	select {
	case err := <-done:
		var changed *ConfigChangedError
		if !errors.As(err, &changed) || !strings.Contains(err.Error(), "restart walhook run") {
			t.Fatalf("Run() = %v, want a ConfigChangedError", err)
		}
	case <-time.After(60 * time.Second):
		_ = svc.StopAndCancel(context.Background())
		t.Fatal("Run went on after an install of another config")
	}
}
