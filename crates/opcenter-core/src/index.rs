//! The spatial index of assignable units (work in progress).
