package pglocal

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"os"
	"strings"
	"sync"
	"time"
)

// sharedStartTimeout bounds the one start of the shared server; initdb and
// startup take about a second, so this only catches a hung machine.
const sharedStartTimeout = 2 * time.Minute

var shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Shared returns the server shared by every caller in this process,
// starting it on first use. Tests reach it through internal/pgtest.
func Shared() (*Server, error) {
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), sharedStartTimeout)
		defer cancel()
		shared.srv, shared.err = Start(ctx, Options{})
	})
	return shared.srv, shared.err
}

// StopShared stops the shared server, if one was started; later calls to
// Shared fail.
func StopShared() {
	// Once.Do here waits for a start in progress and, if none ever began,
	// marks the server as never to be started.
	shared.once.Do(func() { shared.err = fmt.Errorf("pglocal: shared server used after it was stopped") })
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
}

// maxNamePrefix leaves room for "_" and 8 hex digits within 63 bytes.
const maxNamePrefix = 50

// processNonce tells apart processes that share an external server: two
// test binaries may both have a TestFoo, and without it each would drop the
// other's database.
var processNonce = sync.OnceValue(func() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
})

// DatabaseName maps a test name to a database name: lower case, characters
// outside [a-z0-9_] replaced by _, cut to 50 bytes, plus a hash of the full
// name, the process and seq, so names stay readable in psql and unique.
func DatabaseName(testName string, seq uint64) string {
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
