//! Persistent pool metadata (being written).
