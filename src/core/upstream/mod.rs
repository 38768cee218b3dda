//! Upstream selection: load-balancing pickers over a snapshot's endpoints. Pickers hold
//! per-worker state (cursors) and are never shared between cores.
