package deliver

import (
	"reflect"
	"testing"
	"time"

	"github.com/walhook/walhook/mapping"
)

func TestSettingsFrom(t *testing.T) {
	t.Parallel()
	got := SettingsFrom(mapping.Delivery{})
	want := Settings{Timeout: DefaultTimeout, Retry: DefaultRetry(), MaxInFlight: DefaultMaxInFlight, MaxPerHost: DefaultMaxPerHost, History: DefaultHistory}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("SettingsFrom(unset) = %+v, want %+v", got, want)
	}
	set := mapping.Delivery{Timeout: time.Second, Retry: []time.Duration{time.Minute}, MaxInFlight: 3, MaxPerHost: 2, History: 1}
	if got := SettingsFrom(set); !reflect.DeepEqual(got, Settings(set)) {
		t.Fatalf("SettingsFrom(set) = %+v, want %+v", got, set)
	}
	// DefaultRetry hands out copies: changing one must not change the default.
	DefaultRetry()[0] = time.Hour
	if DefaultRetry()[0] != 0 {
		t.Fatal("DefaultRetry()[0] changed by a caller")
	}
}

func TestDialectDefaults(t *testing.T) {
	t.Parallel()
	parse := func(yaml string) *mapping.Config {
		t.Helper()
		cfg, err := mapping.Parse("walhook.yaml", []byte("tables:\n  - table: public.t\n    noun: t\n    acl: 'true'\n"+yaml))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	d := Dialects(parse(""), "1.0")
	if d["default"].Method != DefaultMethod || d["default"].Body != mapping.BodyEnvelope || d["default"].UserAgent != "walhook/1.0" {
		t.Fatalf("default dialect = %+v", d["default"])
	}
	if d["zapier"].RateLimit != ZapierRateLimit || d["zapier"].Body != mapping.BodyRow {
		t.Fatalf("zapier dialect = %+v, want the row body and a rate limit of %d", d["zapier"], ZapierRateLimit)
	}
	// An explicit 0 turns the zapier limit off; it is not "unset".
	d = Dialects(parse("dialects:\n  zapier:\n    rate_limit: 0\n"), "1.0")
	if d["zapier"].RateLimit != 0 {
		t.Fatalf("zapier rate_limit: 0 gives %v, want no limit", d["zapier"].RateLimit)
	}
}

func TestDialectBatch(t *testing.T) {
	t.Parallel()
	cfg, err := mapping.Parse("walhook.yaml", []byte(`tables:
  - table: public.orders
    noun: order
    acl: "true"
dialects:
  bulk:
    batch: {max_events: 5}
  big:
    batch: {max_events: 10000, max_wait: 1m, max_bytes: 16777216}
  plain: {}
`))
	if err != nil {
		t.Fatalf("Parse() = %v", err)
	}
	d := Dialects(cfg, "test")
	tests := []struct {
		name string
		want *Batch
	}{
		{"bulk", &Batch{MaxEvents: 5, MaxWait: DefaultBatchWait, MaxBytes: DefaultBatchBytes}},
		{"big", &Batch{MaxEvents: 10000, MaxWait: time.Minute, MaxBytes: 16 << 20}},
		{"plain", nil},
		{"default", nil},
		{"zapier", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := d[tc.name].Batch; !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Dialects()[%q].Batch = %+v, want %+v", tc.name, got, tc.want)
			}
		})
	}
}
