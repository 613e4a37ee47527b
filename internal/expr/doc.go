// Package expr is walhook's CEL environment, shared by package mapping
// (derived events' `when` and a table's `payload`) and package acl (a
// table's `acl` rule): one set of variables, one way to compile, cost and
// evaluate an expression, and one conversion of row values to CEL.
//
// Expressions see these variables:
//
//	row    map    the new row; the old row for deletes
//	new    map    the new row, null for deletes
//	old    map    the old row, null when not sent (inserts; updates unless the
//	              key changed or the table is REPLICA IDENTITY FULL)
//	op     string insert, update or delete
//	owner  map    the owner's attributes; owner.id is always set (Rule only)
//	table  string schema.name
//	site   string the row's site path
//
// Invariants:
//   - Every Program passed Compile's checks: it parses, type-checks against
//     the variables of its Kind, gives a bool (Condition, Rule) or a map
//     (Payload), or dyn checked per evaluation, and its estimated cost is at
//     most MaxCost when every string, list and map it reads has AssumedSize
//     elements. A program with a comprehension is stopped at
//     RuntimeCostLimit.
//   - An expression that fails to evaluate returns false (or no payload)
//     with the error: callers decide what a failure means (walhook holds the
//     delivery). A column that was not sent is absent from the row, never
//     null, so reading it fails instead of judging a value that is not there.
//   - A Program is immutable and safe for concurrent use. Evaluation binds
//     variables from a pooled struct, not a map, and rows are converted once
//     per change (InputFor), so judging one more owner allocates nothing
//     beyond what the expression builds.
//   - No I/O and no network code (no pgx, no net/http); PostgreSQL type OIDs
//     are spelled out in values.go.
package expr
