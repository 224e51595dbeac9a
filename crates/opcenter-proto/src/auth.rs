//! Session tokens (`shared/PROTOCOL.md` section 2): HS256 JWTs with the claims
//! `sub`, `role`, `exp`, and for units `unit` (plus optional `callsign`, `kind`,
//! `caps`, `agency`), and the optional registered claims `nbf`, `iss`, `aud`. Minting lives here too, so the CLI, the simulator and the tests make
//! tokens exactly the way the server checks them.
//!
//! Owns: claim shapes, signing and verification, the minimum secret length.
//! Must never: accept any `alg` but HS256, a token without `exp`, or one used
//! before its `nbf`.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use opcenter_core::check;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The development secret of the embedded defaults (`config/default.toml`): what the
/// server verifies and the CLI and simulator sign with when nothing else is configured.
/// Long enough to pass [`MIN_SECRET_BYTES`] like any other secret; the server
/// refuses it unless it listens on a loopback address only.
pub const DEV_SECRET: &str = "opcenter-development-secret-change-me-before-use";

/// A shorter HS256 secret is refused at start: RFC 7518 section 3.2 asks for a
/// key at least as long as the hash (256 bits), and a short one can be brute-forced
/// offline from any token seen on the wire.
pub const MIN_SECRET_BYTES: usize = 32;

// The development secret passes the same rule as any other.
const _: () = assert!(DEV_SECRET.len() >= MIN_SECRET_BYTES);

/// What a session may do, fixed by its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A dispatcher console.
    Dispatcher,
    /// A supervisor's map (read-only).
    Supervisor,
    /// A patrol tablet.
    Unit,
    /// The citizens' app gateway.
    Intake,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Dispatcher, Role::Supervisor, Role::Unit, Role::Intake];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Dispatcher => "dispatcher",
            Role::Supervisor => "supervisor",
            Role::Unit => "unit",
            Role::Intake => "intake",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (dispatcher, supervisor, unit, intake)"))
    }
}

/// The claims of an opcenter token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Who (notes are signed with it).
    pub sub: String,
    /// What the session may do.
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// The unit id; required when `role` is `unit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The unit's callsign (units only, optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callsign: Option<String>,
    /// The unit's kind (units only, optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The unit's capabilities (units only, optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<Vec<String>>,
    /// The unit's agency (units only, optional; one of the server's
    /// `dispatch.agencies`, checked at hello).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency: Option<String>,
    /// Not before, seconds since the epoch (optional; honoured when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer (optional; required and checked when the server sets `auth.issuer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience (optional; required and checked when the server sets `auth.audience`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    /// Claims for `role` with subject `sub`, valid for `ttl_s` seconds from `now_s`.
    pub fn new(sub: impl Into<String>, role: Role, now_s: u64, ttl_s: u64) -> Self {
        Claims {
            sub: sub.into(),
            role,
            exp: now_s + ttl_s,
            unit: None,
            callsign: None,
            kind: None,
            caps: None,
            agency: None,
            nbf: None,
            iss: None,
            aud: None,
        }
    }

    /// Claims for a unit's tablet.
    pub fn unit(unit_id: impl Into<String>, now_s: u64, ttl_s: u64) -> Self {
        let unit_id = unit_id.into();
        Claims {
            unit: Some(unit_id.clone()),
            ..Claims::new(unit_id, Role::Unit, now_s, ttl_s)
        }
    }
}

/// Why a token was refused (all map to `unauthorized`).
#[derive(Debug, Error)]
pub enum AuthError {
    /// Bad signature, wrong `alg`, expired, malformed, or a claim missing.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Role `unit` without a `unit` claim.
    #[error("role unit requires a unit claim")]
    MissingUnit,
}

/// Signs `claims` with HS256 and `secret`.
pub fn mint_token(secret: &[u8], claims: &Claims) -> String {
    // Encoding an in-memory struct with an HMAC key cannot fail: serde_json of
    // `Claims` has no fallible parts and HS256 accepts any key length.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 encoding of Claims cannot fail")
}

/// What a server expects of every token beyond the signature: the `iss` and
/// `aud` it was configured with (`auth.issuer`, `auth.audience`), if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    /// When set, `iss` must be present and equal.
    pub issuer: Option<String>,
    /// When set, `aud` must be present and equal.
    pub audience: Option<String>,
}

/// Verifies an HS256 token: signature, `alg`, `exp` and `nbf` (no leeway),
/// required claims. A token carrying an `aud` is refused (RFC 7519 4.1.3: we
/// are not its audience).
pub fn verify_token(secret: &[u8], token: &str) -> Result<Claims, AuthError> {
    verify_token_expecting(secret, token, &Expect::default())
}

/// Like [`verify_token`], and also checks `iss` / `aud` against `expect`.
pub fn verify_token_expecting(secret: &[u8], token: &str, expect: &Expect) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(iss) = &expect.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    if let Some(aud) = &expect.audience {
        validation.set_audience(&[aud]);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    let claims = data.claims;
    if claims.role == Role::Unit && claims.unit.as_deref().is_none_or(str::is_empty) {
        return Err(AuthError::MissingUnit);
    }
    bounded(&claims)?;
    Ok(claims)
}

/// Token claims obey the same bounds as the wire fields they stand for
/// (`opcenter_core::check`): a token cannot smuggle a huge callsign or a
/// thousand capabilities into every unit event.
fn bounded(claims: &Claims) -> Result<(), AuthError> {
    let refuse = |e: opcenter_core::CoreError| AuthError::Invalid(e.to_string());
    check::at_most("sub", &claims.sub, check::MAX_ID_BYTES).map_err(refuse)?;
    if let Some(unit) = &claims.unit {
        let caps = claims.caps.as_deref().unwrap_or_default();
        check::unit_identity(unit, claims.callsign.as_deref(), claims.kind.as_deref(), caps)
            .map_err(refuse)?;
        check::opt_at_most("agency", claims.agency.as_deref(), check::MAX_NAME_BYTES).map_err(refuse)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    /// base64url of `{"alg":"none","typ":"JWT"}`.
    const ALG_NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

    fn now_s() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn round_trip() {
        let claims = Claims::unit("P-101", now_s(), 60);
        let token = mint_token(SECRET, &claims);
        assert_eq!(verify_token(SECRET, &token).unwrap(), claims);
    }

    #[test]
    fn wrong_secret_is_refused() {
        let token = mint_token(SECRET, &Claims::new("d1", Role::Dispatcher, now_s(), 60));
        assert!(verify_token(b"other", &token).is_err());
    }

    #[test]
    fn expired_is_refused() {
        let token = mint_token(SECRET, &Claims::new("d1", Role::Dispatcher, now_s() - 120, 60));
        assert!(verify_token(SECRET, &token).is_err());
    }

    #[test]
    fn alg_none_is_refused() {
        // A genuine payload under the header {"alg":"none","typ":"JWT"}, no signature.
        let signed = mint_token(SECRET, &Claims::new("d1", Role::Dispatcher, now_s(), 60));
        let payload = signed.split('.').nth(1).unwrap();
        let token = format!("{ALG_NONE_HEADER}.{payload}.");
        assert!(verify_token(SECRET, &token).is_err());
    }

    #[test]
    fn claims_over_the_wire_bounds_are_refused() {
        let mut long_callsign = Claims::unit("P-101", now_s(), 60);
        long_callsign.callsign = Some("c".repeat(check::MAX_NAME_BYTES + 1));
        let mut many_caps = Claims::unit("P-101", now_s(), 60);
        many_caps.caps = Some(vec!["k9".into(); check::MAX_CAPABILITIES + 1]);
        let mut long_cap = Claims::unit("P-101", now_s(), 60);
        long_cap.caps = Some(vec!["k".repeat(check::MAX_NAME_BYTES + 1)]);
        let long_sub = Claims::new("s".repeat(check::MAX_ID_BYTES + 1), Role::Dispatcher, now_s(), 60);
        for claims in [long_callsign, many_caps, long_cap, long_sub] {
            let token = mint_token(SECRET, &claims);
            assert!(
                matches!(verify_token(SECRET, &token), Err(AuthError::Invalid(m)) if m.contains("at most")),
                "{claims:?}"
            );
        }
        let mut at_bounds = Claims::unit("P-101", now_s(), 60);
        at_bounds.callsign = Some("c".repeat(check::MAX_NAME_BYTES));
        at_bounds.caps = Some(vec!["k".repeat(check::MAX_NAME_BYTES); check::MAX_CAPABILITIES]);
        assert!(verify_token(SECRET, &mint_token(SECRET, &at_bounds)).is_ok());
    }

    #[test]
    fn not_before_is_honoured() {
        let mut early = Claims::new("d1", Role::Dispatcher, now_s(), 600);
        early.nbf = Some(now_s() + 300);
        assert!(verify_token(SECRET, &mint_token(SECRET, &early)).is_err());
        let mut due = early.clone();
        due.nbf = Some(now_s() - 1);
        assert_eq!(verify_token(SECRET, &mint_token(SECRET, &due)).unwrap(), due);
    }

    #[test]
    fn issuer_and_audience_are_checked_when_expected() {
        let expect = Expect {
            issuer: Some("opcenter-idp".into()),
            audience: Some("opcenter".into()),
        };
        let mut claims = Claims::new("d1", Role::Dispatcher, now_s(), 600);
        // Missing both: refused when expected, fine when not.
        let bare = mint_token(SECRET, &claims);
        assert!(verify_token_expecting(SECRET, &bare, &expect).is_err());
        assert!(verify_token(SECRET, &bare).is_ok());
        claims.iss = Some("opcenter-idp".into());
        claims.aud = Some("opcenter".into());
        let good = mint_token(SECRET, &claims);
        assert_eq!(verify_token_expecting(SECRET, &good, &expect).unwrap(), claims);
        for (iss, aud) in [("other-idp", "opcenter"), ("opcenter-idp", "other")] {
            claims.iss = Some(iss.into());
            claims.aud = Some(aud.into());
            let wrong = mint_token(SECRET, &claims);
            assert!(
                verify_token_expecting(SECRET, &wrong, &expect).is_err(),
                "{iss} {aud}"
            );
        }
    }

    #[test]
    fn unit_without_unit_claim_is_refused() {
        let token = mint_token(SECRET, &Claims::new("u", Role::Unit, now_s(), 60));
        assert!(matches!(
            verify_token(SECRET, &token),
            Err(AuthError::MissingUnit)
        ));
    }
}
