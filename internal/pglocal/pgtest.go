package pglocal

// Helpers for the tests of other packages. This is a normal file, not a
// _test file, so that those tests can import it.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// sharedStartTimeout bounds the one start of the shared server; initdb and
// startup take about a second, so this only catches a hung machine.
const sharedStartTimeout = 2 * time.Minute

// dbOpTimeout bounds NewDatabase's create and cleanup's drop.
const dbOpTimeout = time.Minute

var shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Main runs the tests and then stops the shared server, if one was started,
// before exiting with the tests' code. Call it from TestMain:
//
//	func TestMain(m *testing.M) { pglocal.Main(m) }
//
// A test that panics or times out crashes the binary from another goroutine,
// where no deferred call here can run; the server's watchdog stops it then.
func Main(m *testing.M) {
	code := 1
	func() {
		// Deferred so that a panic on this goroutine still stops the server.
		defer stopShared()
		code = m.Run()
	}()
	os.Exit(code)
}

func stopShared() {
	// Once.Do here waits for a start in progress and, if none ever began,
	// marks the server as never to be started.
	shared.once.Do(func() { shared.err = fmt.Errorf("pglocal: shared server used after Main stopped it") })
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
}

// SharedServer returns the server shared by all tests of this binary,
// starting it on first use. A missing PostgreSQL fails the test.
func SharedServer(tb testing.TB) *Server {
	tb.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), sharedStartTimeout)
		defer cancel()
		shared.srv, shared.err = Start(ctx, Options{})
	})
	if shared.err != nil {
		tb.Fatalf("%v", shared.err)
	}
	return shared.srv
}

// NewDatabase creates a fresh database on the shared server for this test,
// drops it when the test ends, and returns its DSN.
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	srv := SharedServer(tb)
	name := databaseName(tb.Name(), dbSeq.Add(1))
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

// dbSeq tells apart databases of one test that calls NewDatabase twice.
var dbSeq atomic.Uint64

// maxNamePrefix leaves room for "_" and 8 hex digits within 63 bytes.
const maxNamePrefix = 50

// processNonce tells apart test binaries that share an external server:
// two packages may both have a TestFoo, and without it each would drop the
// other's database.
var processNonce = sync.OnceValue(func() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
})

// databaseName maps a test name to a database name: lower case, characters
// outside [a-z0-9_] replaced by _, cut to 50 bytes, plus a hash of the full
// name, the process and seq, so names stay readable in psql and unique.
func databaseName(testName string, seq uint64) string {
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		if b.Len() == maxNamePrefix {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	h := fnv.New32a()
	fmt.Fprintf(h, "%s\x00%s\x00%d", testName, processNonce(), seq)
	return fmt.Sprintf("%s_%08x", b.String(), h.Sum32())
}
