//! LoRaWAN transports. The rules are `verifier::lorawan` (pure); the state is the registry
//! (sealed root and session keys, DevNonces, JoinNonces, frame counters). This module joins them:
//! [`join`] is the join server's logic, shared by the Backend Interfaces HTTP endpoint and the
//! packet-forwarder (UDP) path.

pub mod backend;
pub mod join;
