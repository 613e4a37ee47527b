// Package acl decides which subscribers may see a row change, by each
// table's CEL rule, and caches the owner attributes those rules read.
//
// Compile takes the rules as the config wrote them (a Table per mapped
// table: its name, its rule, where it was written), not the whole config,
// and compiles them in the CEL environment package internal/expr shares
// with package mapping (which compiles derived events' conditions and
// payloads). For each row change the caller converts the rows once
// (InputFor), then asks Allow, or AllowMany/AllowEach for a row fanned out
// to many owners. Owners caches owner attributes loaded through a Source
// the caller implements with the config's owners.query.
//
// A rule sees row, new, old, op, owner, table and site; see internal/expr.
//
// Invariants:
//   - A rule that fails to evaluate gives false with the error: AllowEach
//     reports the error per owner, so the caller can hold that owner's
//     deliveries instead of treating the failure as a denial.
//   - Every rule passed Compile's checks (see expr.Compile): it parses,
//     type-checks, gives a bool, and its estimated cost is bounded.
//   - Rules is immutable after Compile and safe for concurrent use; judging
//     one more owner allocates nothing beyond what the rule builds.
//   - Owners does no I/O of its own and never returns attributes it has not
//     loaded: a failed load returns an error and no attributes. Owners the
//     Source does not find are cached as absent until Invalidate, so a deleted
//     owner costs no query per row. A load that began before Invalidate is
//     returned to its caller but not cached.
//   - The package imports no network code (no pgx, no net/http).
package acl
