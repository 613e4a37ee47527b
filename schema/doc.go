// Package schema owns walhook's SQL: the walhook schema as embedded, numbered
// migrations, and the installer that applies them.
//
// Invariants:
//   - Migrations are applied in version order, each at most once, inside one
//     transaction that holds a transaction-scoped advisory lock, so concurrent
//     installs serialise and a failed install leaves nothing half-applied.
//   - A migration file never changes once released; new behaviour is a new file.
//   - Installing twice with the same config changes nothing; the report lists
//     only what changed.
package schema
