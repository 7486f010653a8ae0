//! Cluster: shards across nodes. Membership by gossip, placement by weighted
//! rendezvous hashing over members, shards away from home recorded in a
//! gossiped CRDT map, replication with fencing epochs, and a node-to-node
//! protocol.
//!
//! Layout (one concern per file):
//! - [`hash`]: stable hashing shared by every node.
//! - [`placement`]: weighted HRW placement with failure domains (pure).
//! - [`epoch`]: fencing epochs and data versions.
//! - [`overrides`]: the versioned override map (LWW CRDT).
//! - [`rebalance`]: which shards move on a membership change, throttled (pure).
//!
//! Core state machines take time and messages as input and return messages
//! as output; the simulator and the real node drive the same code.

pub mod attacher;
pub mod client;
pub mod conn;
pub mod epoch;
pub mod gossip;
pub mod hash;
pub mod membership;
pub mod node;
pub mod overrides;
pub mod placement;
pub mod proto;
pub mod rebalance;
pub mod replica;
pub mod server;
pub mod sim;
pub mod store;
pub mod wire;
