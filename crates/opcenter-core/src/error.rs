//! Typed errors of the engine. Each variant maps one-to-one onto a protocol error
//! code (`shared/PROTOCOL.md` section 3); a failed command leaves state unchanged.

use thiserror::Error;

/// Why a command was refused. State is unchanged whenever one is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    /// Malformed or out-of-range input (`bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// An id that names nothing (`not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The actor may not do this to this object (`forbidden`).
    #[error("{0}")]
    Forbidden(String),
    /// The current state forbids it: unit not available, incident closed, … (`conflict`).
    #[error("{0}")]
    Conflict(String),
    /// The object would grow past a bound (`too_large`): notes per incident.
    #[error("{0}")]
    TooLarge(String),
}

impl CoreError {
    /// The protocol error code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::BadRequest(_) => "bad_request",
            CoreError::NotFound(_) => "not_found",
            CoreError::Forbidden(_) => "forbidden",
            CoreError::Conflict(_) => "conflict",
            CoreError::TooLarge(_) => "too_large",
        }
    }
}
