// Package pgtest gives tests a real PostgreSQL: one throwaway server per
// test binary (internal/pglocal) and one fresh database per test, dropped
// when the test ends. Only test code imports it.
//
// A missing PostgreSQL fails the test with pglocal's message saying where it
// looked and how to fix it; it never skips.
package pgtest

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/internal/pglocal"
)

// dbOpTimeout bounds NewDatabase's create and cleanup's drop.
const dbOpTimeout = time.Minute

// Main runs the tests and then stops the shared server, if one was started,
// before exiting with the tests' code. Call it from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// A test that panics or times out crashes the binary from another goroutine,
// where no deferred call here can run; the server's watchdog stops it then.
func Main(m *testing.M) {
	code := 1
	func() {
		// Deferred so that a panic on this goroutine still stops the server.
		defer pglocal.StopShared()
		code = m.Run()
	}()
	os.Exit(code)
}

// SharedServer returns the server shared by all tests of this binary,
// starting it on first use. A missing PostgreSQL fails the test.
func SharedServer(tb testing.TB) *pglocal.Server {
	tb.Helper()
	srv, err := pglocal.Shared()
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return srv
}

// NewDatabase creates a fresh database on the shared server for this test,
// drops it when the test ends, and returns its DSN.
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	srv := SharedServer(tb)
	name := pglocal.DatabaseName(tb.Name(), dbSeq.Add(1))
	base := tb.Context()
	ctx, cancel := context.WithTimeout(base, dbOpTimeout)
	defer cancel()
	dsn, err := srv.CreateDatabase(ctx, name)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() {
		// tb.Context() is cancelled before cleanups run; the drop still needs
		// a live context.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(base), dbOpTimeout)
		defer cancel()
		if err := srv.DropDatabase(ctx, name); err != nil {
			tb.Errorf("%v", err)
		}
	})
	return dsn
}

// Connect opens a connection to dsn that is closed when the test ends.
func Connect(tb testing.TB, dsn string) *pgx.Conn {
	tb.Helper()
	conn, err := pgx.Connect(tb.Context(), dsn)
	if err != nil {
		tb.Fatalf("connect: %v", err)
	}
	tb.Cleanup(func() { conn.Close(context.WithoutCancel(tb.Context())) })
	return conn
}

// WaitFor polls cond every 20ms until it holds, failing the test after
// timeout with what it waited for and cond's last error. (internal/pglocal's
// tests keep a copy: importing this package there would be a cycle.)
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, lastErr)
		}
		select {
		case <-tb.Context().Done():
			tb.Fatalf("test ended while waiting for %s", what)
		case <-tick.C:
		}
	}
}

// dbSeq tells apart databases of one test that calls NewDatabase twice.
var dbSeq atomic.Uint64
