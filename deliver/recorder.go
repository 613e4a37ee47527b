package deliver

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"log/slog"
)

// maxBatch bounds one write of attempts.
const maxBatch = 1000

type record struct {
	r *Request
	o Outcome
}

// recorder writes attempt outcomes in batches: one COPY per batch instead of
// one INSERT per attempt is what lets the history keep up with thousands of
// deliveries a second.
type recorder struct {
	db  *pgxpool.Pool
	log *slog.Logger
	in  chan record
	// unwritten counts outcomes handed to add and not yet written.
	unwritten atomic.Int64
}

func newRecorder(db *pgxpool.Pool, log *slog.Logger) *recorder {
	return &recorder{db: db, log: log, in: make(chan record, maxBatch)}
}

func (rc *recorder) add(ctx context.Context, r *Request, o Outcome) {
	rc.unwritten.Add(1)
	select {
	case rc.in <- record{r, o}:
	case <-ctx.Done():
		rc.unwritten.Add(-1)
	}
}

func (rc *recorder) run(ctx context.Context) error {
	batch := make([]record, 0, maxBatch)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case rec := <-rc.in:
			batch = append(batch[:0], rec)
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case rec := <-rc.in:
				batch = append(batch, rec)
			default:
				break fill
			}
		}
		backoff := 100 * time.Millisecond
		for {
			err := rc.write(ctx, batch)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			rc.log.Warn("record attempts; retrying", "attempts", len(batch), "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return ctx.Err()
			}
			backoff = min(backoff*2, 5*time.Second)
		}
		for i := range batch {
			if batch[i].r.Done != nil {
				batch[i].r.Done()
			}
			batch[i] = record{}
		}
		rc.unwritten.Add(-int64(len(batch)))
	}
}

var attemptColumns = []string{"subscription_id", "event_id", "event", "attempt", "status", "response_status",
	"response_excerpt", "error", "target_url", "request_headers", "request_body", "duration_ms"}

func (rc *recorder) write(ctx context.Context, batch []record) error {
	_, err := rc.db.CopyFrom(ctx, pgx.Identifier{"walhook", "attempts"}, attemptColumns,
		pgx.CopyFromSlice(len(batch), func(i int) ([]any, error) {
			r, o := batch[i].r, batch[i].o
			status := "failed"
			if o.Succeeded() {
				status = "succeeded"
			}
			var respStatus any
			if o.Status != 0 {
				respStatus = o.Status
			}
			var errText any
			if o.Err != nil {
				errText = o.Err.Error()
			}
			var excerpt any
			if len(o.Excerpt) > 0 {
				excerpt = validUTF8(o.Excerpt)
			}
			return []any{r.SubscriptionID, r.EventID, r.Event, max(r.Attempt, 1), status, respStatus,
				excerpt, errText, r.URL, storedHeaders(r.Header), r.Body, int32(o.Duration / time.Millisecond)}, nil
		}))
	return err
}

// storedHeaders keeps the dialect's headers for redelivery, minus anything
// that looks like a credential.
func storedHeaders(h http.Header) []byte {
	if len(h) == 0 {
		return nil
	}
	out := map[string]string{}
	for k, v := range h {
		if isSecretHeader(k) {
			continue
		}
		if len(v) > 0 {
			out[k] = v[0]
		}
	}
	b, _ := json.Marshal(out)
	return b
}

func isSecretHeader(k string) bool {
	switch http.CanonicalHeaderKey(k) {
	case "Authorization", "Proxy-Authorization", "Cookie", "Webhook-Signature", "X-Api-Key":
		return true
	}
	return false
}

// validUTF8 makes a response excerpt storable as text: PostgreSQL refuses
// invalid UTF-8 and NUL bytes, and a receiver may send either.
func validUTF8(b []byte) string {
	s := string(b)
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return strings.ReplaceAll(s, "\x00", "")
}
