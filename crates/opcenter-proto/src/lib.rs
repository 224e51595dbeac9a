//! opcenter-proto (placeholder)
