package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/internal/demo"
	"github.com/walhook/walhook/internal/e2e"
	"github.com/walhook/walhook/internal/pglocal"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// walhookBinary builds the walhook command once per test run, for tests that
// must kill it with SIGKILL.
func walhookBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "walhook-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "walhook")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// process is a walhook run in a child process.
type process struct {
	cmd *exec.Cmd
	out *os.File
}

func startProcess(t *testing.T, dsn, cfgPath, slot string, extra ...string) *process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), fmt.Sprintf("walhook-%d.log", time.Now().UnixNano()))
	out, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"run", "--database-url", dsn, "--config", cfgPath, "--slot", slot,
		"--allow-http", "--allow-private-targets", "--listen", "", "--standby-interval", "200ms"}, extra...)
	cmd := exec.Command(walhookBinary(t), args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), "LOG_LEVEL=info")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, out: out}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
		out.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("walhook log %s:\n%s", logPath, b)
		}
	})
	return p
}

func (p *process) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
}

// TestCrashLosesNothing kills walhook with SIGKILL twice and restarts
// PostgreSQL with -m immediate while a writer commits rows; every row's event
// must reach the receiver in the end. Duplicates are allowed (at least once)
// and reported.
func TestCrashLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test: not in -short")
	}
	ctx := context.Background()
	// Its own server: restarting the shared one would disturb other tests.
	// synchronous_commit=on so that a commit the writer saw survives the
	// immediate restart.
	srv, err := pglocal.Start(ctx, pglocal.Options{ExtraConf: map[string]string{"synchronous_commit": "on"}})
	if err != nil {
		t.Fatalf("start PostgreSQL: %v", err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	dsn, err := srv.CreateDatabase(ctx, "crash")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, demo.Schema); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(t.TempDir(), "walhook.yaml")
	if err := os.WriteFile(cfgPath, demo.Config, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := loadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := walhook.Install(ctx, conn, cfg, walhook.InstallOptions{Slot: "crash", AllowHTTP: true}); err != nil {
		t.Fatal(err)
	}
	recv := e2e.NewReceiver(t)
	if _, err := conn.Exec(ctx, `SELECT walhook.subscribe('customer.created', $1, '1')`, recv.URL+"/c"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	const txs, perTx = 300, 10
	rows := txs * perTx
	proc := startProcess(t, dsn, cfgPath, "crash")

	// The writer commits rows in small transactions, riding out the
	// restarts: a transaction that fails is retried with the same ids, so a
	// row either committed once or not at all.
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	write := func(from, to int) {
		for i := from; i < to; i++ {
			for {
				_, err := pool.Exec(ctx, `INSERT INTO public.customers (id, tenant_id, name)
					SELECT g, 7, 'row ' || g FROM generate_series($1::int, $2::int) g ON CONFLICT (id) DO NOTHING`,
					i*perTx+1, (i+1)*perTx)
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond) // the server is restarting: try again shortly
			}
		}
	}
	kills := 0
	write(0, txs/3)
	recv.Wait(t, "/c", 1)
	proc.kill(t)
	kills++
	write(txs/3, txs/2)
	proc = startProcess(t, dsn, cfgPath, "crash")
	if err := srv.Restart(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	write(txs/2, 2*txs/3)
	e2e.WaitFor(t, 60*time.Second, "deliveries to resume after the PostgreSQL restart", func() bool {
		return len(recv.Deliveries("/c")) >= rows/3
	})
	proc.kill(t)
	kills++
	write(2*txs/3, txs)
	proc = startProcess(t, dsn, cfgPath, "crash")

	e2e.WaitFor(t, 120*time.Second, fmt.Sprintf("all %d rows delivered", rows), func() bool {
		seen := map[float64]bool{}
		for _, d := range recv.Deliveries("/c") {
			env := d.Envelope(t)
			seen[env["data"].(map[string]any)["id"].(float64)] = true
		}
		return len(seen) == rows
	})
	ids := map[string]int{}
	for _, d := range recv.Deliveries("/c") {
		ids[d.Header.Get("webhook-id")]++
	}
	dups := len(recv.Deliveries("/c")) - len(ids)
	if len(ids) != rows {
		t.Fatalf("distinct event ids = %d, want %d", len(ids), rows)
	}
	t.Logf("crash test: rows=%d kills=%d postgres_restarts=1 lost=0 duplicates=%d", rows, kills, dups)
	proc.kill(t)
}

// TestStandbyTakesOver runs two walhook processes on one database: one
// leads, the other stands by and takes over when the leader is killed with
// SIGKILL, losing nothing.
func TestStandbyTakesOver(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Subscribe("customer.created", "/c")
	leader := startProcess(t, e.DSN, e.CfgPath, e.Slot)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'first')`)
	e.Recv.Wait(t, "/c", 1)
	standby := startProcess(t, e.DSN, e.CfgPath, e.Slot)
	e2e.WaitFor(t, 30*time.Second, "the second process to stand by", func() bool {
		b, _ := os.ReadFile(standby.out.Name())
		return bytesContains(b, "standing by")
	})
	leader.kill(t)
	for i := 2; i <= 20; i++ {
		e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES ($1, 7, 'after the leader died')`, i)
	}
	want := make([]float64, 20)
	for i := range want {
		want[i] = float64(i + 1)
	}
	// Row 1 may come twice (the killed leader may not have acknowledged
	// it): what matters is that every row arrives.
	if got := e.Recv.WaitRows(t, "/c", want...); len(got) != 20 {
		t.Fatalf("distinct rows delivered = %v, want 1..20", got)
	}
	b, _ := os.ReadFile(standby.out.Name())
	if !bytesContains(b, "msg=leading") {
		t.Fatalf("standby never took the lead; its log:\n%s", b)
	}
}

func bytesContains(b []byte, s string) bool { return strings.Contains(string(b), s) }

// TestPendingRetrySurvivesKill: a delivery that failed and waits in the
// queue is delivered by the next process after walhook is killed with
// SIGKILL.
func TestPendingRetrySurvivesKill(t *testing.T) {
	t.Parallel()
	cfg := strings.Replace(string(demo.Config), "retry: [0s, 5s, 5m, 30m, 2h, 5h, 10h, 10h]", "retry: [0s, 3s, 1s]", 1)
	if cfg == string(demo.Config) {
		t.Fatal("demo config has no retry line to replace")
	}
	e := newEnv(t, cfg)
	var up atomic.Bool
	e.Recv.DownUntil(&up)
	e.Subscribe("customer.created", "/c")
	proc := startProcess(t, e.DSN, e.CfgPath, e.Slot)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'retried across a kill')`)
	e2e.WaitFor(t, 30*time.Second, "the failed first attempt to be queued", func() bool {
		var n int
		err := e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.deliveries`).Scan(&n)
		return err == nil && n == 1
	})
	proc.kill(t)
	up.Store(true)
	startProcess(t, e.DSN, e.CfgPath, e.Slot)
	e2e.WaitFor(t, 60*time.Second, "the retry to succeed", func() bool {
		var n int
		err := e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.attempts WHERE status = 'succeeded'`).Scan(&n)
		return err == nil && n == 1
	})
	ids := map[string]bool{}
	for _, d := range e.Recv.Deliveries("/c") {
		ids[d.Header.Get("webhook-id")] = true
	}
	if len(ids) != 1 {
		t.Fatalf("deliveries carried %d event ids, want 1 (the retry keeps the id)", len(ids))
	}
}
