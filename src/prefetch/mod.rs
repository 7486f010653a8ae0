//! Prefetch engine (being written).
