package bench

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sourcegraph/conc"
)

// TestReceiver: the receiver counts requests per path and envelopes (one
// per occurred_at), keeps latencies once asked, answers /_wait when the
// count is reached and restarts from zero on /_reset.
func TestReceiver(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	var wg conc.WaitGroup
	var serveErr error
	wg.Go(func() { serveErr = serveReceiver(ctx, pw) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if serveErr != nil {
			t.Errorf("serveReceiver: %v", serveErr)
		}
	})
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("read address: %v", err)
	}
	p := &receiverProc{base: strings.TrimSpace(line), client: &http.Client{}}
	defer p.client.CloseIdleConnections()

	if _, err := p.reset(ctx, 10); err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano)
	event := `{"id":"1","occurred_at":"` + at + `"}`
	for _, tc := range []struct{ path, id, body string }{
		{"/default/0", "1", event},
		{"/bulk/0", "b", `{"id":"b","events":[` + event + `,` + event + `]}`},
		{"/raw", "", `{}`},
		// Again: counted as duplicates, not as deliveries.
		{"/default/0", "1", event},
		{"/bulk/0", "b", `{"id":"b","events":[` + event + `,` + event + `]}`},
	} {
		req, err := http.NewRequest(http.MethodPost, p.base+tc.path, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		if tc.id != "" {
			req.Header.Set("webhook-id", tc.id)
		}
		resp, err := p.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("POST %s = %s, want 204", tc.path, resp.Status)
		}
	}
	st, err := p.wait(ctx, true, 4, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st.Requests != 3 || st.Events != 4 || st.Paths["/bulk/0"] != 1 || string(st.Sample) != event ||
		st.DupRequests != 2 || st.DupEvents != 3 {
		t.Errorf("stats = %+v, want 3 requests, 4 events, one to /bulk/0, the first body as sample, and 2 requests of 3 events again", st)
	}
	st, err = p.stats(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.LatencyMicros) != 3 || st.LatencyMicros[0] < 1e6 {
		t.Errorf("latencies = %v µs, want 3 of at least a second", st.LatencyMicros)
	}
	if st, err = p.reset(ctx, 0); err != nil || st.Requests != 0 || st.Events != 0 {
		t.Errorf("reset = %+v, %v, want zero counts", st, err)
	}
	if st, err = p.wait(ctx, false, 1, 50*time.Millisecond); err != nil || st.Requests != 0 {
		t.Errorf("wait for a request that never comes = %+v, %v, want zero after the timeout", st, err)
	}
}
