//! opcenter-store (placeholder)
