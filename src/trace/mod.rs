//! Block traces (being written).
