package deliver

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	p := RetryPolicy{Schedule: []time.Duration{0, 10 * time.Second, time.Minute}, History: 3}.withDefaults()
	mid := func() float64 { return 0.5 }   // no jitter
	low := func() float64 { return 0 }     // -20%
	high := func() float64 { return 0.99 } // almost +20%
	netErr := errors.New("connection refused")
	tests := []struct {
		name       string
		attempt    int
		o          Outcome
		retryAfter time.Duration
		rnd        func() float64
		want       verdict
		wantDelay  time.Duration
		// tolerance for float rounding of the jittered delay
		slack time.Duration
	}{
		{name: "2xx succeeds", attempt: 1, o: Outcome{Status: 204}, rnd: mid, want: verdictSucceeded},
		{name: "410 is gone", attempt: 1, o: Outcome{Status: http.StatusGone}, rnd: mid, want: verdictGone},
		{name: "410 on the last attempt is still gone", attempt: 3, o: Outcome{Status: http.StatusGone}, rnd: mid, want: verdictGone},
		{name: "503 retries on the schedule", attempt: 1, o: Outcome{Status: 503}, rnd: mid, want: verdictRetry, wantDelay: 10 * time.Second},
		{name: "network error retries", attempt: 2, o: Outcome{Err: netErr}, rnd: mid, want: verdictRetry, wantDelay: time.Minute},
		{name: "redirect retries", attempt: 1, o: Outcome{Status: 302, Err: ErrRedirect}, rnd: mid, want: verdictRetry, wantDelay: 10 * time.Second},
		{name: "2xx with an error is a failure", attempt: 1, o: Outcome{Status: 200, Err: netErr}, rnd: mid, want: verdictRetry, wantDelay: 10 * time.Second},
		{name: "schedule used up", attempt: 3, o: Outcome{Status: 500}, rnd: mid, want: verdictFailed},
		{name: "jitter low", attempt: 1, o: Outcome{Status: 500}, rnd: low, want: verdictRetry, wantDelay: 8 * time.Second},
		{name: "jitter high", attempt: 1, o: Outcome{Status: 500}, rnd: high, want: verdictRetry, wantDelay: 11960 * time.Millisecond, slack: time.Millisecond},
		{name: "retry-after postpones", attempt: 1, o: Outcome{Status: 429}, retryAfter: 30 * time.Second, rnd: mid, want: verdictRetry, wantDelay: 30 * time.Second},
		{name: "retry-after cannot hasten", attempt: 2, o: Outcome{Status: 429}, retryAfter: time.Second, rnd: mid, want: verdictRetry, wantDelay: time.Minute},
		{name: "retry-after capped", attempt: 1, o: Outcome{Status: 503}, retryAfter: 48 * time.Hour, rnd: mid, want: verdictRetry, wantDelay: DefaultMaxRetryAfter},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, d := p.decide(tc.attempt, tc.o, tc.retryAfter, tc.rnd)
			if v != tc.want || d < tc.wantDelay-tc.slack || d > tc.wantDelay+tc.slack {
				t.Fatalf("decide(%d, %+v) = %v, %s, want %v, %s", tc.attempt, tc.o, v, d, tc.want, tc.wantDelay)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		in   string
		want time.Duration
	}{
		{name: "empty", in: "", want: 0},
		{name: "seconds", in: "120", want: 2 * time.Minute},
		{name: "spaces", in: " 7 ", want: 7 * time.Second},
		{name: "huge seconds saturate", in: "99999999999999999999999", want: 24 * time.Hour},
		{name: "negative", in: "-5", want: 0},
		{name: "fraction", in: "1.5", want: 0},
		{name: "http date", in: now.Add(90 * time.Second).Format(http.TimeFormat), want: 90 * time.Second},
		{name: "date in the past", in: now.Add(-time.Hour).Format(http.TimeFormat), want: 0},
		{name: "garbage", in: "soon", want: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ParseRetryAfter(tc.in, now); got != tc.want {
				t.Fatalf("ParseRetryAfter(%q) = %s, want %s", tc.in, got, tc.want)
			}
		})
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "Wed, 21 Oct 2015 07:28:00 GMT", "", "x"} {
		f.Add(s)
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, s string) {
		if d := ParseRetryAfter(s, now); d < 0 {
			t.Fatalf("ParseRetryAfter(%q) = %s, want >= 0", s, d)
		}
	})
}

func TestNewestPerSubscription(t *testing.T) {
	rec := func(sub string, attempt int) record {
		return record{r: &Request{SubscriptionID: sub, Attempt: attempt}}
	}
	batch := []record{rec("a", 1), rec("b", 1), rec("a", 2), rec("a", 3), rec("b", 2), rec("a", 4)}
	got := newestPerSubscription(batch, 2)
	var desc []string
	for _, r := range got {
		desc = append(desc, fmt.Sprintf("%s%d", r.r.SubscriptionID, r.r.Attempt))
	}
	if want := "b1 a3 b2 a4"; strings.Join(desc, " ") != want {
		t.Fatalf("newestPerSubscription() = %v, want %s (the newest two of each, in order)", desc, want)
	}
	if got := newestPerSubscription(batch[:2], 2); len(got) != 2 {
		t.Fatalf("a batch within history was cut to %d", len(got))
	}
}
