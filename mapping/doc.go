// Package mapping turns the YAML config into compiled table mappings, and
// committed row changes into events.
//
// Load and Parse read walhook.yaml; CheckCatalog checks it against the
// database's tables as described by a Catalog the caller builds; New compiles
// it into a Mapper whose Map turns a change.Change into Events, and whose
// Tables render rows as JSON with AppendData.
//
// Invariants:
//   - No I/O except Load reading the config file, and no network code: the
//     catalog arrives as a value, so the package is tested from bytes. (internal/change imports pglogrepl for the LSN
//     type and pgtype for type OIDs, which pull pgconn into the build; nothing
//     here calls them.)
//   - Every config problem is reported, all at once, as
//     "file:line: field.path: problem" (Errors of ConfigError); list indices in
//     field paths are 0-based. Parse fills the table defaults (verbs);
//     delivery and dialect defaults have one owner, package deliver, which
//     applies them in one place (deliver.SettingsFrom, deliver.Dialects).
//   - Event ids are deterministic: EventID hashes the commit LSN, the change's
//     position in its transaction and the event name, so a change replayed
//     after a restart carries the same id and receivers can deduplicate.
//   - Event names are unique across the config: one name, one table.
//   - `verbs:` replaces the default verbs entirely: an operation it leaves out,
//     or maps to "", produces no standard event.
//   - AppendData never reports an unchanged TOAST value as null: it fills the
//     value from the fill row when that has it, and otherwise leaves the column
//     out. Key columns can never be filtered out.
//   - A Mapper is immutable after New and safe for concurrent use. Per-table
//     column filters are cached by *change.Relation, so the stream must treat a
//     Relation as immutable once handed out and send a new one on DDL.
//   - Derived events' conditions (`when`) and a table's `payload` are CEL,
//     compiled by New in the environment internal/expr shares with package
//     acl, their problems reported as file:line like the rest. Map produces
//     the standard event; the pipeline asks Table.When for each derived one
//     and Table.Payload for the body, so that it can hold a delivery whose
//     expression fails rather than guess.
package mapping
