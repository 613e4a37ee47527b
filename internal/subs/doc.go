// Package subs is the subscription index: the active subscriptions by event and
// site, kept current from walhook.subscriptions changes that arrive on the
// replication stream, in commit order, with the row changes they govern.
//
// Invariants:
//   - The index reflects exactly the subscriptions committed before the change
//     being matched. At start it is loaded from walhook.subscription_log as of
//     the slot's confirmed LSN, not from the live table, so that a change
//     replayed after a restart is matched against the subscriptions of its own
//     time; later subscription changes arrive on the stream and are applied
//     in order.
//   - Every subscription change the stream applies is written to the log, in
//     the transaction's acknowledgement path, before the slot may pass it.
//   - Lookup cost grows with the depth of the site path, not with the number
//     of subscriptions: each entry of a subscription's events (a name,
//     noun.*, *.verb or *) is filed under its own key, and a lookup reads at
//     most four keys per site.
//   - Match returns a subscription at most once per event, however many of
//     its entries match: one event is one request per subscription.
//
// The Index is owned by the consumer goroutine and is not safe for concurrent
// use.
package subs
