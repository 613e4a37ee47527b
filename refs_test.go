package walhook

import (
	"strings"
	"testing"

	"github.com/walhook/walhook/mapping"
)

const ownersBlock = "owners:\n  query: SELECT id::text AS id, tenants, admin FROM app.users WHERE id::text = ANY($1)\n"

func TestCheckColumns(t *testing.T) {
	t.Parallel()
	cat := mapping.Catalog{"public.orders": {
		{Name: "id"}, {Name: "account_id"}, {Name: "tenant_id"}, {Name: "status"}, {Name: "total"},
	}}
	owners := []string{"id", "tenants", "admin"}
	tests := []struct {
		name  string
		yaml  string
		owner []string
		want  []string // one substring per expected error, in order; none for success
	}{
		{
			name:  "every form of reference, all known",
			yaml:  "tables:\n  - table: public.orders\n    noun: order\n    acl: row.tenant_id in owner.tenants && has(row.status) && row['total'] > 0 && row.?account_id.orValue(0) > 0 && owner.id != ''\n    payload: '{\"id\": row.id}'\n",
			owner: owners,
		},
		{
			name:  "typo in row",
			yaml:  "tables:\n  - table: public.orders\n    noun: order\n    acl: row.acount_id == owner.id\n",
			owner: owners,
			want:  []string{`walhook.yaml:4: tables[0].acl: column 1: row.acount_id: public.orders has no column "acount_id"; did you mean "account_id"?`},
		},
		{
			name:  "typo in owner",
			yaml:  ownersBlock + "tables:\n  - table: public.orders\n    noun: order\n    acl: row.tenant_id in owner.tenant\n",
			owner: owners,
			want:  []string{`walhook.yaml:6: tables[0].acl: column 18: owner.tenant: owners.query returns no column "tenant"; did you mean "tenants"?`},
		},
		{
			name:  "index, has and optional select in a when, on its own line",
			yaml:  "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n    events:\n      - name: order.paid\n        on: update\n        when: |\n          has(new.stat) &&\n          old['totl'] != new.?status.orValue('')\n",
			owner: owners,
			want: []string{
				`walhook.yaml:9: tables[0].events[0].when: column 5: new.stat: public.orders has no column "stat"; did you mean "status"?`,
				`walhook.yaml:10: tables[0].events[0].when: column 1: old.totl: public.orders has no column "totl"; did you mean "total"?`,
			},
		},
		{
			name:  "payload",
			yaml:  "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n    payload: '{\"s\": row.satus}'\n",
			owner: owners,
			want:  []string{`walhook.yaml:5: tables[0].payload: column 7: row.satus`},
		},
		{
			name:  "owner attribute without an owners block",
			yaml:  "tables:\n  - table: public.orders\n    noun: order\n    acl: owner.admin\n",
			owner: []string{"id"},
			want:  []string{`owner.admin: without an owners block owner has only id, no attribute "admin"`},
		},
		{
			name:  "owner unknown is skipped",
			yaml:  "tables:\n  - table: public.orders\n    noun: order\n    acl: owner.whatever\n",
			owner: nil,
		},
		{
			name:  "computed key and shadowing variable are not references",
			yaml:  "tables:\n  - table: public.orders\n    noun: order\n    acl: \"row[op] == 1 || [{'nope': 1}].exists(row, row.nope == 1)\"\n",
			owner: owners,
		},
		{
			name:  "unknown table is left to CheckCatalog",
			yaml:  "tables:\n  - table: public.ordres\n    noun: order\n    acl: row.x == 1\n",
			owner: owners,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := mapping.Parse("walhook.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			mapper, rules, err := compileConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = checkColumns(cfg, references(mapper, rules), cat, tc.owner)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("CheckColumns() = %v, want nil", err)
				}
				return
			}
			errs, ok := err.(mapping.Errors)
			if !ok || len(errs) != len(tc.want) {
				t.Fatalf("CheckColumns() = %v, want %d error(s)", err, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(errs[i].Error(), w) {
					t.Fatalf("CheckColumns() error %d = %q, want it to contain %q", i, errs[i].Error(), w)
				}
			}
		})
	}
}
