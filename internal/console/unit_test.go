package console

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func sign(key []byte, payload string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(payload))
	return payload + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func TestVerifyLink(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_800_000_000, 0)
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	good := sign(key, enc(fmt.Sprintf("%d:tenant:42", now.Unix()+60)))
	for _, tc := range []struct {
		name, token, owner string
		err                error
	}{
		{"valid, owner with a colon", good, "tenant:42", nil},
		{"expired", sign(key, enc(fmt.Sprintf("%d:a", now.Unix()))), "", errLinkExpired},
		{"other key", sign([]byte("other"), enc(fmt.Sprintf("%d:a", now.Unix()+60))), "", errLinkInvalid},
		{"no signature", enc("1:a"), "", errLinkInvalid},
		{"signature not base64", enc("1:a") + ".!!", "", errLinkInvalid},
		{"payload not base64", sign(key, "!!"), "", errLinkInvalid},
		{"no owner", sign(key, enc(fmt.Sprintf("%d:", now.Unix()+60))), "", errLinkInvalid},
		{"no expiry", sign(key, enc("a")), "", errLinkInvalid},
		{"empty", "", "", errLinkInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			owner, err := verifyLink(key, tc.token, now)
			if owner != tc.owner || !errors.Is(err, tc.err) {
				t.Fatalf("verifyLink() = %q, %v, want %q, %v", owner, err, tc.owner, tc.err)
			}
		})
	}
}

func TestPretty(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"json", []byte(`{"a":[1,2]}`), "{\n  \"a\": [\n    1,\n    2\n  ]\n}"},
		{"text", []byte("plain"), "plain"},
		{"binary", []byte{0xff, 0xfe}, "(2 bytes of binary data)"},
		{"empty", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := pretty(tc.in); got != tc.want {
				t.Fatalf("pretty() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLoopback(t *testing.T) {
	addr := func(s string) net.Addr { a, _ := net.ResolveTCPAddr("tcp", s); return a }
	for _, tc := range []struct {
		name, local, remote string
		header              string
		want                bool
	}{
		{"loopback", "127.0.0.1:9187", "127.0.0.1:5000", "", true},
		{"ipv6 loopback", "[::1]:9187", "[::1]:5000", "", true},
		{"forwarded by a proxy", "127.0.0.1:9187", "127.0.0.1:5000", "X-Forwarded-For", false},
		{"Forwarded", "127.0.0.1:9187", "127.0.0.1:5000", "Forwarded", false},
		{"public listener", "10.0.0.5:9187", "10.0.0.9:5000", "", false},
		{"remote peer", "127.0.0.1:9187", "10.0.0.9:5000", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/console/", nil)
			r.RemoteAddr = tc.remote
			r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, addr(tc.local)))
			if tc.header != "" {
				r.Header.Set(tc.header, "203.0.113.1")
			}
			if got := loopback(r); got != tc.want {
				t.Fatalf("loopback() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSameOrigin(t *testing.T) {
	for _, tc := range []struct {
		name, origin, fetchSite string
		want                    bool
	}{
		{"same", "http://hooks.example.com", "", true},
		{"other", "https://evil.example", "same-origin", false},
		{"null with same-origin fetch", "null", "same-origin", true},
		{"null cross-site", "null", "cross-site", false},
		{"none", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "http://hooks.example.com/console/login", nil)
			if tc.origin != "" {
				r.Header.Set("Origin", tc.origin)
			}
			if tc.fetchSite != "" {
				r.Header.Set("Sec-Fetch-Site", tc.fetchSite)
			}
			if got := sameOrigin(r); got != tc.want {
				t.Fatalf("sameOrigin() = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestNew: every page's templates parse; the pages without data render.
func TestNew(t *testing.T) {
	c, err := New(Config{}, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	for _, n := range []string{"login", "result", "held"} {
		r := httptest.NewRequest("GET", "/console/", nil)
		w := httptest.NewRecorder()
		c.renderView(w, r, http.StatusOK, n, view{Base: "/console", Data: map[string]any{}})
		if w.Code != http.StatusOK {
			t.Errorf("render %s = %d: %s", n, w.Code, w.Body)
		}
	}
}

// TestLoginRateLimit: sign-ins past the burst are refused with 429 before
// the token is even compared.
func TestLoginRateLimit(t *testing.T) {
	c, err := New(Config{Token: "secret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var last int
	for i := 0; i < 20; i++ {
		r := httptest.NewRequest("POST", "http://walhook.test/console/login", strings.NewReader("token=guess"))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Origin", "http://walhook.test")
		w := httptest.NewRecorder()
		c.ServeHTTP(w, r)
		last = w.Code
	}
	if last != http.StatusTooManyRequests {
		t.Fatalf("20th quick sign-in = %d, want 429", last)
	}
}
