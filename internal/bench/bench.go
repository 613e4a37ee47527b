package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
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
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sourcegraph/conc"
	"github.com/sourcegraph/conc/pool"

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/cdc"
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

// batchDialect is the dialect of the batched catch-up (--batch).
const batchDialect = "bulk"

// benchConfig is the config the bench runs walhook with; batch > 0 adds the
// batching dialect.
func benchConfig(batch int) string {
	cfg := `# Written by walhook bench.
tables:
  - table: public.walhook_bench
    noun: bench
    acl: "true"
`
	if batch > 0 {
		cfg += fmt.Sprintf("dialects:\n  %s:\n    batch: {max_events: %d, max_wait: 200ms}\n", batchDialect, batch)
	}
	return cfg
}

type Options struct {
	DatabaseURL string
	Rows        int
	// TxSizes are the backlog's shapes: rows per transaction, each caught up
	// separately.
	TxSizes []int
	// Batch > 0 adds, per shape, a catch-up through a dialect batching this
	// many events per request.
	Batch    int
	Subs     int
	Rate     int
	Duration time.Duration
	JSON     bool
	RSSRows  int
	// HTTPClients are the client counts of the HTTP limit; the limit is the
	// best of them.
	HTTPClients  []int
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
	var res *Result
	if o.RSSRows > 0 {
		res, err = b.runRSS(ctx)
	} else {
		res, err = b.runFull(ctx)
	}
	// The receiver stops here on success, so that the result can say so;
	// close stops it on every other path.
	pid := b.recv.pid()
	if stopErr := b.recv.stop(); err == nil && stopErr != nil {
		err = stopErr
	}
	if err != nil {
		return nil, err
	}
	res.Receiver = &receiverResult{PID: pid, Exited: true}
	return res, nil
}

// Validate names the first option out of range.
func (o *Options) Validate() error {
	switch {
	case o.Rows < 1:
		return errors.New("--rows: want at least 1")
	case len(o.TxSizes) == 0 || slices.Min(o.TxSizes) < 1:
		return errors.New("--tx-sizes: want one or more sizes of at least 1")
	case o.Batch < 0 || o.Batch > 10000:
		return errors.New("--batch: want 0 (off) to 10000")
	case o.Subs < 1 || o.Subs > 1000:
		return errors.New("--subscriptions: want 1 to 1000")
	case o.Rate < 1:
		return errors.New("--rate: want at least 1")
	case o.Duration < 0:
		return errors.New("--duration: want zero (skip the latency phase) or more")
	case o.RSSRows < 0:
		return errors.New("--rss-rows: want 0 (off) or more")
	case len(o.HTTPClients) == 0 || slices.Min(o.HTTPClients) < 1 || slices.Max(o.HTTPClients) > 10000:
		return errors.New("--http-clients: want one or more counts from 1 to 10000")
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
	Batch         int             `json:"batch,omitempty"`
	Subscriptions int             `json:"subscriptions"`
	Receiver      *receiverResult `json:"receiver"`
	// Shapes are the catch-ups, one per --tx-sizes entry.
	Shapes []shapeResult `json:"shapes,omitempty"`
	HTTP   []httpResult  `json:"http_limit,omitempty"`
	// HTTPLimit is the best events/s of HTTP whose body is one event;
	// HTTPBatchLimit that of HTTP whose body is a batch.
	HTTPLimit      float64         `json:"http_limit_events_per_sec,omitempty"`
	HTTPBatchLimit float64         `json:"http_batch_limit_events_per_sec,omitempty"`
	Latency        *latencyResult  `json:"latency,omitempty"`
	Backlog        *backlogResult  `json:"backlog,omitempty"` // of --rss-rows
	SingleTx       *deliveryResult `json:"single_tx,omitempty"`
	Goals          []benchGoal     `json:"goals"`
	Notes          []string        `json:"notes,omitempty"`
}

type benchMachine struct {
	CPUs       int               `json:"cpus"`
	GoVersion  string            `json:"go_version"`
	PostgreSQL string            `json:"postgresql"`
	Settings   map[string]string `json:"settings"`
}

// receiverResult is the receiver process: its PID and that it exited when
// the bench stopped it.
type receiverResult struct {
	PID    int  `json:"pid"`
	Exited bool `json:"exited"`
}

// shapeResult is one backlog shape: its stream limit and walhook's
// catch-ups of it.
type shapeResult struct {
	TxSize  int             `json:"tx_size"`
	Backlog *backlogResult  `json:"backlog"`
	Stream  *streamResult   `json:"stream_limit"`
	CatchUp *deliveryResult `json:"catch_up"`
	// Batch is the catch-up of a second backlog of the same shape through
	// the batching dialect (--batch).
	Batch *deliveryResult `json:"batch_catch_up,omitempty"`
}

type backlogResult struct {
	Rows         int `json:"rows"`
	Transactions int `json:"transactions"`
	// XIDs is how far the server's next transaction id moved while writing:
	// at least Transactions, as each transaction that writes takes one.
	XIDs       int64   `json:"xids"`
	Seconds    float64 `json:"seconds"`
	RowsPerSec float64 `json:"rows_per_sec"`
	WALBytes   uint64  `json:"wal_bytes"`
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
	// Deliveries are events delivered (rows × subscriptions), in Requests
	// requests (fewer when batched).
	Deliveries int `json:"deliveries"`
	Requests   int `json:"requests"`
	// Duplicates are events that arrived again with a webhook-id the
	// receiver had seen (at least once: after an attempt walhook saw fail
	// or a replay); Deliveries and Requests count each once.
	Duplicates int `json:"duplicates,omitempty"`
	// Retried are the deliveries that waited in walhook.deliveries for a
	// retry when the slot was acknowledged (a failed attempt).
	Retried      int     `json:"retried,omitempty"`
	Seconds      float64 `json:"seconds"`
	PerSec       float64 `json:"deliveries_per_sec"`
	AckSeconds   float64 `json:"acknowledged_seconds"`
	FirstSeconds float64 `json:"first_delivery_seconds"`
	// Limit is min(stream limit × subscriptions, HTTP limit for this body)
	// and Share PerSec / Limit; 0 without both limits.
	Limit      float64 `json:"limit_per_sec,omitempty"`
	Share      float64 `json:"share_of_limit,omitempty"`
	PeakRSSMiB float64 `json:"peak_rss_mib"`
	// CPU per delivery of each process: walhook (the bench process),
	// PostgreSQL (every backend, WAL sender and background process; 0 when
	// it cannot be read, a server on another machine), and the receiver.
	WalhookCPUPerDelivery  float64 `json:"walhook_cpu_us_per_delivery"`
	PostgresCPUPerDelivery float64 `json:"postgres_cpu_us_per_delivery,omitempty"`
	ReceiverCPUPerDelivery float64 `json:"receiver_cpu_us_per_delivery"`
	GoHeapPeakMiB          float64 `json:"go_heap_peak_mib"`
}

type httpResult struct {
	// Body is "event" (one envelope, as walhook sends by default) or
	// "batch" (a batch document of EventsPerRequest envelopes).
	Body             string  `json:"body"`
	Clients          int     `json:"clients"`
	Requests         int     `json:"requests"`
	EventsPerRequest int     `json:"events_per_request"`
	BodyBytes        int     `json:"body_bytes"`
	Seconds          float64 `json:"seconds"`
	PerSec           float64 `json:"requests_per_sec"`
	EventsPerSec     float64 `json:"events_per_sec"`
	// CPU per request of the posting client (the bench process) and of the
	// receiver.
	ClientCPUPerRequest   float64 `json:"client_cpu_us_per_request"`
	ReceiverCPUPerRequest float64 `json:"receiver_cpu_us_per_request"`
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
	recv     *receiverProc
	subIDs   []string // the subscriptions in place
	dataDir  string   // the server's data directory when readable here, for its CPU time
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
	// The backlog writer commits without waiting for the WAL flush, as
	// pglocal's server does anyway: a backlog of one-row transactions
	// against a server with synchronous_commit on would time the disk.
	if _, err := b.conn.Exec(ctx, `SET synchronous_commit = off`); err != nil {
		return nil, fmt.Errorf("set synchronous_commit: %w", err)
	}

	dir, err := os.MkdirTemp("", "walhook-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "walhook.yaml")
	if err := os.WriteFile(path, []byte(benchConfig(o.Batch)), 0o600); err != nil {
		return nil, err
	}
	if b.cfg, err = mapping.Load(path); err != nil {
		return nil, err
	}
	if _, err := walhook.Install(ctx, b.conn, b.cfg, walhook.InstallOptions{Slot: b.slot, Publication: b.pub, AllowHTTP: true}); err != nil {
		return nil, err
	}

	b.say("starting the receiver as a separate process ...")
	if b.recv, err = startReceiver(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// subscribe replaces the subscriptions in place with n subscriptions to
// bench.created through dialect, each with its own path: subscriptions
// sharing a target are coalesced into one request.
func (b *bench) subscribe(ctx context.Context, n int, dialect string) error {
	for _, id := range b.subIDs {
		if _, err := b.conn.Exec(ctx, `SELECT walhook.unsubscribe($1)`, id); err != nil {
			return fmt.Errorf("unsubscribe: %w", err)
		}
	}
	b.subIDs = b.subIDs[:0]
	for i := range n {
		var id string
		if err := b.conn.QueryRow(ctx, `SELECT walhook.subscribe('bench.created', $1, $2, '/', $3)::text`,
			fmt.Sprintf("%s/%s/%d", b.recv.base, dialect, i), benchOwner, dialect).Scan(&id); err != nil {
			return fmt.Errorf("subscribe: %w", err)
		}
		b.subIDs = append(b.subIDs, id)
	}
	return nil
}

// close stops the receiver, drops what the run created and stops the
// server it started.
func (b *bench) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if b.recv != nil {
		_ = b.recv.stop()
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

// runFull runs, per backlog shape, the stream limit and the catch-ups; then
// the HTTP limits and the latency phase.
func (b *bench) runFull(ctx context.Context) (*Result, error) {
	o := b.o
	res := b.result()
	res.Rows, res.Batch, res.Subscriptions = o.Rows, o.Batch, o.Subs
	deliveries := o.Rows * o.Subs
	var eventBody, batchBody []byte
	for _, size := range o.TxSizes {
		sh := shapeResult{TxSize: size}
		if err := b.subscribe(ctx, o.Subs, "default"); err != nil {
			return nil, err
		}
		// The raw slot starts where walhook's stands now, bar the
		// subscriptions: both must decode the whole backlog.
		startLSN, err := b.createRawSlot(ctx)
		if err != nil {
			return nil, err
		}
		b.say("transactions of %d: writing a backlog of %d rows, walhook stopped ...", size, o.Rows)
		if sh.Backlog, err = b.writeBacklog(ctx, o.Rows, size); err != nil {
			return nil, err
		}
		endLSN, err := b.currentLSN(ctx)
		if err != nil {
			return nil, err
		}
		sh.Backlog.WALBytes = uint64(endLSN - startLSN)

		b.say("transactions of %d: stream limit, pg_recvlogical draining the backlog from a second slot ...", size)
		if sh.Stream, err = b.streamLimit(ctx, endLSN, o.Rows, sh.Backlog.WALBytes); err != nil {
			return nil, err
		}
		b.say("transactions of %d: catch-up, starting walhook, waiting for %d deliveries ...", size, deliveries)
		var sample []byte
		if sh.CatchUp, sample, err = b.measureDelivery(ctx, deliveries, endLSN); err != nil {
			return nil, err
		}
		eventBody = cmpOr(eventBody, sample)

		if o.Batch > 0 {
			if err := b.subscribe(ctx, o.Subs, batchDialect); err != nil {
				return nil, err
			}
			b.say("transactions of %d: batches of %d, writing the same backlog again, walhook stopped ...", size, o.Batch)
			if _, err := b.writeBacklog(ctx, o.Rows, size); err != nil {
				return nil, err
			}
			if endLSN, err = b.currentLSN(ctx); err != nil {
				return nil, err
			}
			b.say("transactions of %d: batched catch-up, waiting for %d deliveries ...", size, deliveries)
			if sh.Batch, sample, err = b.measureDelivery(ctx, deliveries, endLSN); err != nil {
				return nil, err
			}
			batchBody = cmpOr(batchBody, sample)
		}
		res.Shapes = append(res.Shapes, sh)
	}

	requests := o.HTTPRequests
	if requests == 0 {
		requests = min(deliveries, 100000)
	}
	for _, body := range []struct {
		kind string
		b    []byte
	}{{"event", eventBody}, {"batch", batchBody}} {
		if body.b == nil {
			continue
		}
		events := max(bytes.Count(body.b, occurredAt), 1)
		n := max(requests/events, 1)
		for _, clients := range o.HTTPClients {
			b.say("HTTP limit: %d keep-alive POSTs of %d bytes (%d events) from %d clients ...", n, len(body.b), events, clients)
			hr, err := b.httpLimit(ctx, clients, n, body.b)
			if err != nil {
				return nil, err
			}
			hr.Body, hr.EventsPerRequest, hr.EventsPerSec = body.kind, events, hr.PerSec*float64(events)
			res.HTTP = append(res.HTTP, hr)
			if body.kind == "event" {
				res.HTTPLimit = max(res.HTTPLimit, hr.EventsPerSec)
			} else {
				res.HTTPBatchLimit = max(res.HTTPBatchLimit, hr.EventsPerSec)
			}
		}
	}

	if o.Duration > 0 {
		if err := b.subscribe(ctx, o.Subs, "default"); err != nil {
			return nil, err
		}
		b.say("latency: %d changes/s, one row per transaction, for %s ...", o.Rate, o.Duration)
		var err error
		if res.Latency, err = b.latency(ctx, o.Rate, o.Duration, o.Subs); err != nil {
			return nil, err
		}
	}

	// Ratios and goals.
	for i := range res.Shapes {
		sh := &res.Shapes[i]
		stream := sh.Stream.RowsPerSec * float64(o.Subs)
		sh.CatchUp.setLimit(stream, res.HTTPLimit)
		if sh.Batch != nil {
			sh.Batch.setLimit(stream, res.HTTPBatchLimit)
		}
		res.Goals = append(res.Goals, benchGoal{
			Goal: fmt.Sprintf("catch-up rate, transactions of %d", sh.TxSize),
			Want: fmt.Sprintf(">= %.0f%% of min(stream %.0f/s, HTTP %.0f/s) = %.0f/s", goalCatchUpShare*100, stream, res.HTTPLimit, goalCatchUpShare*sh.CatchUp.Limit),
			Got:  fmt.Sprintf("%.0f/s (%.0f%%)", sh.CatchUp.PerSec, 100*sh.CatchUp.Share),
			Met:  sh.CatchUp.Share >= goalCatchUpShare,
		})
	}
	if l := res.Latency; l != nil {
		res.Goals = append(res.Goals, benchGoal{
			Goal: fmt.Sprintf("p99 latency at %d/s", l.Rate),
			Want: fmt.Sprintf("<= %d ms", goalP99.Milliseconds()),
			Got:  fmt.Sprintf("%.1f ms", l.P99ms),
			Met:  l.P99ms <= float64(goalP99.Milliseconds()) && l.Delivered == l.Committed*o.Subs,
		})
	}
	res.Notes = append(res.Notes,
		"peak RSS and walhook's CPU are of the bench process: walhook and the bench's bookkeeping; the receiver is a separate process",
		"PostgreSQL, walhook and the receiver share this machine's CPUs")
	return res, nil
}

// cmpOr returns a unless it is nil, else b.
func cmpOr(a, b []byte) []byte {
	if a != nil {
		return a
	}
	return b
}

// setLimit sets d's limit to the lower of stream and http (events/s) and its
// share of it.
func (d *deliveryResult) setLimit(stream, http float64) {
	if stream <= 0 || http <= 0 {
		return
	}
	d.Limit = min(stream, http)
	d.Share = d.PerSec / d.Limit
}

// runRSS delivers one transaction of RSSRows rows to one subscription.
func (b *bench) runRSS(ctx context.Context) (*Result, error) {
	n := b.o.RSSRows
	res := b.result()
	res.Subscriptions = 1
	if err := b.subscribe(ctx, 1, "default"); err != nil {
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
	if res.SingleTx, _, err = b.measureDelivery(ctx, n, endLSN); err != nil {
		return nil, err
	}
	res.Goals = append(res.Goals, benchGoal{
		Goal: fmt.Sprintf("peak RSS delivering one %d-row transaction", n),
		Want: fmt.Sprintf("<= %d MiB", goalPeakRSS>>20),
		Got:  fmt.Sprintf("%.1f MiB", res.SingleTx.PeakRSSMiB),
		Met:  res.SingleTx.PeakRSSMiB <= goalPeakRSS>>20,
	})
	res.Notes = append(res.Notes,
		"peak RSS is of the bench process (walhook and the bench's bookkeeping; the receiver is a separate process), measured from just before walhook starts; the writer's memory is returned to the OS first")
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

// nextXID is the server's next transaction id.
func (b *bench) nextXID(ctx context.Context) (int64, error) {
	var x int64
	if err := b.conn.QueryRow(ctx, `SELECT txid_snapshot_xmax(txid_current_snapshot())`).Scan(&x); err != nil {
		return 0, fmt.Errorf("read the next transaction id: %w", err)
	}
	return x, nil
}

// writeBacklog commits rows rows in transactions of txSize, all from one
// server-side loop that commits after each transaction's INSERT, so that
// even one-row transactions are written at the server's pace rather than a
// round trip's.
func (b *bench) writeBacklog(ctx context.Context, rows, txSize int) (*backlogResult, error) {
	txs := (rows + txSize - 1) / txSize
	first, last := b.nextID, b.nextID+int64(rows)-1
	x0, err := b.nextXID(ctx)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	// DO takes no parameters; the numbers are the bench's own.
	if _, err := b.conn.Exec(ctx, fmt.Sprintf(`DO $$
		DECLARE lo bigint := %d;
		BEGIN
			WHILE lo <= %d LOOP
				INSERT INTO %s (id, tenant, payload, amount, at)
				SELECT g, g %% 100, md5(g::text) || md5((g + 1)::text), g * 1.25, clock_timestamp()
				FROM generate_series(lo, least(lo + %d, %d)) g;
				COMMIT;
				lo := lo + %d;
			END LOOP;
		END $$`, first, last, benchTable, txSize-1, last, txSize)); err != nil {
		return nil, fmt.Errorf("write backlog: %w", err)
	}
	secs := time.Since(start).Seconds()
	x1, err := b.nextXID(ctx)
	if err != nil {
		return nil, err
	}
	b.nextID += int64(rows)
	return &backlogResult{Rows: rows, Transactions: txs, XIDs: x1 - x0, Seconds: secs, RowsPerSec: float64(rows) / secs}, nil
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
	pg0, _ := b.settledPostgresCPU(ctx)
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("pg_recvlogical: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	secs := time.Since(start).Seconds()
	pg1, pgErr := b.settledPostgresCPU(ctx)
	if _, err := cdc.DropSlot(ctx, b.conn, b.rawSlot); err != nil {
		return nil, err
	}
	r := &streamResult{Seconds: secs, RowsPerSec: float64(rows) / secs, MBPerSec: float64(walBytes) / secs / 1e6}
	if pgErr == nil && b.dataDir != "" {
		r.PostgresCPUPerRow = float64((pg1 - pg0).Microseconds()) / float64(rows)
	}
	return r, nil
}

// settledPostgresCPU reads the server's CPU time once it has stopped moving
// for two readings 10ms apart, or after a second: a reading taken as soon as
// pg_recvlogical exits can miss its WAL sender's CPU (seen on this machine:
// none of it, at times), as the sender is still exiting.
func (b *bench) settledPostgresCPU(ctx context.Context) (time.Duration, error) {
	last, err := postgresCPU(b.dataDir)
	if err != nil {
		return 0, err
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for still, i := 0, 0; still < 2 && i < 100; i++ {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		cur, err := postgresCPU(b.dataDir)
		if err != nil {
			return 0, err
		}
		if still++; cur != last {
			still = 0
		}
		last = cur
	}
	return last, nil
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

// measureDelivery resets the receiver, starts walhook, waits for n
// deliveries and then for the slot to be acknowledged past endLSN, and stops
// walhook. It returns the first body the receiver got.
func (b *bench) measureDelivery(ctx context.Context, n int, endLSN pglogrepl.LSN) (*deliveryResult, []byte, error) {
	st0, err := b.recv.reset(ctx, 0)
	if err != nil {
		return nil, nil, err
	}
	// Measure walhook, not the writer: give back the writer's memory and
	// start the high-water mark afresh.
	runtime.GC()
	debug.FreeOSMemory()
	resetPeakRSS()
	heap := startHeapWatch()
	defer heap.stop()
	if b.o.CPUProfile != "" {
		f, err := os.Create(b.o.CPUProfile)
		if err != nil {
			return nil, nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, nil, err
		}
		defer pprof.StopCPUProfile()
	}
	cpu0 := processCPU()
	pg0, _ := postgresCPU(b.dataDir)
	start := time.Now()
	svc := b.startService(ctx)
	defer svc.stop()
	st1, err := b.wait(ctx, n, svc)
	if err != nil {
		return nil, nil, err
	}
	secs := time.Since(start).Seconds()
	cpu := processCPU() - cpu0
	pg1, pgErr := postgresCPU(b.dataDir)
	if b.o.CPUProfile != "" {
		pprof.StopCPUProfile()
	}
	if b.o.MemProfile != "" {
		if err := writeHeapProfile(b.o.MemProfile); err != nil {
			return nil, nil, err
		}
	}
	r := &deliveryResult{
		Deliveries:             n,
		Requests:               int(st1.Requests),
		Seconds:                secs,
		PerSec:                 float64(n) / secs,
		PeakRSSMiB:             float64(peakRSS()) / (1 << 20),
		WalhookCPUPerDelivery:  float64(cpu.Microseconds()) / float64(n),
		ReceiverCPUPerDelivery: float64(st1.CPUMicros-st0.CPUMicros) / float64(n),
		GoHeapPeakMiB:          float64(heap.stop()) / (1 << 20),
		FirstSeconds:           time.Unix(0, st1.FirstUnixNano).Sub(start).Seconds(),
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
			return nil, nil, err
		}
		if si.ConfirmedFlush >= endLSN {
			r.AckSeconds = time.Since(start).Seconds()
			break
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("slot %s not acknowledged past %s within %s (at %s)", b.slot, endLSN, b.o.Timeout, si.ConfirmedFlush)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	// Acknowledged includes retries queued in walhook.deliveries: they are
	// sent before walhook stops, so that no phase leaves work to the next.
	if r.Retried, err = b.settle(ctx, deadline); err != nil {
		return nil, nil, err
	}
	if err := svc.stop(); err != nil {
		return nil, nil, err
	}
	st2, err := b.recv.stats(ctx, false)
	if err != nil {
		return nil, nil, err
	}
	if st2.Events != int64(n) {
		return nil, nil, fmt.Errorf("receiver counted %d distinct deliveries, want %d", st2.Events, n)
	}
	r.Duplicates = int(st2.DupEvents)
	return r, st2.Sample, nil
}

// settle waits until walhook.deliveries is empty, or deadline, and returns
// how many rows it held at first.
func (b *bench) settle(ctx context.Context, deadline time.Time) (int, error) {
	first := -1
	for {
		var n int
		if err := b.conn.QueryRow(ctx, `SELECT count(*) FROM walhook.deliveries`).Scan(&n); err != nil {
			return 0, fmt.Errorf("count queued deliveries: %w", err)
		}
		if first < 0 {
			first = n
		}
		if n == 0 {
			return first, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%d deliveries still queued for a retry after the phase timeout", n)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// wait waits until the receiver has counted n deliveries since its reset,
// reporting progress every few seconds, until the phase timeout or walhook
// stopping on its own. It returns the receiver's counts.
func (b *bench) wait(ctx context.Context, n int, svc *benchService) (*receiverStats, error) {
	start := time.Now()
	deadline, said := start.Add(b.o.Timeout), start
	for {
		st, err := b.recv.wait(ctx, true, n, time.Second)
		if err != nil {
			return nil, err
		}
		if st.Events >= int64(n) {
			return st, nil
		}
		select {
		case <-svc.done:
			if svc.err != nil {
				return nil, fmt.Errorf("walhook stopped: %w", svc.err)
			}
			return nil, fmt.Errorf("walhook stopped after %d of %d deliveries", st.Events, n)
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d deliveries arrived within %s", st.Events, n, b.o.Timeout)
		}
		if time.Since(said) >= 5*time.Second {
			said = time.Now()
			b.say("  %d/%d delivered (%.0f/s)", st.Events, n, float64(st.Events)/time.Since(start).Seconds())
		}
	}
}

// httpLimit posts requests copies of body to the receiver from clients
// concurrent keep-alive clients.
func (b *bench) httpLimit(ctx context.Context, clients, requests int, body []byte) (httpResult, error) {
	tr := &http.Transport{Proxy: nil, MaxIdleConns: clients, MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	st0, err := b.recv.reset(ctx, 0)
	if err != nil {
		return httpResult{}, err
	}
	pctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
	defer cancel()
	url := b.recv.base + "/raw"
	var next atomic.Int64
	cpu0 := processCPU()
	start := time.Now()
	p := pool.New().WithContext(pctx).WithCancelOnError()
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
	cpu := processCPU() - cpu0
	st1, err := b.recv.stats(ctx, false)
	if err != nil {
		return httpResult{}, err
	}
	if st1.Requests != int64(requests) {
		return httpResult{}, fmt.Errorf("receiver counted %d of %d requests", st1.Requests, requests)
	}
	return httpResult{
		Clients: clients, Requests: requests, BodyBytes: len(body), Seconds: secs, PerSec: float64(requests) / secs,
		ClientCPUPerRequest:   float64(cpu.Microseconds()) / float64(requests),
		ReceiverCPUPerRequest: float64(st1.CPUMicros-st0.CPUMicros) / float64(requests),
	}, nil
}

// latency starts walhook, commits one row per transaction at rate for d and
// measures, for each delivery, its arrival minus the commit time in its
// occurred_at.
func (b *bench) latency(ctx context.Context, rate int, d time.Duration, subs int) (*latencyResult, error) {
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

	// Start walhook and wait for it to deliver one row, so that the clock
	// measures delivery, not walhook's start.
	if _, err := b.recv.reset(ctx, 0); err != nil {
		return nil, err
	}
	svc := b.startService(ctx)
	defer svc.stop()
	if _, err := b.writeBacklog(ctx, 1, 1); err != nil {
		return nil, err
	}
	if _, err := b.wait(ctx, subs, svc); err != nil {
		return nil, err
	}
	if _, err := b.recv.reset(ctx, int(float64(rate)*d.Seconds()*1.1)*subs+16); err != nil {
		return nil, err
	}
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
	if _, err := b.wait(ctx, n*subs, svc); err != nil {
		return nil, err
	}
	if _, err := b.settle(ctx, time.Now().Add(b.o.Timeout)); err != nil {
		return nil, err
	}
	if err := svc.stop(); err != nil {
		return nil, err
	}
	st, err := b.recv.stats(ctx, true)
	if err != nil {
		return nil, err
	}
	lat := st.LatencyMicros
	if len(lat) == 0 {
		return nil, errors.New("no latency recorded: occurred_at missing from the bodies")
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		i := min(len(lat)-1, int(math.Ceil(p*float64(len(lat))))-1)
		return float64(lat[max(i, 0)]) / 1000
	}
	return &latencyResult{
		Rate: rate, Seconds: secs, Committed: n, AchievedRate: float64(n) / secs, Delivered: len(lat),
		P50ms: pct(0.50), P95ms: pct(0.95), P99ms: pct(0.99), Maxms: pct(1),
	}, nil
}
