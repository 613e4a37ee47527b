package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sourcegraph/conc"
	"github.com/walhook/walhook/internal/e2e"
)

var listenAddr = regexp.MustCompile(`addr=(127\.0\.0\.1:\d+)`)

// metricsURL waits for the process to log its --listen address and returns
// the base URL.
func (p *process) metricsURL(t *testing.T) string {
	t.Helper()
	var addr string
	e2e.WaitFor(t, 30*time.Second, "the process to log its listen address", func() bool {
		b, _ := os.ReadFile(p.out.Name())
		if m := listenAddr.FindSubmatch(b); m != nil {
			addr = string(m[1])
		}
		return addr != ""
	})
	return "http://" + addr
}

func (p *process) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func (p *process) logContains(s string) bool {
	b, _ := os.ReadFile(p.out.Name())
	return bytesContains(b, s)
}

// exit waits up to timeout for the process to end and returns its exit code.
func (p *process) exit(t *testing.T, timeout time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	var wg conc.WaitGroup
	wg.Go(func() { done <- p.cmd.Wait() })
	var err error
	select {
	case err = <-done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		wg.Wait()
		t.Fatalf("the process did not exit within %s", timeout)
	}
	wg.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

// TestSIGTERMDrainsDeliveries stops walhook with SIGTERM while a slow
// receiver holds deliveries: the process lets them finish, records them,
// moves the slot past them and exits 0. After a restart nothing that was
// answered is sent again, and what was written while it was stopped arrives.
func TestSIGTERMDrainsDeliveries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	var answered atomic.Int64
	e.Recv.SetStatus(func(r *http.Request) int {
		select {
		case <-time.After(time.Second):
		case <-r.Context().Done():
			return http.StatusServiceUnavailable
		}
		answered.Add(1)
		return http.StatusOK
	})
	e.Subscribe("customer.created", "/c")
	proc := startProcess(t, e.DSN, e.CfgPath, e.Slot, "--listen", "127.0.0.1:0", "--shutdown-timeout", "30s")
	base := proc.metricsURL(t)

	// 20 transactions to one destination: 16 in flight (max_per_host), 4
	// waiting in its queue.
	const first, later = 20, 5
	for i := 1; i <= first; i++ {
		e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES ($1, 7, 'before SIGTERM')`, i)
	}
	e2e.WaitFor(t, 30*time.Second, "every change dispatched and 16 requests held", func() bool {
		return e2e.Scrape(t, base+"/metrics")["walhook_events_produced_total"] >= first && len(e.Recv.Deliveries("/c")) >= 16
	})
	if answered.Load() >= first {
		t.Fatal("every delivery was answered before SIGTERM; the receiver does not hold them")
	}
	proc.signal(t, syscall.SIGTERM)
	e2e.WaitFor(t, 10*time.Second, "the process to start draining", func() bool { return proc.logContains("stopping: draining") })
	// Written while it drains: not read by this process, so left for the next.
	for i := first + 1; i <= first+later; i++ {
		e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES ($1, 7, 'during the drain')`, i)
	}
	if code := proc.exit(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0", code)
	}
	if !proc.logContains("walhook stopped") {
		t.Fatal(`the log has no "walhook stopped"`)
	}
	before := map[string]bool{}
	for _, d := range e.Recv.Deliveries("/c") {
		before[d.Header.Get("webhook-id")] = true
	}
	if n := answered.Load(); n != int64(len(before)) || n < first {
		t.Fatalf("answered %d of %d requests received before the exit; want all of at least %d (drained)", n, len(before), first)
	}

	startProcess(t, e.DSN, e.CfgPath, e.Slot)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES ($1, 7, 'after the restart')`, first+later+1)
	e2e.WaitFor(t, 60*time.Second, "every row delivered", func() bool {
		return len(e.Recv.Deliveries("/c")) >= first+later+1
	})
	seen := map[string]int{}
	for _, d := range e.Recv.Deliveries("/c") {
		seen[d.Header.Get("webhook-id")]++
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("event %s delivered %d times: an answered delivery was sent again after the restart", id, n)
		}
	}
	if got := e2e.SortedIDs(t, e.Recv.Deliveries("/c")); len(got) != first+later+1 {
		t.Fatalf("rows delivered = %v, want %d distinct", got, first+later+1)
	}
}

// TestSecondSignalStopsAtOnce: a second SIGTERM during the drain stops the
// process at once, without waiting for the held requests or the shutdown
// timeout; it still exits 0 (a requested stop, which systemd must not
// restart), and the deliveries it abandoned are sent after the next start.
func TestSecondSignalStopsAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	var release atomic.Bool
	e.Recv.SetStatus(func(r *http.Request) int {
		if release.Load() {
			return http.StatusOK
		}
		<-r.Context().Done() // held until the client gives up
		return http.StatusServiceUnavailable
	})
	e.Subscribe("customer.created", "/c")
	proc := startProcess(t, e.DSN, e.CfgPath, e.Slot, "--shutdown-timeout", "5m")
	const rows = 3
	for i := 1; i <= rows; i++ {
		e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES ($1, 7, 'held')`, i)
	}
	e.Recv.Wait(t, "/c", rows)
	proc.signal(t, syscall.SIGTERM)
	e2e.WaitFor(t, 10*time.Second, "the process to start draining", func() bool { return proc.logContains("stopping: draining") })
	start := time.Now()
	proc.signal(t, syscall.SIGTERM)
	code := proc.exit(t, 15*time.Second)
	t.Logf("second signal: exited with code %d after %s", code, time.Since(start).Round(time.Millisecond))
	if code != 0 {
		t.Fatalf("exit code after a second signal = %d, want 0", code)
	}

	release.Store(true)
	startProcess(t, e.DSN, e.CfgPath, e.Slot)
	e2e.WaitFor(t, 60*time.Second, "the abandoned deliveries to be sent again", func() bool {
		seen := map[string]bool{}
		for _, d := range e.Recv.Deliveries("/c") {
			seen[fmt.Sprint(d.Envelope(t)["id"])] = true
		}
		var ok int
		_ = e.Conn.QueryRow(t.Context(), `SELECT count(DISTINCT event_id) FROM walhook.attempts WHERE status = 'succeeded'`).Scan(&ok)
		return len(seen) == rows && ok == rows
	})
}
