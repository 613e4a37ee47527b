package acl

import (
	"fmt"
	"testing"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/ext"
)

type est struct{ n uint64 }

func (e est) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	return &cost.SizeEstimate{Min: 0, Max: e.n}
}
func (est) EstimateCallCost(function, overloadID string, target *cost.AstNode, args []cost.AstNode) *cost.CallEstimate {
	return nil
}

func TestScratch(t *testing.T) {
	m := cel.MapType(cel.StringType, cel.DynType)
	env, err := cel.NewEnv(cel.Variable("row", m), cel.Variable("old", m), cel.Variable("new", cel.DynType), cel.Variable("owner", m),
		cel.OptionalTypes(), ext.Strings(), ext.Sets(), ext.Lists(), cel.CrossTypeNumericComparisons(true))
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{
		"row.tenant_id in owner.tenants || owner.admin",
		"old == null", "new == null", "old.status != 'paid'", "has(old.status)", "old.?status.orValue('') == 'x'",
		"row.title.contains(owner.name)",
		"owner.tenants.exists(t, t == row.tenant_id)",
		"sets.intersects(owner.tenants, row.tags)",
		"owner.groups.exists(g, row.acl.exists(a, a == g))",
		"owner.groups.exists(g, row.acl.exists(a, row.x.exists(b, a == g && b == a)))",
		"row.title.matches(owner.re)",
		"row.amount > 100", "1", "row.tenant_id",
	} {
		ast, iss := env.Compile(src)
		if iss.Err() != nil {
			fmt.Println(src, "ERR", iss.Err())
			continue
		}
		for _, n := range []uint64{100, 1000, 10000} {
			c, err := env.EstimateCost(ast, est{n})
			fmt.Printf("%-60s n=%d %v %v %v\n", src, n, c.Min, c.Max, err)
		}
		c, err := env.EstimateCost(ast, est{1 << 63})
		fmt.Println("  unbounded:", c.Max, err, ast.OutputType())
	}
}
