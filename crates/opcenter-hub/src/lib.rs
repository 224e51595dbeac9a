//! opcenter-hub (placeholder)
