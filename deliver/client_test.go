package deliver

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sourcegraph/conc"
)

// newTestWorker returns a Worker without a database: outcomes go to record,
// which stands in for the recorder (and so must call Done, as it does).
func newTestWorker(tb testing.TB, cfg Config, record func(r *Request, o Outcome)) *Worker {
	tb.Helper()
	w := newWorker(cfg, slog.New(slog.DiscardHandler))
	w.record = func(_ context.Context, r *Request, o Outcome) {
		if record != nil {
			record(r, o)
		}
		if r.Done != nil {
			r.Done()
		}
	}
	tb.Cleanup(w.Wait)
	return w
}

// countingListener listens on addr and counts the connections it accepts,
// closing each at once.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func listenCounting(tb testing.TB, addr string) (*countingListener, error) {
	tb.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	cl := &countingListener{Listener: ln}
	var wg conc.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cl.accepted.Add(1)
			c.Close()
		}
	})
	tb.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return cl, nil
}

func TestAttemptRefusesLoopbackSpellings(t *testing.T) {
	t.Parallel()
	ln4, err := listenCounting(t, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	port := strconv.Itoa(ln4.Addr().(*net.TCPAddr).Port)
	// Also listen on [::1] at the same port where the host has IPv6, so
	// the [::1] spellings would find a socket if they got through.
	ln6, _ := listenCounting(t, net.JoinHostPort("::1", port))

	w := newTestWorker(t, Config{AllowHTTP: true, Timeout: 2 * time.Second}, nil)
	tests := []struct {
		name string
		host string
		// mustBlock: the name resolves to loopback, so the refusal must
		// come from the address check. The other spellings are not
		// accepted by Go's resolver at all; they must fail either way.
		mustBlock bool
	}{
		{"localhost", "localhost", true},
		{"dotted quad", "127.0.0.1", true},
		{"short form", "127.1", false},
		{"hex", "0x7f000001", false},
		{"decimal", "2130706433", false},
		{"ipv6 loopback", "[::1]", true},
		{"ipv4-mapped ipv6", "[::ffff:127.0.0.1]", true},
		{"octal", "0177.0.0.1", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u := "http://" + tc.host + ":" + port + "/hook"
			o := w.attempt(t.Context(), &Request{URL: u, Method: http.MethodPost, EventID: "evt_1"})
			if o.Err == nil {
				t.Fatalf("attempt(%s) = %+v, want an error", u, o)
			}
			var blocked *BlockedAddressError
			isBlocked := errors.As(o.Err, &blocked)
			if tc.mustBlock && !isBlocked {
				t.Fatalf("attempt(%s) error = %v, want a BlockedAddressError", u, o.Err)
			}
			if isBlocked && (blocked.Reason == "" || !strings.Contains(o.Err.Error(), blocked.Reason)) {
				t.Fatalf("attempt(%s) error = %q, want it to carry the reason %q", u, o.Err, blocked.Reason)
			}
		})
	}
	if n := ln4.accepted.Load(); n != 0 {
		t.Fatalf("127.0.0.1 listener accepted %d connections, want 0", n)
	}
	if ln6 != nil {
		if n := ln6.accepted.Load(); n != 0 {
			t.Fatalf("[::1] listener accepted %d connections, want 0", n)
		}
	}
}

func TestBlockedReason(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		addr    string
		blocked bool
	}{
		{"rfc1918 10/8", "10.1.2.3", true},
		{"rfc1918 172.16/12", "172.31.255.1", true},
		{"rfc1918 192.168/16", "192.168.0.1", true},
		{"cloud metadata", "169.254.169.254", true},
		{"cgnat 100.64/10", "100.64.0.1", true},
		{"multicast", "224.0.0.1", true},
		{"unspecified v4", "0.0.0.0", true},
		{"unspecified v6", "::", true},
		{"link-local v6", "fe80::1", true},
		{"link-local v6 with zone", "fe80::1%eth0", true},
		{"unique local v6", "fc00::1", true},
		{"reserved 240/4", "240.0.0.1", true},
		{"loopback v4", "127.0.0.1", true},
		{"loopback v6", "::1", true},
		{"mapped private", "::ffff:10.0.0.1", true},
		{"public v4", "93.184.216.34", false},
		{"public v6", "2606:4700::1111", false},
		{"just outside 172.16/12", "172.32.0.1", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := blockedReason(netip.MustParseAddr(tc.addr))
			if (got != "") != tc.blocked {
				t.Fatalf("blockedReason(%s) = %q, want blocked %v", tc.addr, got, tc.blocked)
			}
		})
	}
	if got := blockedReason(netip.Addr{}); got == "" {
		t.Fatalf("blockedReason(zero Addr) = %q, want blocked", got)
	}
}

func TestCheckDialAllowCIDRs(t *testing.T) {
	t.Parallel()
	allow := []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("fd00:1::/32")}
	tests := []struct {
		name         string
		address      string
		allowPrivate bool
		allow        []netip.Prefix
		wantErr      bool
	}{
		{"private refused", "10.20.1.1:443", false, nil, true},
		{"private in allow-list", "10.20.1.1:443", false, allow, false},
		{"mapped private in allow-list", "[::ffff:10.20.1.1]:443", false, allow, false},
		{"private outside allow-list", "10.21.1.1:443", false, allow, true},
		{"metadata outside allow-list", "169.254.169.254:80", false, allow, true},
		{"v6 in allow-list", "[fd00:1::5]:443", false, allow, false},
		{"v6 outside allow-list", "[fd00:2::5]:443", false, allow, true},
		{"allow private", "127.0.0.1:80", true, nil, false},
		{"public", "93.184.216.34:443", false, allow, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkDial(tc.address, tc.allowPrivate, tc.allow)
			if (err != nil) != tc.wantErr {
				t.Fatalf("checkDial(%s) = %v, want error %v", tc.address, err, tc.wantErr)
			}
			var blocked *BlockedAddressError
			if err != nil && !errors.As(err, &blocked) {
				t.Fatalf("checkDial(%s) = %v, want a BlockedAddressError", tc.address, err)
			}
		})
	}
}

// TestAttemptAllowCIDRs reaches a loopback receiver through the allow-list
// while private targets are otherwise refused.
func TestAttemptAllowCIDRs(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	tests := []struct {
		name  string
		allow []netip.Prefix
		want  bool
	}{
		{"loopback allowed", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, true},
		{"other range allowed", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newTestWorker(t, Config{AllowHTTP: true, AllowCIDRs: tc.allow, Timeout: 2 * time.Second}, nil)
			o := w.attempt(t.Context(), &Request{URL: srv.URL, Method: http.MethodPost})
			if o.Succeeded() != tc.want {
				t.Fatalf("attempt() = %+v, want succeeded %v", o, tc.want)
			}
		})
	}
}

func TestAttemptResponses(t *testing.T) {
	t.Parallel()
	const timeout = 500 * time.Millisecond

	// target must never be reached: it is where the redirect points.
	var targetHits atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		targetHits.Add(1)
	}))
	t.Cleanup(target.Close)

	// endless is closed when the never-ending body's writer sees the
	// connection go away, i.e. the client cut it off.
	endless := make(chan struct{})
	tests := []struct {
		name    string
		handler http.HandlerFunc
		check   func(t *testing.T, o Outcome)
	}{
		{
			name: "redirect not followed",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL+"/stolen", http.StatusFound)
			},
			check: func(t *testing.T, o Outcome) {
				if !errors.Is(o.Err, ErrRedirect) || !strings.Contains(o.Err.Error(), "redirect") {
					t.Fatalf("Err = %v, want %v", o.Err, ErrRedirect)
				}
				if o.Succeeded() {
					t.Fatalf("Succeeded() = true for a redirect")
				}
				if n := targetHits.Load(); n != 0 {
					t.Fatalf("redirect target got %d requests, want 0", n)
				}
			},
		},
		{
			name: "oversized body",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				chunk := []byte(strings.Repeat("x", 64<<10))
				for range (10 << 20) / len(chunk) {
					if _, err := w.Write(chunk); err != nil {
						return
					}
				}
			},
			check: func(t *testing.T, o Outcome) {
				if !o.Succeeded() {
					t.Fatalf("attempt() = %+v, want success", o)
				}
				if len(o.Excerpt) == 0 || len(o.Excerpt) > DefaultExcerptBytes {
					t.Fatalf("len(Excerpt) = %d, want 1..%d", len(o.Excerpt), DefaultExcerptBytes)
				}
			},
		},
		{
			name: "never-ending body",
			handler: func(w http.ResponseWriter, r *http.Request) {
				defer close(endless)
				rc := http.NewResponseController(w)
				for {
					// Slow enough that MaxResponseBytes is not what ends it.
					if _, err := w.Write([]byte("x")); err != nil {
						return
					}
					if err := rc.Flush(); err != nil {
						return
					}
					select {
					case <-r.Context().Done():
						return
					case <-time.After(10 * time.Millisecond):
					}
				}
			},
			check: func(t *testing.T, o Outcome) {
				if o.Status != http.StatusOK {
					t.Fatalf("Status = %d, want %d", o.Status, http.StatusOK)
				}
				if len(o.Excerpt) > DefaultExcerptBytes {
					t.Fatalf("len(Excerpt) = %d, want <= %d", len(o.Excerpt), DefaultExcerptBytes)
				}
				select {
				case <-endless:
				case <-time.After(10 * time.Second):
					t.Fatalf("the receiver was never cut off")
				}
			},
		},
		{
			name: "headers never sent",
			handler: func(_ http.ResponseWriter, r *http.Request) {
				<-r.Context().Done()
			},
			check: func(t *testing.T, o Outcome) {
				if o.Err == nil {
					t.Fatalf("attempt() = %+v, want a timeout error", o)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(tc.handler)
			t.Cleanup(srv.Close)
			w := newTestWorker(t, Config{AllowHTTP: true, AllowPrivate: true, Timeout: timeout}, nil)
			done := make(chan Outcome, 1)
			var wg conc.WaitGroup
			wg.Go(func() { done <- w.attempt(t.Context(), &Request{URL: srv.URL, Method: http.MethodPost}) })
			defer wg.Wait()
			// The attempt, body included, is bounded by its timeout; the
			// generous margin is only so a stuck attempt fails the test
			// instead of hanging it.
			select {
			case o := <-done:
				tc.check(t, o)
			case <-time.After(timeout + 10*time.Second):
				t.Fatalf("attempt did not finish within its timeout")
			}
		})
	}
}

func TestNewClientConfig(t *testing.T) {
	t.Parallel()
	c := NewClient(ClientConfig{Timeout: 7 * time.Second, MaxPerHost: 3})
	tr, ok := c.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("Transport = %T, want *http.Transport", c.Transport)
	}
	tests := []struct {
		name string
		ok   bool
	}{
		{"no proxy from the environment", tr.Proxy == nil},
		{"TLS config set", tr.TLSClientConfig != nil},
		{"TLS 1.2 minimum", tr.TLSClientConfig != nil && tr.TLSClientConfig.MinVersion == tls.VersionTLS12},
		{"certificate verification on", tr.TLSClientConfig != nil && !tr.TLSClientConfig.InsecureSkipVerify},
		{"no transparent decompression", tr.DisableCompression},
		{"whole exchange bounded", c.Timeout == 7*time.Second},
		{"redirects not followed", c.CheckRedirect != nil &&
			errors.Is(c.CheckRedirect(nil, nil), http.ErrUseLastResponse)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.ok {
				t.Fatalf("NewClient(): %s does not hold", tc.name)
			}
		})
	}
}
