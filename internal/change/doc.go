// Package change holds the decoded form of one committed row change, shared by
// cdc (which produces it from pgoutput) and mapping, acl and deliver (which
// consume it). It does no I/O, so the pure packages can depend on it without
// pulling in network code.
//
// Invariants:
//   - A Row is aligned with its Relation's Columns: Row[i] is the value of
//     Columns[i].
//   - A Datum of kind Unchanged is an unchanged TOAST value that the stream did
//     not send; it is never reported as NULL. Consumers fill it from the old
//     image when one is present, or leave the column out.
//   - Text is PostgreSQL's text output for the column's type, exactly as sent;
//     JSON conversion happens once, in AppendJSON, without float rounding.
package change
