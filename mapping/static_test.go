package mapping

import (
	"slices"
	"strings"
	"testing"
)

const staticBase = `tables:
  - table: public.orders
    noun: order
    acl: 'true'
    events:
      - {name: order.paid, on: update, when: 'true'}
`

func TestParseStaticSubscriptions(t *testing.T) {
	t.Setenv("WALHOOK_TEST_HOST", "audit.example.com")
	t.Setenv("WALHOOK_TEST_SECRET", "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")
	cfg, err := Parse("walhook.yaml", []byte(staticBase+`subscriptions:
  - name: audit
    events: ["*"]
    target: https://${WALHOOK_TEST_HOST}/hook
    owner: system
    secret: ${WALHOOK_TEST_SECRET}
  - name: paid.zap
    events: [order.paid, "*.deleted"]
    target: https://hooks.zapier.com/x
    owner: "42"
    site: /acme
    dialect: zapier
`))
	if err != nil {
		t.Fatalf("Parse() error: %v", err)
	}
	if len(cfg.Subscriptions) != 2 {
		t.Fatalf("Subscriptions = %d, want 2", len(cfg.Subscriptions))
	}
	a, z := cfg.Subscriptions[0], cfg.Subscriptions[1]
	if a.Name != "audit" || !slices.Equal(a.Events, []string{"*"}) || a.Target != "https://audit.example.com/hook" ||
		a.Owner != "system" || a.Site != "/" || a.Dialect != DialectDefault || a.Secret != "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0" ||
		a.Pos != "walhook.yaml:8" {
		t.Fatalf("audit = %+v, want the declared values with ${ENV} expanded and defaults", a)
	}
	if z.Site != "/acme" || z.Dialect != DialectZapier || !slices.Equal(z.Events, []string{"order.paid", "*.deleted"}) || z.Secret != "" {
		t.Fatalf("paid.zap = %+v", z)
	}
}

func TestParseStaticSubscriptionErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"missing fields", "subscriptions:\n  - name: a\n", "walhook.yaml:8: subscriptions[0].events: required"},
		{"missing target", "subscriptions:\n  - {name: a, events: [order.created], owner: x}\n", "walhook.yaml:8: subscriptions[0].target: required"},
		{"repeated name", "subscriptions:\n  - {name: a, events: [order.created], target: https://x/h, owner: x}\n  - {name: a, events: [order.created], target: https://x/h, owner: x}\n",
			`walhook.yaml:9: subscriptions[1].name: name "a" is already used at line 8`},
		{"bad name", "subscriptions:\n  - {name: Audit Log, events: [order.created], target: https://x/h, owner: x}\n", `subscriptions[0].name: invalid name "Audit Log"`},
		{"malformed pattern", "subscriptions:\n  - name: a\n    events: [order.cr*]\n    target: https://x/h\n    owner: x\n",
			`walhook.yaml:9: subscriptions[0].events[0]: "order.cr*" is neither an event name nor a pattern`},
		{"unknown event", "subscriptions:\n  - name: a\n    events: [order.craeted]\n    target: https://x/h\n    owner: x\n",
			`walhook.yaml:9: subscriptions[0].events[0]: "order.craeted" matches no event of the tables; did you mean "order.created"?`},
		{"pattern matching nothing", "subscriptions:\n  - name: a\n    events: [\"*.archived\"]\n    target: https://x/h\n    owner: x\n",
			`subscriptions[0].events[0]: "*.archived" matches no event`},
		{"unset variable", "subscriptions:\n  - name: a\n    events: [order.created]\n    target: https://x/h\n    owner: x\n    secret: ${WALHOOK_TEST_UNSET_VAR}\n",
			"walhook.yaml:12: subscriptions[0].secret: environment variable WALHOOK_TEST_UNSET_VAR is not set"},
		{"unknown dialect", "subscriptions:\n  - {name: a, events: [order.created], target: https://x/h, owner: x, dialect: zappier}\n",
			`subscriptions[0].dialect: unknown dialect "zappier"; did you mean "zapier"?`},
		{"unknown key", "subscriptions:\n  - {name: a, events: [order.created], target: https://x/h, owner: x, url: y}\n", `subscriptions[0].url: unknown key "url"`},
		{"not a list", "subscriptions: {a: 1}\n", "walhook.yaml:7: subscriptions: want a list"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("walhook.yaml", []byte(staticBase+tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse() error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestEventMatches(t *testing.T) {
	tests := []struct {
		entry, name string
		want        bool
	}{
		{"*", "order.created", true},
		{"order.*", "order.created", true},
		{"order.*", "order.item.added", true},
		{"order.*", "orders.created", false},
		{"*.created", "order.created", true},
		{"*.created", "order.item.created", true},
		{"*.created", "order.recreated", false},
		{"order.created", "order.created", true},
		{"order.created", "order.updated", false},
	}
	for _, tc := range tests {
		if got := EventMatches(tc.entry, tc.name); got != tc.want {
			t.Fatalf("EventMatches(%q, %q) = %v, want %v", tc.entry, tc.name, got, tc.want)
		}
	}
}
