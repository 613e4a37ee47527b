// Package metrics holds walhook's Prometheus collectors.
//
// Invariants:
//   - Every collector is registered on the *prometheus.Registry that New
//     creates, never on the global default registry: one process may run
//     several services (the tests do), and each must report only its own.
//   - The pipeline packages (cdc, deliver) do not import this package or
//     Prometheus. Each declares the small observer interface it needs;
//     *Metrics implements them and cmd/walhook wires the two together.
//   - Label cardinality is bounded: outcomes and rule kinds are fixed sets,
//     and per-destination gauges report at most MaxDestinations
//     destinations by name, summing the rest under "other".
package metrics
