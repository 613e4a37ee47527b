package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sourcegraph/conc"
	"github.com/sourcegraph/conc/pool"

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/pglocal"
	"github.com/walhook/walhook/mapping"
)

// The bench's goals, from the performance issue.
const (
	goalCatchUpShare = 0.5                   // of min(stream limit, HTTP limit)
	goalP99          = 50 * time.Millisecond // at 1,000 changes/s
	goalPeakRSS      = 256 << 20             // delivering a 1,000,000-row transaction
)

// benchTable is the table the bench writes. It is not called "bench" so that
// a run against an existing database (--database-url) cannot collide with an
// application's table.
const benchTable = "public.walhook_bench"

const benchOwner = "walhook-bench"

const benchConfig = `# Written by walhook bench.
tables:
  - table: public.walhook_bench
    noun: bench
    acl: "true"
`

type Options struct {
	DatabaseURL  string
	Rows         int
	TxSize       int
	Subs         int
	Rate         int
	Duration     time.Duration
	JSON         bool
	RSSRows      int
	HTTPRequests int
	CPUProfile   string
	MemProfile   string
	Timeout      time.Duration
}

// Run runs the bench with o against o.DatabaseURL, or a throwaway local
// PostgreSQL when it is empty, reporting progress to progress.
func Run(ctx context.Context, o Options, log *slog.Logger, progress io.Writer) (*Result, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	b, err := newBench(ctx, o, log, progress)
	if err != nil {
		return nil, err
	}
	defer b.close()
	if o.RSSRows > 0 {
		return b.runRSS(ctx)
	}
	return b.runFull(ctx)
}

// Validate names the first option out of range.
func (o *Options) Validate() error {
	switch {
	case o.Rows < 1:
		return errors.New("--rows: want at least 1")
	case o.TxSize < 1:
		return errors.New("--tx-size: want at least 1")
	case o.Subs < 1 || o.Subs > 1000:
		return errors.New("--subscriptions: want 1 to 1000")
	case o.Rate < 1:
		return errors.New("--rate: want at least 1")
	case o.Duration < 0:
		return errors.New("--duration: want zero (skip the latency phase) or more")
	case o.RSSRows < 0:
		return errors.New("--rss-rows: want 0 (off) or more")
	case o.HTTPRequests < 0:
		return errors.New("--http-requests: want 0 (default) or more")
	case o.Timeout <= 0:
		return errors.New("--phase-timeout: want more than zero")
	}
	return nil
}

// Result is what one run measured. Rates are per second of wall time.
type Result struct {
	Machine       benchMachine    `json:"machine"`
	Rows          int             `json:"rows,omitempty"`
	TxSize        int             `json:"tx_size,omitempty"`
	Subscriptions int             `json:"subscriptions"`
	Backlog       *backlogResult  `json:"backlog,omitempty"`
	Stream        *streamResult   `json:"stream_limit,omitempty"`
	CatchUp       *deliveryResult `json:"catch_up,omitempty"`
	HTTP          []httpResult    `json:"http_limit,omitempty"`
	Latency       *latencyResult  `json:"latency,omitempty"`
	SingleTx      *deliveryResult `json:"single_tx,omitempty"`
	Goals         []benchGoal     `json:"goals"`
	Notes         []string        `json:"notes,omitempty"`
}

type benchMachine struct {
	CPUs       int               `json:"cpus"`
	GoVersion  string            `json:"go_version"`
	PostgreSQL string            `json:"postgresql"`
	Settings   map[string]string `json:"settings"`
}

type backlogResult struct {
	Rows         int     `json:"rows"`
	Transactions int     `json:"transactions"`
	Seconds      float64 `json:"seconds"`
	RowsPerSec   float64 `json:"rows_per_sec"`
	WALBytes     uint64  `json:"wal_bytes"`
}

type streamResult struct {
	Seconds    float64 `json:"seconds"`
	RowsPerSec float64 `json:"rows_per_sec"`
	MBPerSec   float64 `json:"wal_mb_per_sec"`
	// PostgresCPUPerRow is the server's CPU per row decoded and sent (the
	// WAL sender, mostly); 0 when it cannot be read.
	PostgresCPUPerRow float64 `json:"postgres_cpu_us_per_row,omitempty"`
}

type deliveryResult struct {
	Deliveries     int     `json:"deliveries"`
	Seconds        float64 `json:"seconds"`
	PerSec         float64 `json:"deliveries_per_sec"`
	AckSeconds     float64 `json:"acknowledged_seconds"`
	FirstSeconds   float64 `json:"first_delivery_seconds"`
	PeakRSSMiB     float64 `json:"peak_rss_mib"`
	CPUPerDelivery float64 `json:"cpu_us_per_delivery"`
	// PostgresCPUPerDelivery is the server's CPU (every backend, WAL sender
	// and background process) per delivery; 0 when it cannot be read (a
	// server on another machine).
	PostgresCPUPerDelivery float64 `json:"postgres_cpu_us_per_delivery,omitempty"`
	GoHeapPeakMiB          float64 `json:"go_heap_peak_mib"`
}

type httpResult struct {
	Clients   int     `json:"clients"`
	Requests  int     `json:"requests"`
	BodyBytes int     `json:"body_bytes"`
	Seconds   float64 `json:"seconds"`
	PerSec    float64 `json:"requests_per_sec"`
}

type latencyResult struct {
	Rate         int     `json:"rate"`
	Seconds      float64 `json:"seconds"`
	Committed    int     `json:"committed"`
	AchievedRate float64 `json:"achieved_rate"`
	Delivered    int     `json:"delivered"`
	P50ms        float64 `json:"p50_ms"`
	P95ms        float64 `json:"p95_ms"`
	P99ms        float64 `json:"p99_ms"`
	Maxms        float64 `json:"max_ms"`
}

type benchGoal struct {
	Goal string `json:"goal"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Met  bool   `json:"met"`
}

// bench is one run's database, receiver and walhook.
type bench struct {
	o        Options
	log      *slog.Logger
	progress io.Writer

	srv      *pglocal.Server // nil with --database-url
	dsn      string
	external bool
	conn     *pgx.Conn
	slot     string
	rawSlot  string
	pub      string
	cfg      *mapping.Config
	recv     *benchReceiver
	hs       *http.Server
	hsWG     conc.WaitGroup
	base     string
	dataDir  string // the server's data directory when readable here, for its CPU time
	nextID   int64
	pgVer    string
	settings map[string]string
}

func (b *bench) say(format string, args ...any) {
	fmt.Fprintf(b.progress, format+"\n", args...)
}

func newBench(ctx context.Context, o Options, log *slog.Logger, progress io.Writer) (_ *bench, err error) {
	b := &bench{o: o, log: log, progress: progress, pub: "walhook_bench", nextID: 1}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	suffix := strconv.FormatUint(uint64(time.Now().UnixNano())&0xffffff, 16)
	b.slot, b.rawSlot = "walhook_bench_"+suffix, "walhook_bench_raw_"+suffix
	if o.DatabaseURL != "" {
		b.dsn, b.external = o.DatabaseURL, true
	} else {
		b.say("starting a throwaway PostgreSQL ...")
		// wal_writer_delay: with synchronous_commit off (pglocal's default) a
		// commit reaches logical decoding only when the WAL writer flushes it.
		b.srv, err = pglocal.Start(ctx, pglocal.Options{ExtraConf: map[string]string{"wal_writer_delay": "10ms"}})
		if err != nil {
			return nil, err
		}
		if b.dsn, err = b.srv.CreateDatabase(ctx, "walhook_bench"); err != nil {
			return nil, err
		}
	}
	if b.conn, err = pgx.Connect(ctx, b.dsn); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if err := b.conn.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&b.pgVer); err != nil {
		return nil, fmt.Errorf("read server version: %w", err)
	}
	b.settings = map[string]string{}
	for _, name := range []string{"synchronous_commit", "fsync", "wal_writer_delay", "shared_buffers", "logical_decoding_work_mem"} {
		var v string
		if err := b.conn.QueryRow(ctx, `SELECT current_setting($1)`, name).Scan(&v); err == nil {
			b.settings[name] = v
		}
	}
	var dd string
	if err := b.conn.QueryRow(ctx, `SHOW data_directory`).Scan(&dd); err == nil {
		if _, err := postgresCPU(dd); err == nil {
			b.dataDir = dd
		}
	}
	if _, err := b.conn.Exec(ctx, `CREATE TABLE `+benchTable+` (
		id bigint PRIMARY KEY, tenant int NOT NULL, payload text NOT NULL, amount numeric(12, 2) NOT NULL, at timestamptz NOT NULL)`); err != nil {
		return nil, fmt.Errorf("create %s: %w", benchTable, err)
	}

	dir, err := os.MkdirTemp("", "walhook-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "walhook.yaml")
	if err := os.WriteFile(path, []byte(benchConfig), 0o600); err != nil {
		return nil, err
	}
	if b.cfg, err = mapping.Load(path); err != nil {
		return nil, err
	}
	if _, err := walhook.Install(ctx, b.conn, b.cfg, walhook.InstallOptions{Slot: b.slot, Publication: b.pub, AllowHTTP: true}); err != nil {
		return nil, err
	}

	b.recv = &benchReceiver{}
	b.recv.target.Store(math.MaxInt64)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the receiver: %w", err)
	}
	b.hs = &http.Server{Handler: b.recv, ReadHeaderTimeout: 5 * time.Second}
	b.hsWG.Go(func() { _ = b.hs.Serve(ln) })
	b.base = "http://" + ln.Addr().String()
	return b, nil
}

// subscribe makes n subscriptions to bench.created, each with its own path:
// subscriptions sharing a target are coalesced into one request.
func (b *bench) subscribe(ctx context.Context, n int) error {
	for i := range n {
		if _, err := b.conn.Exec(ctx, `SELECT walhook.subscribe('bench.created', $1, $2)`,
			fmt.Sprintf("%s/hook/%d", b.base, i), benchOwner); err != nil {
			return fmt.Errorf("subscribe: %w", err)
		}
	}
	return nil
}

// close drops what the run created and stops the server it started.
func (b *bench) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if b.hs != nil {
		b.hs.Close()
		b.hsWG.Wait()
	}
	if b.conn != nil {
		if b.external {
			// Leave the user's database as it was, bar schema walhook.
			_, _ = cdc.DropSlot(ctx, b.conn, b.slot)
			_, _ = cdc.DropSlot(ctx, b.conn, b.rawSlot)
			_ = cdc.DropPublication(ctx, b.conn, b.pub)
			_, _ = b.conn.Exec(ctx, `DELETE FROM walhook.subscriptions WHERE owner = $1`, benchOwner)
			_, _ = b.conn.Exec(ctx, `DROP TABLE IF EXISTS `+benchTable)
		}
		b.conn.Close(ctx)
	}
	if b.srv != nil {
		_ = b.srv.Stop()
	}
}

func (b *bench) result() *Result {
	return &Result{
		Machine: benchMachine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), PostgreSQL: b.pgVer, Settings: b.settings},
	}
}

// runFull runs the catch-up, stream-limit, HTTP-limit and latency phases.
func (b *bench) runFull(ctx context.Context) (*Result, error) {
	o := b.o
	res := b.result()
	res.Rows, res.TxSize, res.Subscriptions = o.Rows, o.TxSize, o.Subs
	if err := b.subscribe(ctx, o.Subs); err != nil {
		return nil, err
	}
	// The raw slot starts where walhook's stands now, bar the subscriptions:
	// both must decode the whole backlog.
	startLSN, err := b.createRawSlot(ctx)
	if err != nil {
		return nil, err
	}

	b.say("writing a backlog of %d rows in transactions of %d, walhook stopped ...", o.Rows, o.TxSize)
	if res.Backlog, err = b.writeBacklog(ctx, o.Rows, o.TxSize); err != nil {
		return nil, err
	}
	endLSN, err := b.currentLSN(ctx)
	if err != nil {
		return nil, err
	}
	res.Backlog.WALBytes = uint64(endLSN - startLSN)

	b.say("stream limit: pg_recvlogical draining the backlog from a second slot ...")
	if res.Stream, err = b.streamLimit(ctx, endLSN, o.Rows, res.Backlog.WALBytes); err != nil {
		return nil, err
	}

	deliveries := o.Rows * o.Subs
	b.say("catch-up: starting walhook, waiting for %d deliveries ...", deliveries)
	svc := b.startService(ctx)
	defer svc.stop()
	if res.CatchUp, err = b.measureDelivery(ctx, svc, deliveries, endLSN); err != nil {
		return nil, err
	}

	requests := o.HTTPRequests
	if requests == 0 {
		requests = min(deliveries, 200000)
	}
	body := b.recv.sampleBody()
	d := deliver.SettingsFrom(b.cfg.Delivery)
	for _, clients := range slices.Compact([]int{d.MaxInFlight, min(d.MaxPerHost, d.MaxInFlight)}) {
		b.say("HTTP limit: %d keep-alive POSTs of %d bytes from %d clients ...", requests, len(body), clients)
		hr, err := b.httpLimit(ctx, clients, requests, body)
		if err != nil {
			return nil, err
		}
		res.HTTP = append(res.HTTP, hr)
	}

	if o.Duration > 0 {
		b.say("latency: %d changes/s, one row per transaction, for %s ...", o.Rate, o.Duration)
		if res.Latency, err = b.latency(ctx, svc, o.Rate, o.Duration, o.Subs); err != nil {
			return nil, err
		}
	}
	if err := svc.stop(); err != nil {
		return nil, err
	}

	// Goals.
	streamLimit := res.Stream.RowsPerSec * float64(o.Subs)
	httpLimit := res.HTTP[0].PerSec
	limit := min(streamLimit, httpLimit)
	res.Goals = append(res.Goals, benchGoal{
		Goal: "catch-up rate",
		Want: fmt.Sprintf(">= %.0f%% of min(stream %.0f/s, HTTP %.0f/s) = %.0f/s", goalCatchUpShare*100, streamLimit, httpLimit, goalCatchUpShare*limit),
		Got:  fmt.Sprintf("%.0f/s (%.0f%%)", res.CatchUp.PerSec, 100*res.CatchUp.PerSec/limit),
		Met:  res.CatchUp.PerSec >= goalCatchUpShare*limit,
	})
	if l := res.Latency; l != nil {
		res.Goals = append(res.Goals, benchGoal{
			Goal: fmt.Sprintf("p99 latency at %d/s", l.Rate),
			Want: fmt.Sprintf("<= %d ms", goalP99.Milliseconds()),
			Got:  fmt.Sprintf("%.1f ms", l.P99ms),
			Met:  l.P99ms <= float64(goalP99.Milliseconds()) && l.Delivered == l.Committed*o.Subs,
		})
	}
	res.Notes = append(res.Notes,
		"peak RSS and CPU are of the whole bench process: walhook, the in-process receiver and the bench's own bookkeeping",
		"PostgreSQL runs on the same machine and shares its CPUs")
	return res, nil
}

// runRSS delivers one transaction of RSSRows rows to one subscription.
func (b *bench) runRSS(ctx context.Context) (*Result, error) {
	n := b.o.RSSRows
	res := b.result()
	res.Subscriptions = 1
	if err := b.subscribe(ctx, 1); err != nil {
		return nil, err
	}
	b.say("writing ONE transaction of %d rows, walhook stopped ...", n)
	startLSN, err := b.currentLSN(ctx)
	if err != nil {
		return nil, err
	}
	bl, err := b.writeBacklog(ctx, n, n)
	if err != nil {
		return nil, err
	}
	res.Backlog = bl
	endLSN, err := b.currentLSN(ctx)
	if err != nil {
		return nil, err
	}
	bl.WALBytes = uint64(endLSN - startLSN)
	b.say("starting walhook, waiting for %d deliveries ...", n)
	svc := b.startService(ctx)
	defer svc.stop()
	if res.SingleTx, err = b.measureDelivery(ctx, svc, n, endLSN); err != nil {
		return nil, err
	}
	if err := svc.stop(); err != nil {
		return nil, err
	}
	res.Goals = append(res.Goals, benchGoal{
		Goal: fmt.Sprintf("peak RSS delivering one %d-row transaction", n),
		Want: fmt.Sprintf("<= %d MiB", goalPeakRSS>>20),
		Got:  fmt.Sprintf("%.1f MiB", res.SingleTx.PeakRSSMiB),
		Met:  res.SingleTx.PeakRSSMiB <= goalPeakRSS>>20,
	})
	res.Notes = append(res.Notes,
		"peak RSS is of the whole bench process (walhook and the in-process receiver), measured from just before walhook starts; the writer's memory is returned to the OS first")
	return res, nil
}

func (b *bench) currentLSN(ctx context.Context) (pglogrepl.LSN, error) {
	var s string
	if err := b.conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		return 0, fmt.Errorf("read WAL position: %w", err)
	}
	return pglogrepl.ParseLSN(s)
}

func (b *bench) createRawSlot(ctx context.Context) (pglogrepl.LSN, error) {
	var s string
	if err := b.conn.QueryRow(ctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, b.rawSlot).Scan(&s); err != nil {
		return 0, fmt.Errorf("create slot %q: %w", b.rawSlot, err)
	}
	return pglogrepl.ParseLSN(s)
}

// writeBacklog commits rows rows in transactions of txSize.
func (b *bench) writeBacklog(ctx context.Context, rows, txSize int) (*backlogResult, error) {
	start := time.Now()
	txs := 0
	for done := 0; done < rows; txs++ {
		n := min(txSize, rows-done)
		first := b.nextID
		if _, err := b.conn.Exec(ctx, `INSERT INTO `+benchTable+` (id, tenant, payload, amount, at)
			SELECT g, g % 100, md5(g::text) || md5((g + 1)::text), g * 1.25, clock_timestamp()
			FROM generate_series($1::bigint, $2::bigint) g`, first, first+int64(n)-1); err != nil {
			return nil, fmt.Errorf("write backlog: %w", err)
		}
		b.nextID += int64(n)
		done += n
	}
	secs := time.Since(start).Seconds()
	return &backlogResult{Rows: rows, Transactions: txs, Seconds: secs, RowsPerSec: float64(rows) / secs}, nil
}

// streamLimit times pg_recvlogical reading the raw slot up to endLSN.
func (b *bench) streamLimit(ctx context.Context, endLSN pglogrepl.LSN, rows int, walBytes uint64) (*streamResult, error) {
	bin, err := b.recvlogical()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--dbname", b.dsn, "--slot", b.rawSlot, "--start",
		"--endpos", endLSN.String(), "--no-loop", "--status-interval", "10",
		"--option", "proto_version=1", "--option", "publication_names="+b.pub, "--file", os.DevNull)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	pg0, _ := postgresCPU(b.dataDir)
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("pg_recvlogical: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	secs := time.Since(start).Seconds()
	pg1, pgErr := postgresCPU(b.dataDir)
	if _, err := cdc.DropSlot(ctx, b.conn, b.rawSlot); err != nil {
		return nil, err
	}
	r := &streamResult{Seconds: secs, RowsPerSec: float64(rows) / secs, MBPerSec: float64(walBytes) / secs / 1e6}
	if pgErr == nil && b.dataDir != "" {
		r.PostgresCPUPerRow = float64((pg1 - pg0).Microseconds()) / float64(rows)
	}
	return r, nil
}

// recvlogical finds pg_recvlogical: beside the server binaries, in PATH, or
// in /usr/lib/postgresql/*/bin.
func (b *bench) recvlogical() (string, error) {
	if b.srv != nil && b.srv.BinDir() != "" {
		p := filepath.Join(b.srv.BinDir(), "pg_recvlogical")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("pg_recvlogical"); err == nil {
		return p, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_recvlogical")
	if len(dirs) > 0 {
		slices.Sort(dirs)
		return dirs[len(dirs)-1], nil
	}
	return "", errors.New("pg_recvlogical not found beside the server binaries, in PATH or in /usr/lib/postgresql/*/bin")
}

// benchService is walhook running in this process.
type benchService struct {
	svc  *walhook.Service
	wg   conc.WaitGroup
	done chan struct{} // closed when Run returns
	err  error         // Run's; read after done
	once sync.Once
}

func (b *bench) startService(ctx context.Context) *benchService {
	s := &benchService{done: make(chan struct{})}
	svc, err := walhook.New(walhook.Config{
		DatabaseURL: b.dsn, Mapping: b.cfg, Slot: b.slot, Publication: b.pub,
		AllowHTTP: true, AllowPrivateTargets: true, StandbyInterval: 250 * time.Millisecond,
		ShutdownTimeout: 10 * time.Second,
	}, b.log)
	if err != nil {
		s.err = err
		close(s.done)
		return s
	}
	s.svc = svc
	s.wg.Go(func() {
		defer close(s.done)
		s.err = svc.Run(ctx)
	})
	return s
}

// stop drains and stops walhook; the second call only returns the error.
func (s *benchService) stop() error {
	s.once.Do(func() {
		if s.svc != nil {
			_ = s.svc.Stop(context.Background())
		}
		s.wg.Wait()
	})
	return s.err
}

// measureDelivery starts the clock, waits for n deliveries and then for the
// slot to be acknowledged past endLSN. svc has just been started.
func (b *bench) measureDelivery(ctx context.Context, svc *benchService, n int, endLSN pglogrepl.LSN) (*deliveryResult, error) {
	b.recv.reset()
	done := b.recv.until(int64(n))
	// Measure walhook, not the writer: give back the writer's memory and
	// start the high-water mark afresh.
	runtime.GC()
	debug.FreeOSMemory()
	resetPeakRSS()
	heap := startHeapWatch()
	defer heap.stop()
	cpu0 := processCPU()
	pg0, _ := postgresCPU(b.dataDir)
	start := time.Now()
	if b.o.CPUProfile != "" {
		f, err := os.Create(b.o.CPUProfile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	if err := b.wait(ctx, done, n, svc); err != nil {
		return nil, err
	}
	secs := time.Since(start).Seconds()
	cpu := processCPU() - cpu0
	pg1, pgErr := postgresCPU(b.dataDir)
	if b.o.CPUProfile != "" {
		pprof.StopCPUProfile()
	}
	if b.o.MemProfile != "" {
		if err := writeHeapProfile(b.o.MemProfile); err != nil {
			return nil, err
		}
	}
	r := &deliveryResult{
		Deliveries:     n,
		Seconds:        secs,
		PerSec:         float64(n) / secs,
		PeakRSSMiB:     float64(peakRSS()) / (1 << 20),
		CPUPerDelivery: float64(cpu.Microseconds()) / float64(n),
		GoHeapPeakMiB:  float64(heap.stop()) / (1 << 20),
		FirstSeconds:   time.Unix(0, b.recv.first.Load()).Sub(start).Seconds(),
	}
	if pgErr == nil && b.dataDir != "" {
		r.PostgresCPUPerDelivery = float64((pg1 - pg0).Microseconds()) / float64(n)
	}
	// Acknowledged: every attempt recorded and the slot confirmed past the
	// backlog.
	deadline := time.Now().Add(b.o.Timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		si, err := cdc.Slot(ctx, b.conn, b.slot)
		if err != nil {
			return nil, err
		}
		if si.ConfirmedFlush >= endLSN {
			r.AckSeconds = time.Since(start).Seconds()
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("slot %s not acknowledged past %s within %s (at %s)", b.slot, endLSN, b.o.Timeout, si.ConfirmedFlush)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return r, nil
}

// wait waits for done, reporting progress every few seconds, until the phase
// timeout or walhook stopping on its own.
func (b *bench) wait(ctx context.Context, done <-chan struct{}, n int, svc *benchService) error {
	timeout := time.NewTimer(b.o.Timeout)
	defer timeout.Stop()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	start := time.Now()
	for {
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-timeout.C:
			return fmt.Errorf("%d of %d deliveries arrived within %s", b.recv.count(), n, b.o.Timeout)
		case <-svc.done:
			if svc.err != nil {
				return fmt.Errorf("walhook stopped: %w", svc.err)
			}
			return fmt.Errorf("walhook stopped after %d of %d deliveries", b.recv.count(), n)
		case <-tick.C:
			got := b.recv.count()
			b.say("  %d/%d delivered (%.0f/s)", got, n, float64(got)/time.Since(start).Seconds())
		}
	}
}

// httpLimit posts requests copies of body to the receiver from clients
// concurrent keep-alive clients.
func (b *bench) httpLimit(ctx context.Context, clients, requests int, body []byte) (httpResult, error) {
	tr := &http.Transport{Proxy: nil, MaxIdleConns: clients, MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	b.recv.reset()
	done := b.recv.until(int64(requests))
	ctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
	defer cancel()
	url := b.base + "/raw"
	var next atomic.Int64
	start := time.Now()
	p := pool.New().WithContext(ctx).WithCancelOnError()
	for range clients {
		p.Go(func(ctx context.Context) error {
			for next.Add(1) <= int64(requests) {
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
				if err != nil {
					return err
				}
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					return fmt.Errorf("post to the receiver: %w", err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			return nil
		})
	}
	if err := p.Wait(); err != nil {
		return httpResult{}, err
	}
	secs := time.Since(start).Seconds()
	select {
	case <-done:
	default:
		return httpResult{}, fmt.Errorf("receiver counted %d of %d requests", b.recv.count(), requests)
	}
	return httpResult{Clients: clients, Requests: requests, BodyBytes: len(body), Seconds: secs, PerSec: float64(requests) / secs}, nil
}

// latency commits one row per transaction at rate for d and measures, for
// each delivery, its arrival minus the commit time in its occurred_at.
func (b *bench) latency(ctx context.Context, svc *benchService, rate int, d time.Duration, subs int) (*latencyResult, error) {
	// Several writers, because one connection's round trip would cap the
	// rate on a busy machine. synchronous_commit=on (PostgreSQL's default):
	// the commit is flushed, so decoding sees it at once.
	writers := min(4, rate)
	pc, err := pgxpool.ParseConfig(b.dsn)
	if err != nil {
		return nil, err
	}
	pc.MaxConns = int32(writers)
	pc.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	db, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("open writer pool: %w", err)
	}
	defer db.Close()

	b.recv.record(int(float64(rate)*d.Seconds()*1.1)*subs + 16)
	defer b.recv.record(0)
	b.recv.reset()
	var committed atomic.Int64
	ids := b.nextID
	interval := time.Duration(float64(time.Second) * float64(writers) / float64(rate))
	start := time.Now()
	end := start.Add(d)
	p := pool.New().WithContext(ctx).WithCancelOnError()
	for w := range writers {
		p.Go(func(ctx context.Context) error {
			// Writer w commits at start + (w/writers + i) * interval.
			at := start.Add(time.Duration(w) * interval / time.Duration(writers))
			timer := time.NewTimer(0)
			defer timer.Stop()
			for i := int64(0); ; i++ {
				if !at.Before(end) {
					return nil
				}
				if wait := time.Until(at); wait > 0 {
					timer.Reset(wait)
					select {
					case <-timer.C:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				id := ids + int64(w) + i*int64(writers)
				if _, err := db.Exec(ctx, `INSERT INTO `+benchTable+` (id, tenant, payload, amount, at)
					SELECT g, g % 100, md5(g::text) || md5((g + 1)::text), g * 1.25, clock_timestamp() FROM (SELECT $1::bigint) AS v(g)`, id); err != nil {
					return fmt.Errorf("latency write: %w", err)
				}
				committed.Add(1)
				at = at.Add(interval)
			}
		})
	}
	if err := p.Wait(); err != nil {
		return nil, err
	}
	secs := time.Since(start).Seconds()
	n := int(committed.Load())
	// Writer w used ids + w + i*writers for i < its count, which is at most n.
	b.nextID = ids + int64(writers)*(int64(n)+1)
	done := b.recv.until(int64(n * subs))
	if err := b.wait(ctx, done, n*subs, svc); err != nil {
		return nil, err
	}
	lat := b.recv.latencies()
	if len(lat) == 0 {
		return nil, errors.New("no latency recorded: occurred_at missing from the bodies")
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		i := min(len(lat)-1, int(math.Ceil(p*float64(len(lat))))-1)
		return float64(lat[max(i, 0)].Microseconds()) / 1000
	}
	return &latencyResult{
		Rate: rate, Seconds: secs, Committed: n, AchievedRate: float64(n) / secs, Delivered: len(lat),
		P50ms: pct(0.50), P95ms: pct(0.95), P99ms: pct(0.99), Maxms: pct(1),
	}, nil
}

// benchReceiver answers every POST with 204 and counts them; while
// recording, it keeps each body's arrival minus its occurred_at.
type benchReceiver struct {
	n     atomic.Int64
	first atomic.Int64 // UnixNano of the phase's first request

	target atomic.Int64
	mu     sync.Mutex
	done   chan struct{} // closed when n reaches target; guarded by mu
	lat    []time.Duration
	rec    bool // guarded by mu
	sample []byte
	bufs   sync.Pool
}

var occurredAt = []byte(`"occurred_at":"`)

func (r *benchReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	arrival := time.Now()
	buf, _ := r.bufs.Get().(*bytes.Buffer)
	if buf == nil {
		buf = new(bytes.Buffer)
	}
	buf.Reset()
	_, _ = buf.ReadFrom(io.LimitReader(req.Body, 1<<20))
	body := buf.Bytes()
	var lat time.Duration
	ok := false
	if i := bytes.Index(body, occurredAt); i >= 0 {
		rest := body[i+len(occurredAt):]
		if j := bytes.IndexByte(rest, '"'); j > 0 {
			if t, err := time.Parse(time.RFC3339Nano, string(rest[:j])); err == nil {
				lat, ok = arrival.Sub(t), true
			}
		}
	}
	r.mu.Lock()
	if r.rec && ok && len(r.lat) < cap(r.lat) {
		r.lat = append(r.lat, lat)
	}
	if r.sample == nil && req.URL.Path != "/raw" {
		r.sample = bytes.Clone(body)
	}
	r.mu.Unlock()
	r.bufs.Put(buf)
	w.WriteHeader(http.StatusNoContent)
	r.first.CompareAndSwap(0, arrival.UnixNano())
	if c := r.n.Add(1); c >= r.target.Load() {
		r.mu.Lock()
		if r.done != nil && c >= r.target.Load() {
			close(r.done)
			r.done = nil
		}
		r.mu.Unlock()
	}
}

// reset starts a phase: the count restarts from zero.
func (r *benchReceiver) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.target.Store(math.MaxInt64)
	r.n.Store(0)
	r.first.Store(0)
	r.done = nil
}

// until returns a channel closed once n requests have arrived since reset.
func (r *benchReceiver) until(n int64) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.target.Store(n)
	ch := make(chan struct{})
	r.done = ch
	if r.n.Load() >= n {
		close(ch)
		r.done = nil
	}
	return ch
}

func (r *benchReceiver) count() int { return int(r.n.Load()) }

// record starts keeping up to n latencies; 0 stops.
func (r *benchReceiver) record(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rec = n > 0
	r.lat = make([]time.Duration, 0, n)
}

func (r *benchReceiver) latencies() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.lat)
}

func (r *benchReceiver) sampleBody() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sample == nil {
		return []byte(`{}`)
	}
	return r.sample
}

// processCPU is this process's user plus system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// resetPeakRSS restarts VmHWM at the current RSS (Linux 4.0+).
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// peakRSS reads VmHWM from /proc/self/status, in bytes; 0 when unknown.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// heapWatch samples the Go heap in use every 50ms and keeps the peak.
type heapWatch struct {
	stopOnce sync.Once
	quit     chan struct{}
	wg       conc.WaitGroup
	peak     atomic.Uint64
}

func startHeapWatch() *heapWatch {
	h := &heapWatch{quit: make(chan struct{})}
	h.wg.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if v := ms.HeapInuse; v > h.peak.Load() {
				h.peak.Store(v)
			}
			select {
			case <-h.quit:
				return
			case <-t.C:
			}
		}
	})
	return h
}

func (h *heapWatch) stop() uint64 {
	h.stopOnce.Do(func() {
		close(h.quit)
		h.wg.Wait()
	})
	return h.peak.Load()
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// postgresCPU is the CPU time of the server whose data directory is dataDir:
// the postmaster, its children alive now, and its children that have exited.
// It reads /proc, so it works only for a server on this machine.
func postgresCPU(dataDir string) (time.Duration, error) {
	if dataDir == "" {
		return 0, errors.New("no data directory")
	}
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pm, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0, fmt.Errorf("postmaster.pid: %w", err)
	}
	f, err := procStat(pm)
	if err != nil {
		return 0, err
	}
	// utime, stime, cutime, cstime: fields 14 to 17, here 11 to 14.
	ticks := f[11] + f[12] + f[13] + f[14]
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == pm {
			continue
		}
		if c, err := procStat(pid); err == nil && c[1] == int64(pm) {
			ticks += c[11] + c[12]
		}
	}
	const clkTck = 100 // USER_HZ on every Linux this runs on
	return time.Duration(ticks) * time.Second / clkTck, nil
}

// procStat returns the numeric fields of /proc/pid/stat after the command
// name: index 0 is field 3 (state, as 0), index 1 the parent's pid.
func procStat(pid int) ([]int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("malformed stat")
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 15 {
		return nil, errors.New("short stat")
	}
	out := make([]int64, 15)
	for k := 1; k < 15; k++ {
		out[k], _ = strconv.ParseInt(fields[k], 10, 64)
	}
	return out, nil
}

// Print writes the result as a table.
func (r *Result) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	m := r.Machine
	fmt.Fprintf(tw, "machine\t%d CPUs, %s, PostgreSQL %s\n", m.CPUs, m.GoVersion, m.PostgreSQL)
	keys := make([]string, 0, len(m.Settings))
	for k := range m.Settings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var kv []string
	for _, k := range keys {
		kv = append(kv, k+"="+m.Settings[k])
	}
	fmt.Fprintf(tw, "settings\t%s\n", strings.Join(kv, " "))
	fmt.Fprintf(tw, "subscriptions\t%d\n", r.Subscriptions)
	if bl := r.Backlog; bl != nil {
		fmt.Fprintf(tw, "backlog written\t%d rows in %d transactions, %.1fs (%.0f rows/s), %.1f MB of WAL\n",
			bl.Rows, bl.Transactions, bl.Seconds, bl.RowsPerSec, float64(bl.WALBytes)/1e6)
	}
	if s := r.Stream; s != nil {
		pg := ""
		if s.PostgresCPUPerRow > 0 {
			pg = fmt.Sprintf(", PostgreSQL CPU %.1f µs/row", s.PostgresCPUPerRow)
		}
		fmt.Fprintf(tw, "stream limit (pg_recvlogical)\t%.0f rows/s\t%.2fs, %.1f MB/s of WAL%s\n", s.RowsPerSec, s.Seconds, s.MBPerSec, pg)
	}
	printDelivery := func(name string, d *deliveryResult) {
		if d == nil {
			return
		}
		fmt.Fprintf(tw, "%s\t%.0f deliveries/s\t%d in %.2fs (first at %.2fs, acknowledged at %.2fs)\n", name, d.PerSec, d.Deliveries, d.Seconds, d.FirstSeconds, d.AckSeconds)
		fmt.Fprintf(tw, "  peak RSS (whole process)\t%.1f MiB\tGo heap in use peak %.1f MiB\n", d.PeakRSSMiB, d.GoHeapPeakMiB)
		pg := "n/a"
		if d.PostgresCPUPerDelivery > 0 {
			pg = fmt.Sprintf("%.0f µs", d.PostgresCPUPerDelivery)
		}
		fmt.Fprintf(tw, "  CPU per delivery\t%.0f µs\tPostgreSQL: %s\n", d.CPUPerDelivery, pg)
	}
	printDelivery("catch-up (walhook)", r.CatchUp)
	printDelivery("one transaction (walhook)", r.SingleTx)
	for _, h := range r.HTTP {
		fmt.Fprintf(tw, "HTTP limit, %d clients\t%.0f requests/s\t%d of %d bytes in %.2fs\n", h.Clients, h.PerSec, h.Requests, h.BodyBytes, h.Seconds)
	}
	if l := r.Latency; l != nil {
		fmt.Fprintf(tw, "latency at %d/s\tp50 %.1f ms  p95 %.1f ms  p99 %.1f ms  max %.1f ms\t%d committed (%.0f/s), %d delivered\n",
			l.Rate, l.P50ms, l.P95ms, l.P99ms, l.Maxms, l.Committed, l.AchievedRate, l.Delivered)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, g := range r.Goals {
		mark := "MET"
		if !g.Met {
			mark = "MISSED"
		}
		fmt.Fprintf(w, "goal %-6s %s: want %s, got %s\n", mark, g.Goal, g.Want, g.Got)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}
