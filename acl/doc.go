// Package acl decides which subscribers may see a row change, by the per-table
// CEL rules of the config, and caches the owner attributes those rules read.
//
// Compile turns every tables[].acl and tables[].events[].when of a
// mapping.Config into Rules. For each row change the caller converts the rows
// once (RowValues, or InputFor for a change.Change), then asks Allow, or
// AllowMany for a row fanned out to many owners, and When for derived events.
// Owners caches owner attributes loaded through a Source the caller
// implements with the config's owners.query.
//
// Rules see these variables:
//
//	row    map    the new row; the old row for deletes
//	new    map    the new row, null for deletes
//	old    map    the old row, null when not sent (inserts; updates unless the
//	              key changed or the table is REPLICA IDENTITY FULL)
//	op     string insert, update or delete
//	owner  map    the owner's attributes; owner.id is always set (acl only)
//	table  string schema.name
//	site   string the row's site path
//
// Invariants:
//   - A rule that fails to evaluate denies: Allow returns false with the error,
//     When returns false with the error. A column that was not sent (an
//     unchanged TOAST value, or a non-key column of an old row without
//     REPLICA IDENTITY FULL) is absent from the row, never null, so reading it
//     fails and denies instead of judging a value that is not there.
//   - Every rule passed Compile's checks: it parses, type-checks against the
//     variables above, gives a bool (or dyn, checked per evaluation), and its
//     estimated cost is at most MaxCost when every string, list and map it
//     reads has AssumedSize elements. Deeply nested comprehensions are refused
//     when the config loads rather than stalling the pipeline per row, and a
//     rule with a comprehension that meets far larger values than assumed is
//     stopped at RuntimeCostLimit and denies.
//   - A `when` cannot read owner: a derived event exists or not for everyone,
//     and each subscriber is then judged by the table's acl.
//   - Rules is immutable after Compile and safe for concurrent use. Evaluation
//     binds variables from a pooled struct, not a map, and row values are
//     converted once per row, so judging one more owner allocates nothing
//     beyond what the rule's own expression builds.
//   - Owners does no I/O of its own and never returns attributes it has not
//     loaded: a failed load returns an error and no attributes. Owners the
//     Source does not find are cached as absent until Invalidate, so a deleted
//     owner costs no query per row. A load that began before Invalidate is
//     returned to its caller but not cached.
//   - The package imports no network code (no pgx, no net/http); PostgreSQL
//     type OIDs are spelled out in values.go.
package acl
