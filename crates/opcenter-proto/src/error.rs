//! Protocol error codes (`shared/PROTOCOL.md` section 3) and the error a frame
//! decodes to when it is not a valid command.

use opcenter_core::CoreError;

/// The protocol's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed, wrong types, out-of-range values.
    BadRequest,
    /// Unknown `type`.
    UnknownType,
    /// A command before `hello`.
    Unauthenticated,
    /// A bad token.
    Unauthorized,
    /// The role may not do this.
    Forbidden,
    /// No such object.
    NotFound,
    /// The state forbids it.
    Conflict,
    /// Too many requests.
    RateLimited,
    /// Too large.
    TooLarge,
    /// The server failed (e.g. could not make the change durable).
    Internal,
}

impl ErrorCode {
    /// Every code, in the order PROTOCOL.md lists them.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::Unauthenticated,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::Internal,
    ];

    /// The code of a wire name, `None` for a name this build does not know.
    pub fn from_wire(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Internal => "internal",
        }
    }
}

impl From<&CoreError> for ErrorCode {
    fn from(e: &CoreError) -> Self {
        match e {
            CoreError::BadRequest(_) => ErrorCode::BadRequest,
            CoreError::NotFound(_) => ErrorCode::NotFound,
            CoreError::Forbidden(_) => ErrorCode::Forbidden,
            CoreError::Conflict(_) => ErrorCode::Conflict,
            CoreError::TooLarge(_) => ErrorCode::TooLarge,
        }
    }
}

/// A frame that is not a valid command: what to reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct FrameError {
    /// The frame's `id` when it could be read, else `None` (sent as null).
    pub id: Option<u64>,
    /// The code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl FrameError {
    /// Builds one.
    pub fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        FrameError {
            id,
            code,
            message: message.into(),
        }
    }
}
