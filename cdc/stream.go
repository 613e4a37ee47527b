package cdc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walhook/walhook/internal/change"
)

// Defaults applied by New.
const (
	DefaultSlot            = "walhook"
	DefaultPublication     = "walhook"
	DefaultStandbyInterval = 10 * time.Second
	DefaultBuffer          = 1024
	// DefaultMaxPending caps the transactions received and not yet
	// acknowledged. Each holds its changes until its deliveries are
	// recorded; past the cap the stream stops reading until some resolve.
	DefaultMaxPending = 10_000
)

// SitePrefix is the logical message prefix walhook.set_site() emits.
const SitePrefix = "walhook.site"

// InstallPrefix is the logical message prefix `walhook install` emits, in
// its transaction, with the digest of the config it installed: a running
// process learns of the install in commit order.
const InstallPrefix = "walhook.install"

// ReleasePrefix is the logical message prefix walhook.release_held() emits,
// after the owner attributes it refreshed.
const ReleasePrefix = "walhook.release"

// BackfillPrefix is the logical message prefix of backfills: walhook.backfill()
// and walhook.cancel_backfill() emit "start <id>" and "cancel <id>", the
// backfill's reader "low <chunk>" and "high <chunk>" around each chunk it
// reads (the watermarks), each in its own transaction.
const BackfillPrefix = "walhook.backfill"

// sessionSettings make the text the server sends for each type one fixed,
// lossless form, whatever the database's defaults: ISO dates in UTC, floats
// with round-trip precision, bytea as hex.
var sessionSettings = map[string]string{
	"DateStyle":          "ISO, YMD",
	"TimeZone":           "UTC",
	"IntervalStyle":      "postgres",
	"extra_float_digits": "3",
	"bytea_output":       "hex",
	"application_name":   "walhook",
}

// Config configures a Stream.
type Config struct {
	// DatabaseURL is an ordinary connection string; the stream adds
	// replication=database itself.
	DatabaseURL string
	Slot        string
	Publication string
	// Start is where to resume: the slot's confirmed_flush_lsn as read before
	// loading state that must match it. The server never sends a transaction
	// that commits before its own confirmed position, whatever Start says.
	Start pglogrepl.LSN
	// StandbyInterval is how often the stream reports its position.
	StandbyInterval time.Duration
	// Observer is told what the stream decodes; nil for none.
	Observer Observer
	// MaxPending caps unacknowledged transactions (DefaultMaxPending).
	MaxPending int
}

// Kind is the kind of a Message.
type Kind uint8

// Message kinds, in the order they arrive for a transaction: any number of
// KindChange and KindSite, then one KindCommit.
const (
	KindChange Kind = iota + 1
	KindSite
	KindCommit
	// KindInstall is an install of walhook, with the digest of its config
	// in Site.
	KindInstall
	// KindRelease is a call of walhook.release_held().
	KindRelease
	// KindBackfill is a backfill's message (BackfillPrefix), its content in
	// Site.
	KindBackfill
)

// Message is what the stream hands its consumer.
type Message struct {
	Kind   Kind
	Txn    *Txn
	Change *change.Change // KindChange
	Site   string         // KindSite: the path given to walhook.set_site()
}

// SlotActiveError means another process is streaming from the slot.
type SlotActiveError struct {
	Slot string
	Err  error
}

func (e *SlotActiveError) Error() string {
	return fmt.Sprintf("slot %q is in use by another process: %v", e.Slot, e.Err)
}

func (e *SlotActiveError) Unwrap() error { return e.Err }

// Stream reads one replication slot.
type Stream struct {
	cfg     Config
	log     *slog.Logger
	tracker *Tracker
}

// New returns a stream; it connects in Run.
func New(cfg Config, logger *slog.Logger) (*Stream, error) {
	if cfg.DatabaseURL == "" {
		return nil, errors.New("cdc: no database URL")
	}
	if cfg.Slot == "" {
		cfg.Slot = DefaultSlot
	}
	if cfg.Publication == "" {
		cfg.Publication = DefaultPublication
	}
	if cfg.StandbyInterval <= 0 {
		cfg.StandbyInterval = DefaultStandbyInterval
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	return &Stream{
		cfg:     cfg,
		log:     logger.With("component", "cdc", "slot", cfg.Slot),
		tracker: NewTracker(cfg.Start, cfg.MaxPending),
	}, nil
}

// Tracker returns the acknowledgement tracker.
func (s *Stream) Tracker() *Tracker { return s.tracker }

func (s *Stream) connect(ctx context.Context) (*pgconn.PgConn, error) {
	pc, err := pgconn.ParseConfig(s.cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	pc.RuntimeParams["replication"] = "database"
	for k, v := range sessionSettings {
		pc.RuntimeParams[k] = v
	}
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("open replication connection: %w", err)
	}
	return conn, nil
}

// Run streams until ctx ends or the connection fails, sending messages to out
// in commit order. On return it has sent a last status update when it could.
func (s *Stream) Run(ctx context.Context, out chan<- Message) error {
	conn, err := s.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// Connected before replication starts, when no status is due yet.
	types := newTypeResolver(s.cfg.DatabaseURL, min(DefaultTypeLookupTimeout, s.cfg.StandbyInterval/2), s.log)
	types.open(ctx)
	defer types.close(context.WithoutCancel(ctx))

	// Only the identity is taken from IDENTIFY_SYSTEM, never its position:
	// the stream resumes from the slot's own.
	ident, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return fmt.Errorf("identify system: %w", err)
	}
	err = pglogrepl.StartReplication(ctx, conn, s.cfg.Slot, s.cfg.Start, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{
			"proto_version '1'",
			fmt.Sprintf("publication_names '%s'", s.cfg.Publication),
			"messages 'true'",
		},
	})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" {
			return &SlotActiveError{Slot: s.cfg.Slot, Err: err}
		}
		// 55000 object_not_in_prerequisite_state is how the server refuses
		// an invalidated slot (among other things): ask the slot itself.
		if errors.As(err, &pgErr) && pgErr.Code == "55000" {
			if lost := s.lostSlot(ctx); lost != nil {
				return lost
			}
		}
		return fmt.Errorf("start replication on slot %q: %w", s.cfg.Slot, err)
	}
	s.log.Info("streaming", "lsn", s.cfg.Start.String(), "publication", s.cfg.Publication)

	r := &reader{s: s, conn: conn, out: out, rels: relations{}, source: ident.SystemID + "/" + ident.DBName, types: types}
	err = r.loop(ctx)
	// A last status so the server keeps what was finished; the connection may
	// be gone already, in which case there is nothing to tell.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	_ = r.sendStatus(sctx)
	cancel()
	return err
}

// lostSlot reads the slot and returns a *SlotLostError when it was
// invalidated, else nil. It uses a connection of its own: the failed
// START_REPLICATION leaves the first one's protocol state unclear. That one
// is a replication connection too (walsenders in database mode take simple
// SQL queries), so the stream needs no other kind of URL.
func (s *Stream) lostSlot(ctx context.Context) error {
	conn, err := s.connect(ctx)
	if err != nil {
		return nil
	}
	defer conn.Close(context.WithoutCancel(ctx))
	lit := "'" + strings.ReplaceAll(s.cfg.Slot, "'", "''") + "'"
	res, err := conn.Exec(ctx, slotQuery+lit).ReadAll()
	if err != nil || len(res) != 1 || res[0].Err != nil || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 2 {
		return nil
	}
	row := res[0].Rows[0]
	retained, _ := strconv.ParseInt(string(row[1]), 10, 64)
	si, err := parseSlotRow(row[0], retained)
	if err != nil {
		return nil
	}
	if reason, lost := si.Lost(); lost {
		return &SlotLostError{Slot: s.cfg.Slot, Reason: reason, ConfirmedLSN: si.ConfirmedFlush}
	}
	return nil
}

type reader struct {
	s      *Stream
	conn   *pgconn.PgConn
	out    chan<- Message
	rels   relations
	types  *typeResolver
	source string // change.Tx.Source of every transaction
	cur    *Txn
	seq    uint32
	// emitted says whether cur has handed the consumer anything yet: an
	// empty transaction (PostgreSQL before 15 sends BEGIN and COMMIT for
	// every transaction, published tables or not) is resolved here instead.
	emitted    bool
	nextStatus time.Time
	timer      *time.Timer
	sent       pglogrepl.LSN
}

func (r *reader) sendStatus(ctx context.Context) error {
	pos := r.s.tracker.Confirmed()
	r.nextStatus = time.Now().Add(r.s.cfg.StandbyInterval)
	if err := pglogrepl.SendStandbyStatusUpdate(ctx, r.conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos}); err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	if pos != r.sent {
		r.s.log.Debug("acknowledged", "lsn", pos.String())
		r.sent = pos
	}
	return nil
}

func (r *reader) loop(ctx context.Context) error {
	r.nextStatus = time.Now().Add(r.s.cfg.StandbyInterval)
	r.timer = time.NewTimer(r.s.cfg.StandbyInterval)
	defer r.timer.Stop()
	// Reads wait until the next status update with a deadline on the
	// socket, not a context per message: a context with a deadline, and
	// pgconn watching it, cost more than decoding a small change. Ending
	// ctx ends the wait by moving the deadline to now.
	sock := r.conn.Conn()
	defer context.AfterFunc(ctx, func() { _ = sock.SetReadDeadline(time.Now()) })()
	defer func() { _ = sock.SetReadDeadline(time.Time{}) }()
	var deadline time.Time
	for {
		if !time.Now().Before(r.nextStatus) {
			if err := r.sendStatus(ctx); err != nil {
				return err
			}
		}
		if !deadline.Equal(r.nextStatus) {
			deadline = r.nextStatus
			if err := sock.SetReadDeadline(deadline); err != nil {
				return fmt.Errorf("receive from slot %q: %w", r.s.cfg.Slot, err)
			}
		}
		// After setting the deadline: a cancellation that moved it to now
		// just before would otherwise be overwritten and missed.
		if err := ctx.Err(); err != nil {
			return err
		}
		raw, err := r.conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive from slot %q: %w", r.s.cfg.Slot, err)
		}
		switch msg := raw.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("slot %q: %w", r.s.cfg.Slot, pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return fmt.Errorf("slot %q: server ended the stream", r.s.cfg.Slot)
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("parse keepalive: %w", err)
				}
				if r.cur == nil {
					r.s.tracker.idle(pkm.ServerWALEnd)
				}
				if pkm.ReplyRequested {
					r.nextStatus = time.Time{}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("parse XLogData: %w", err)
				}
				// The connection reuses its buffer: own the bytes once here,
				// and let every datum alias this copy.
				if err := r.handle(ctx, bytes.Clone(xld.WALData)); err != nil {
					return err
				}
			}
		}
	}
}

// emit hands m to the consumer, sending status updates while it waits so a
// slow consumer never gets the connection timed out.
func (r *reader) emit(ctx context.Context, m Message) error {
	if m.Kind != KindCommit {
		r.emitted = true
	}
	sent := false
	return r.wait(ctx, func() bool { return sent }, func(timer <-chan time.Time) error {
		select {
		case r.out <- m:
			sent = true
		case <-ctx.Done():
			return ctx.Err()
		case <-timer:
		}
		return nil
	})
}

// waitRoom waits while the tracker holds MaxPending unresolved
// transactions, sending status updates meanwhile, like emit.
func (r *reader) waitRoom(ctx context.Context) error {
	return r.wait(ctx, func() bool { return !r.s.tracker.full() }, func(timer <-chan time.Time) error {
		select {
		case <-r.s.tracker.room:
		case <-ctx.Done():
			return ctx.Err()
		case <-timer:
		}
		return nil
	})
}

// wait runs step until done, never longer at a time than until the next
// status update is due, which it sends: the goroutine that owns the
// replication connection never goes silent past the standby interval.
func (r *reader) wait(ctx context.Context, done func() bool, step func(timer <-chan time.Time) error) error {
	for !done() {
		d := time.Until(r.nextStatus)
		if d <= 0 {
			if err := r.sendStatus(ctx); err != nil {
				return err
			}
			continue
		}
		r.timer.Reset(d)
		if err := step(r.timer.C); err != nil {
			return err
		}
	}
	return nil
}

func (r *reader) handle(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case 'I', 'U', 'D':
		if r.cur == nil {
			return fmt.Errorf("row change outside a transaction")
		}
		ch := &change.Change{Tx: &r.cur.Tx, Seq: r.seq}
		if err := decodeRowChange(data[0], data[1:], r.rels, ch); err != nil {
			return fmt.Errorf("decode change at %s: %w", r.cur.CommitLSN, err)
		}
		r.types.refresh(ctx, ch, r.rels)
		r.seq++
		r.s.cfg.Observer.Decoded(1)
		return r.emit(ctx, Message{Kind: KindChange, Txn: r.cur, Change: ch})
	}
	m, err := pglogrepl.Parse(data)
	if err != nil {
		return fmt.Errorf("parse pgoutput message %q: %w", data[0], err)
	}
	switch m := m.(type) {
	case *pglogrepl.BeginMessage:
		if err := r.waitRoom(ctx); err != nil {
			return err
		}
		r.cur = r.s.tracker.open(change.Tx{Source: r.source, XID: m.Xid, CommitLSN: m.FinalLSN, CommitTime: m.CommitTime})
		r.seq, r.emitted = 0, false
	case *pglogrepl.CommitMessage:
		if r.cur == nil {
			return fmt.Errorf("commit outside a transaction")
		}
		t := r.cur
		t.EndLSN = m.TransactionEndLSN
		r.cur = nil
		if !r.emitted {
			// Nothing for the consumer: nothing to wait for either.
			t.Seal()
			return nil
		}
		return r.emit(ctx, Message{Kind: KindCommit, Txn: t})
	case *pglogrepl.RelationMessage:
		r.types.prepare(ctx, m)
		r.rels.apply(m, r.types.column)
	case *pglogrepl.LogicalDecodingMessage:
		if m.Prefix == SitePrefix && m.Transactional && r.cur != nil {
			return r.emit(ctx, Message{Kind: KindSite, Txn: r.cur, Site: string(m.Content)})
		}
		if m.Prefix == InstallPrefix && m.Transactional && r.cur != nil {
			return r.emit(ctx, Message{Kind: KindInstall, Txn: r.cur, Site: string(m.Content)})
		}
		if m.Prefix == ReleasePrefix && m.Transactional && r.cur != nil {
			return r.emit(ctx, Message{Kind: KindRelease, Txn: r.cur})
		}
		if m.Prefix == BackfillPrefix && m.Transactional && r.cur != nil {
			return r.emit(ctx, Message{Kind: KindBackfill, Txn: r.cur, Site: string(m.Content)})
		}
	case *pglogrepl.TruncateMessage:
		// Published only when a table maps truncate (EnsurePublication):
		// one change per table the TRUNCATE emptied, CASCADE included, each
		// with its own Seq. The consumer ignores those of other tables.
		if r.cur == nil {
			return fmt.Errorf("truncate outside a transaction")
		}
		for _, id := range m.RelationIDs {
			rel := r.rels[id]
			if rel == nil {
				return fmt.Errorf("decode truncate at %s: unknown relation %d (no RELATION message seen)", r.cur.CommitLSN, id)
			}
			ch := &change.Change{Relation: rel, Op: change.Truncate, Tx: &r.cur.Tx, Seq: r.seq}
			r.seq++
			r.s.cfg.Observer.Decoded(1)
			if err := r.emit(ctx, Message{Kind: KindChange, Txn: r.cur, Change: ch}); err != nil {
				return err
			}
		}
	case *pglogrepl.TypeMessage, *pglogrepl.OriginMessage:
		// Types: a TYPE message names a type but not what it is made of, so
		// the RELATION that follows looks its columns' types up in the
		// catalog instead (types.go).
	}
	return nil
}
