//! opcenter-sim (placeholder)
