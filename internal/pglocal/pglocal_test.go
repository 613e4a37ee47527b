package pglocal

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) {
	code := m.Run()
	StopShared()
	os.Exit(code)
}

// SharedServer is the shared server for these tests; internal/pgtest has
// the same for other packages, but importing it here would be a cycle.
func SharedServer(t *testing.T) *Server {
	t.Helper()
	srv, err := Shared()
	if err != nil {
		t.Fatalf("%v", err)
	}
	return srv
}

// connect opens a connection that is closed when the test ends.
func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
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
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, lastErr)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("test ended while waiting for %s", what)
		case <-tick.C:
		}
	}
}

func queryString(t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(t.Context(), sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func exec1(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func dbExists(t *testing.T, conn *pgx.Conn, name string) bool {
	t.Helper()
	return queryString(t, conn, "SELECT count(*)::text FROM pg_database WHERE datname = $1", name) == "1"
}

// processGone reports whether pid has exited. A zombie counts as gone: in a
// container the reaper of orphaned postmasters may be slow or absent.
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

func postmasterPID(t *testing.T, dataDir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		t.Fatalf("read postmaster.pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	return pid
}

func TestSharedServerSettings(t *testing.T) {
	srv := SharedServer(t)
	conn := connect(t, srv.URL())
	tests := []struct {
		setting, want string
		localOnly     bool // an external server's other settings are its own
	}{
		{"wal_level", "logical", false},
		{"max_replication_slots", "64", true},
		{"max_wal_senders", "64", true},
		{"listen_addresses", "127.0.0.1", true},
		{"fsync", "off", true},
		{"synchronous_commit", "off", true},
		{"full_page_writes", "off", true},
		{"max_connections", "300", true},
		{"shared_buffers", "128MB", true},
		{"server_encoding", "UTF8", true},
	}
	for _, tc := range tests {
		t.Run(tc.setting, func(t *testing.T) {
			if tc.localOnly && srv.BinDir() == "" {
				t.Skip("external server")
			}
			if got := queryString(t, conn, "SHOW "+tc.setting); got != tc.want {
				t.Errorf("SHOW %s = %q, want %q", tc.setting, got, tc.want)
			}
		})
	}
	if srv.BinDir() != "" {
		if _, err := srv.ClientTool("pg_recvlogical"); err != nil {
			t.Errorf("ClientTool: %v", err)
		}
		if !strings.HasPrefix(srv.URL(), "postgres://postgres@127.0.0.1:") || !strings.HasSuffix(srv.URL(), "/postgres?sslmode=disable") {
			t.Errorf("URL() = %q, want postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable", srv.URL())
		}
	}
}

// TestServerVersion checks Version against the server and the README's
// promise of PostgreSQL 14 or later; the version matrix in .ci/run runs this
// package once per version through WALHOOK_TEST_PG_BINDIR.
func TestServerVersion(t *testing.T) {
	srv := SharedServer(t)
	conn := connect(t, srv.URL())
	got := queryString(t, conn, "SHOW server_version_num")
	if strconv.Itoa(srv.Version()) != got {
		t.Errorf("Version() = %d, want server_version_num %s", srv.Version(), got)
	}
	if srv.Version() < 140000 {
		t.Errorf("Version() = %d: walhook supports PostgreSQL 14 or later", srv.Version())
	}
	t.Logf("PostgreSQL %d from %q", srv.Version(), srv.BinDir())
}

func TestCreateDatabaseDistinctAndDroppable(t *testing.T) {
	srv := SharedServer(t)
	admin := connect(t, srv.URL())
	ctx := t.Context()
	names := []string{DatabaseName(t.Name()+"/a", 0), DatabaseName(t.Name()+"/b", 0)}
	dsns := make([]string, len(names))
	for i, name := range names {
		dsn, err := srv.CreateDatabase(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if dsn != srv.DatabaseURL(name) {
			t.Errorf("CreateDatabase returned %q, DatabaseURL says %q", dsn, srv.DatabaseURL(name))
		}
		dsns[i] = dsn
	}
	if dsns[0] == dsns[1] {
		t.Fatalf("two databases share DSN %q", dsns[0])
	}

	a, b := connect(t, dsns[0]), connect(t, dsns[1])
	for i, c := range []*pgx.Conn{a, b} {
		if got := queryString(t, c, "SELECT current_database()"); got != names[i] {
			t.Errorf("connected to %q, want %q", got, names[i])
		}
	}
	exec1(t, a, "CREATE TABLE only_in_a (id int)")
	if got := queryString(t, b, "SELECT coalesce(to_regclass('only_in_a')::text, '')"); got != "" {
		t.Errorf("table of database a visible in b as %q", got)
	}

	// Creating again replaces the database even while a session is in it.
	if _, err := srv.CreateDatabase(ctx, names[0]); err != nil {
		t.Fatalf("recreate: %v", err)
	}
	a2 := connect(t, dsns[0])
	if got := queryString(t, a2, "SELECT coalesce(to_regclass('only_in_a')::text, '')"); got != "" {
		t.Errorf("recreated database still has %q", got)
	}

	for _, name := range names {
		if err := srv.DropDatabase(ctx, name); err != nil {
			t.Fatal(err)
		}
		if dbExists(t, admin, name) {
			t.Errorf("database %q still exists after DropDatabase", name)
		}
		// IF EXISTS: dropping a missing database is fine.
		if err := srv.DropDatabase(ctx, name); err != nil {
			t.Errorf("second DropDatabase(%q): %v", name, err)
		}
	}
	if c, err := pgx.Connect(ctx, dsns[1]); err == nil {
		c.Close(ctx)
		t.Errorf("connected to dropped database %s", dsns[1])
	}

	for _, bad := range []string{"", strings.Repeat("x", 64)} {
		if _, err := srv.CreateDatabase(ctx, bad); err == nil {
			t.Errorf("CreateDatabase(%q) succeeded, want error", bad)
		}
	}
}

func TestLogicalSlotPgoutput(t *testing.T) {
	srv := SharedServer(t)
	name := DatabaseName(t.Name(), 0)
	dsn, err := srv.CreateDatabase(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.DropDatabase(context.WithoutCancel(t.Context()), name) })
	conn := connect(t, dsn)
	exec1(t, conn, "CREATE TABLE t (id int PRIMARY KEY, v text)")
	exec1(t, conn, "CREATE PUBLICATION p FOR TABLE t")
	exec1(t, conn, "SELECT pg_create_logical_replication_slot('pglocal_slot', 'pgoutput')")
	if got := queryString(t, conn, "SELECT plugin || '/' || database FROM pg_replication_slots WHERE slot_name = 'pglocal_slot'"); got != "pgoutput/"+queryString(t, conn, "SELECT current_database()") {
		t.Errorf("slot is %q, want pgoutput in this database", got)
	}
	exec1(t, conn, "INSERT INTO t VALUES (1, 'x')")
	// BEGIN, RELATION, INSERT and COMMIT. Decoding stops at the flushed WAL
	// position, and with synchronous_commit=off the commit is flushed by
	// the WAL writer up to wal_writer_delay later, hence the wait.
	waitFor(t, 10*time.Second, "pgoutput to decode the insert", func() (bool, error) {
		var n int
		err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_logical_slot_peek_binary_changes('pglocal_slot', NULL, NULL,
			'proto_version', '1', 'publication_names', 'p')`).Scan(&n)
		if err == nil && n != 0 && n != 4 {
			t.Fatalf("pgoutput produced %d messages for one insert, want 4", n)
		}
		return n == 4, err
	})
	exec1(t, conn, "SELECT pg_drop_replication_slot('pglocal_slot')")
	if got := queryString(t, conn, "SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = 'pglocal_slot'"); got != "0" {
		t.Errorf("%s slots left after drop", got)
	}
}

// pgRecvlogical finds the client through ClientTool, as the bench does: the
// npm server bundles of the version matrix have none beside the server.
func pgRecvlogical(t *testing.T, srv *Server) string {
	t.Helper()
	p, err := srv.ClientTool("pg_recvlogical")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDropDatabaseWithSlots checks that slots, idle or streaming, do not
// block DropDatabase.
func TestDropDatabaseWithSlots(t *testing.T) {
	srv := SharedServer(t)
	admin := connect(t, srv.URL())
	for _, active := range []bool{false, true} {
		t.Run(fmt.Sprintf("active=%v", active), func(t *testing.T) {
			name := DatabaseName(t.Name(), 0)
			dsn, err := srv.CreateDatabase(t.Context(), name)
			if err != nil {
				t.Fatal(err)
			}
			conn := connect(t, dsn)
			exec1(t, conn, "CREATE PUBLICATION p FOR ALL TABLES")
			exec1(t, conn, "SELECT pg_create_logical_replication_slot('held', 'pgoutput')")
			conn.Close(t.Context())

			var recv *exec.Cmd
			if active {
				// --no-loop: once terminated it exits instead of reconnecting.
				recv = exec.Command(pgRecvlogical(t, srv), "-d", dsn, "--slot", "held", "--start", "--no-loop",
					"-o", "proto_version=1", "-o", "publication_names=p", "-f", os.DevNull)
				var stderr bytes.Buffer
				recv.Stderr = &stderr
				if err := recv.Start(); err != nil {
					t.Fatal(err)
				}
				done := make(chan struct{}) // closed when pg_recvlogical exits
				go func() { recv.Wait(); close(done) }()
				t.Cleanup(func() {
					recv.Process.Kill()
					<-done
				})
				waitFor(t, 30*time.Second, "pg_recvlogical to hold the slot", func() (bool, error) {
					var n int
					err := admin.QueryRow(t.Context(), "SELECT count(*) FROM pg_replication_slots WHERE database = $1 AND active", name).Scan(&n)
					return n == 1, err
				})
				defer func() {
					select {
					case <-done:
					case <-time.After(30 * time.Second):
						t.Errorf("pg_recvlogical still running after its database was dropped")
					}
				}()
			}

			if err := srv.DropDatabase(t.Context(), name); err != nil {
				t.Fatal(err)
			}
			if dbExists(t, admin, name) {
				t.Errorf("database %q still exists", name)
			}
			if n := queryString(t, admin, "SELECT count(*)::text FROM pg_replication_slots WHERE database = $1", name); n != "0" {
				t.Errorf("%s slots of %q left", n, name)
			}
		})
	}
}

func TestDatabaseName(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z0-9_]{0,50}_[0-9a-f]{8}$`)
	long := strings.Repeat("TestVeryLong/", 20)
	tests := []struct {
		test       string
		seq        uint64
		wantPrefix string
	}{
		{"TestFoo", 1, "testfoo_"},
		{"TestFoo/sub case#1", 1, "testfoo_sub_case_1_"},
		{"TestÜber/ä", 1, "test_ber__"},
		{long + "a", 1, "testverylong_testverylong_testverylong_testverylon_"},
		{"", 1, "_"},
	}
	seen := map[string]string{}
	for _, tc := range tests {
		got := DatabaseName(tc.test, tc.seq)
		if !valid.MatchString(got) || !strings.HasPrefix(got, tc.wantPrefix) {
			t.Errorf("DatabaseName(%q) = %q, want %s<8 hex digits> within [a-z0-9_]", tc.test, got, tc.wantPrefix)
		}
		if prev, dup := seen[got]; dup {
			t.Errorf("DatabaseName(%q) = DatabaseName(%q) = %q", tc.test, prev, got)
		}
		seen[got] = tc.test
	}
	// Names that only differ past the cut, or only in seq, stay distinct.
	pairs := [][2]string{
		{DatabaseName(long+"a", 1), DatabaseName(long+"b", 1)},
		{DatabaseName("TestFoo", 1), DatabaseName("TestFoo", 2)},
	}
	for _, p := range pairs {
		if p[0] == p[1] {
			t.Errorf("collision: %q", p[0])
		}
	}
}

func TestRestart(t *testing.T) {
	t.Setenv(EnvDatabaseURL, "") // this test needs a server of its own
	begin := time.Now()
	srv, err := Start(t.Context(), Options{
		Logf: t.Logf,
		// A row committed before an immediate restart must survive it.
		ExtraConf: map[string]string{"synchronous_commit": "on", "work_mem": "7MB"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Start took %s", time.Since(begin).Round(time.Millisecond))
	t.Cleanup(func() { srv.Stop() })
	url := srv.URL()
	firstPID := postmasterPID(t, srv.dataDir)

	conn := connect(t, url)
	if got := queryString(t, conn, "SHOW work_mem"); got != "7MB" {
		t.Errorf("ExtraConf work_mem: SHOW = %q", got)
	}
	exec1(t, conn, "CREATE TABLE crash (n int)")
	exec1(t, conn, "SELECT pg_create_logical_replication_slot('survivor', 'pgoutput')")
	conn.Close(t.Context())

	for i, mode := range []string{"fast", "immediate", "immediate"} {
		t.Run(mode, func(t *testing.T) {
			c := connect(t, url)
			exec1(t, c, "INSERT INTO crash VALUES ($1)", i)
			if err := srv.Restart(t.Context(), mode); err != nil {
				t.Fatal(err)
			}
			if srv.URL() != url {
				t.Errorf("URL changed across restart: %q -> %q", url, srv.URL())
			}
			if _, err := c.Exec(t.Context(), "SELECT 1"); err == nil {
				t.Errorf("connection from before the restart still works")
			}
			var c2 *pgx.Conn
			waitFor(t, 30*time.Second, "reconnect after restart", func() (bool, error) {
				var err error
				c2, err = pgx.Connect(t.Context(), url)
				return err == nil, err
			})
			defer c2.Close(context.Background())
			var rows, slots int
			if err := c2.QueryRow(t.Context(), "SELECT (SELECT count(*) FROM crash), (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'survivor')").Scan(&rows, &slots); err != nil {
				t.Fatal(err)
			}
			if rows != i+1 || slots != 1 {
				t.Errorf("after restart -m %s: %d rows (want %d), %d slots (want 1)", mode, rows, i+1, slots)
			}
		})
	}

	if err := srv.Restart(t.Context(), "smart"); err == nil {
		t.Errorf("Restart(\"smart\") succeeded, want error")
	}

	waitFor(t, 10*time.Second, "the first postmaster to exit", func() (bool, error) { return processGone(firstPID), nil })
	pid := postmasterPID(t, srv.dataDir) // restarts start a new postmaster
	for i := range 2 {                   // Stop is idempotent
		if err := srv.Stop(); err != nil {
			t.Fatalf("Stop #%d: %v", i+1, err)
		}
	}
	if _, err := os.Stat(srv.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory %s left behind (stat: %v)", srv.dir, err)
	}
	waitFor(t, 10*time.Second, "postmaster to exit", func() (bool, error) { return processGone(pid), nil })
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", srv.port), time.Second); err == nil {
		c.Close()
		t.Errorf("port %d still accepts connections after Stop", srv.port)
	}
	if err := srv.Restart(t.Context(), "fast"); err == nil {
		t.Errorf("Restart after Stop succeeded, want error")
	}
}

func TestExternalServer(t *testing.T) {
	srv := SharedServer(t)
	admin := connect(t, srv.URL())
	if srv.BinDir() == "" {
		t.Skip("the shared server is external already; this test points the variable at a local one")
	}
	kv := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", srv.port)
	for _, tc := range []struct{ form, dsn string }{{"url", srv.URL()}, {"keyword/value", kv}} {
		t.Run(tc.form, func(t *testing.T) {
			t.Setenv(EnvDatabaseURL, tc.dsn)
			ext, err := Start(t.Context(), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if ext.BinDir() != "" || ext.URL() != tc.dsn {
				t.Errorf("external: BinDir %q, URL %q; want \"\" and %q", ext.BinDir(), ext.URL(), tc.dsn)
			}
			if err := ext.Restart(t.Context(), "fast"); err == nil {
				t.Errorf("Restart of an external server succeeded, want error")
			}
			name := DatabaseName(t.Name(), 0)
			dsn, err := ext.CreateDatabase(t.Context(), name)
			if err != nil {
				t.Fatal(err)
			}
			c := connect(t, dsn)
			if got := queryString(t, c, "SELECT current_database()"); got != name {
				t.Errorf("DatabaseURL(%q) = %q connects to %q", name, dsn, got)
			}
			c.Close(t.Context())
			if err := ext.DropDatabase(t.Context(), name); err != nil {
				t.Fatal(err)
			}
			if err := ext.Stop(); err != nil {
				t.Fatal(err)
			}
			// Stop must not have touched the server it did not start.
			if err := admin.Ping(t.Context()); err != nil {
				t.Fatalf("external Stop stopped the server: %v", err)
			}
		})
	}

	t.Run("wal_level=replica", func(t *testing.T) {
		t.Setenv(EnvDatabaseURL, "")
		replica, err := Start(t.Context(), Options{ExtraConf: map[string]string{"wal_level": "replica"}})
		if err != nil {
			t.Fatal(err)
		}
		defer replica.Stop()
		t.Setenv(EnvDatabaseURL, replica.URL())
		if _, err := Start(t.Context(), Options{}); err == nil || !strings.Contains(err.Error(), "wal_level=replica") {
			t.Errorf("Start on a wal_level=replica server: err = %v, want one naming wal_level", err)
		}
	})
}

func TestStartRejectsBadExtraConf(t *testing.T) {
	t.Setenv(EnvDatabaseURL, "")
	for _, conf := range []map[string]string{
		{"port": "5432"},
		{"Listen_Addresses": "*"},
		{"bad key": "1"},
		{"work_mem": "1MB\nfsync = on"},
	} {
		if srv, err := Start(t.Context(), Options{ExtraConf: conf}); err == nil {
			srv.Stop()
			t.Errorf("Start with ExtraConf %q succeeded, want error", conf)
		}
	}
}

// TestStartFailureShowsLog checks that a server that will not start is
// explained by its own log in the error, and leaves nothing behind.
func TestStartFailureShowsLog(t *testing.T) {
	t.Setenv(EnvDatabaseURL, "")
	srv, err := Start(t.Context(), Options{ExtraConf: map[string]string{"max_connections": "lots"}})
	if err == nil {
		srv.Stop()
		t.Fatal("Start with max_connections=lots succeeded, want error")
	}
	// The server's own complaint names the setting and the bad value.
	if !strings.Contains(err.Error(), "server log") || !strings.Contains(err.Error(), `"max_connections"`) {
		t.Errorf("error lacks the server log's explanation:\n%v", err)
	}
	m := regexp.MustCompile(`server log (\S+), last lines`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("error names no log file:\n%v", err)
	}
	if _, serr := os.Stat(filepath.Dir(m[1])); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("failed Start left %s behind (stat: %v)", filepath.Dir(m[1]), serr)
	}
}

// stubBinDir makes dir holding executables named like the server binaries;
// findBinDir only looks at them.
func stubBinDir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFindBinDir(t *testing.T) {
	root := t.TempDir()
	glob := filepath.Join(root, "lib", "*", "bin")
	for _, v := range []string{"9.6", "10", "15"} {
		stubBinDir(t, filepath.Join(root, "lib", v, "bin"))
	}
	// "17" lacks postgres and must be passed over.
	stubBinDir(t, filepath.Join(root, "lib", "17", "bin"))
	os.Remove(filepath.Join(root, "lib", "17", "bin", "postgres"))
	// A PATH entry with a symlink, as /usr/local/bin -> /usr/lib/postgresql.
	linkDir := filepath.Join(root, "links")
	os.Mkdir(linkDir, 0o755)
	if err := os.Symlink(filepath.Join(root, "lib", "10", "bin", "initdb"), filepath.Join(linkDir, "initdb")); err != nil {
		t.Fatal(err)
	}
	emptyDir := t.TempDir()

	tests := []struct {
		name, path, glob string
		want             string // "" = not found
	}{
		{"symlink in PATH resolves to its real dir", linkDir, glob, filepath.Join(root, "lib", "10", "bin")},
		{"glob picks highest complete version", emptyDir, glob, filepath.Join(root, "lib", "15", "bin")},
		{"nothing anywhere", emptyDir, filepath.Join(emptyDir, "*", "bin"), ""},
	}
	t.Run("EnvBinDir wins over PATH and glob", func(t *testing.T) {
		t.Setenv("PATH", linkDir)
		want := filepath.Join(root, "lib", "9.6", "bin")
		got, err := findBinDir(t.Context(), search{binDir: want, lookPath: exec.LookPath, pgConfig: "pg_config", glob: glob})
		if err != nil || got != want {
			t.Errorf("findBinDir = %q, %v; want %q", got, err, want)
		}
	})
	t.Run("EnvBinDir without postgres fails, no fallback", func(t *testing.T) {
		t.Setenv("PATH", linkDir)
		bad := filepath.Join(root, "lib", "17", "bin")
		got, err := findBinDir(t.Context(), search{binDir: bad, lookPath: exec.LookPath, pgConfig: "pg_config", glob: glob})
		if err == nil {
			t.Fatalf("findBinDir = %q, want an error naming %s", got, EnvBinDir)
		}
		for _, want := range []string{EnvBinDir, bad, "postgres"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q:\n%v", want, err)
			}
		}
	})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PATH", tc.path)
			got, err := findBinDir(t.Context(), search{lookPath: exec.LookPath, pgConfig: "pg_config", glob: tc.glob})
			if tc.want != "" {
				if err != nil || got != tc.want {
					t.Errorf("findBinDir = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("err = %v, want ErrNotFound", err)
			}
			// The message must say where it looked and how to fix it.
			for _, want := range []string{"$PATH (" + tc.path + ")", "pg_config --bindir", tc.glob, "apt-get install -y postgresql", EnvDatabaseURL} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q:\n%v", want, err)
				}
			}
		})
	}
}

func TestServerCredential(t *testing.T) {
	if cred, err := serverCredential(1000, "postgres"); cred != nil || err != nil {
		t.Errorf("non-root: got %v, %v; want to run as ourselves", cred, err)
	}
	_, err := serverCredential(0, "walhook-no-such-user")
	if err == nil || !strings.Contains(err.Error(), `"walhook-no-such-user"`) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("root without the user: err = %v, want one naming the missing user", err)
	}
	if u, lerr := user.Lookup("postgres"); lerr == nil {
		cred, err := serverCredential(0, "postgres")
		if err != nil || strconv.Itoa(int(cred.Uid)) != u.Uid || strconv.Itoa(int(cred.Gid)) != u.Gid {
			t.Errorf("root: got %+v, %v; want uid %s gid %s", cred, err, u.Uid, u.Gid)
		}
	}
}

func TestWithDatabase(t *testing.T) {
	tests := []struct{ dsn, db, want string }{
		{"postgres://u:pw@h:5/postgres?sslmode=disable", "x", "postgres://u:pw@h:5/x?sslmode=disable"},
		{"postgresql://h/", "a b", "postgresql://h/a%20b"},
		{"host=h dbname=postgres sslmode=disable", "x", "host=h dbname='x' sslmode=disable"},
		{"dbname = 'my db' host=h", "x", "dbname='x' host=h"},
		{"host=h", "it's", `host=h dbname='it\'s'`},
	}
	for _, tc := range tests {
		if got := withDatabase(tc.dsn, tc.db); got != tc.want {
			t.Errorf("withDatabase(%q, %q) = %q, want %q", tc.dsn, tc.db, got, tc.want)
		}
	}
}

// TestWatchdog kills a process that started a server without stopping it
// and checks that the server and its directory go away anyway.
func TestWatchdog(t *testing.T) {
	if os.Getenv("PGLOCAL_WATCHDOG_HELPER") == "1" {
		t.Skip("helper process")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestWatchdogHelper$")
	cmd.Env = append(os.Environ(), "PGLOCAL_WATCHDOG_HELPER=1", EnvDatabaseURL+"=")
	out, err := cmd.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper: want death by SIGKILL, got %v\n%s", err, out)
	}
	var dir string
	var pid int
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		fmt.Sscanf(sc.Text(), "WATCHDOG dir=%s pid=%d", &dir, &pid)
	}
	if dir == "" || pid == 0 {
		t.Fatalf("helper printed no dir and pid:\n%s", out)
	}
	waitFor(t, 30*time.Second, "the watchdog to stop the orphaned server", func() (bool, error) {
		_, err := os.Stat(dir)
		return processGone(pid) && errors.Is(err, os.ErrNotExist), err
	})
}

func TestWatchdogHelper(t *testing.T) {
	if os.Getenv("PGLOCAL_WATCHDOG_HELPER") != "1" {
		t.Skip("run by TestWatchdog")
	}
	srv, err := Start(t.Context(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("WATCHDOG dir=%s pid=%d\n", srv.dir, postmasterPID(t, srv.dataDir))
	os.Stdout.Sync()
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL cannot be caught; never reached
}

// BenchmarkStart measures a full Start and Stop of a local server.
func BenchmarkStart(b *testing.B) {
	b.Setenv(EnvDatabaseURL, "")
	for b.Loop() {
		srv, err := Start(b.Context(), Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := srv.Stop(); err != nil {
			b.Fatal(err)
		}
	}
}

func TestTempBase(t *testing.T) {
	private := t.TempDir() // 0700: the server user could not enter it
	long := filepath.Join(private, strings.Repeat("x", maxBaseLen))
	if err := os.Mkdir(long, 0o755); err != nil {
		t.Fatal(err)
	}
	unset := "/tmp"
	if freeBytes(shmDir) >= minShmFree {
		unset = shmDir
	}
	tests := []struct {
		tmpdir    string
		otherUser bool
		want      string
	}{
		{"", false, unset},
		{private, false, private},
		{private, true, "/tmp"},
		{long, false, "/tmp"}, // socket path would be too long
	}
	for _, tc := range tests {
		t.Setenv("TMPDIR", tc.tmpdir)
		if got := tempBase(tc.otherUser); got != tc.want {
			t.Errorf("TMPDIR=%q otherUser=%v: tempBase = %q, want %q", tc.tmpdir, tc.otherUser, got, tc.want)
		}
	}
}
