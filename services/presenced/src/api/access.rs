//! Who is calling ([`Principal`], from a bearer token, a session or an open
//! server) and what each may do.

use super::{Api, ApiError};
use presence_core::apiauth::Scope;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No tokens and no users configured: the loopback-only default.
    Open,
    /// A bearer token from `--api-tokens`.
    Token { name: String, scope: Scope },
    /// A user's session from `Login`: reads, and acts as this AoR only.
    User { aor: String },
}

impl Principal {
    /// May read presence and the directory.
    pub fn read(&self) -> Result<(), ApiError> {
        match self {
            Principal::Token { scope, .. } if !scope.allows(Scope::Read) => {
                Err(ApiError::Denied("scope read needed".into()))
            }
            _ => Ok(()),
        }
    }

    /// May act as `aor` (publish its status, send messages from it).
    pub fn act_as(&self, aor: &str) -> Result<(), ApiError> {
        match self {
            Principal::Open => Ok(()),
            Principal::Token { scope, .. } if scope.allows(Scope::Write) => Ok(()),
            Principal::Token { .. } => Err(ApiError::Denied("scope write needed".into())),
            Principal::User { aor: me } if me == aor => Ok(()),
            Principal::User { aor: me } => Err(ApiError::Denied(format!(
                "a session of {me} may only act as {me}"
            ))),
        }
    }

    /// May administer (hard state, subscriptions, registrations).
    pub fn admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Open => Ok(()),
            Principal::Token { scope, .. } if scope.allows(Scope::Admin) => Ok(()),
            _ => Err(ApiError::Denied("scope admin needed".into())),
        }
    }
}

impl Api {
    /// Is the API open (no tokens, no users)? Only allowed on loopback.
    pub fn is_open(&self) -> bool {
        self.tokens.is_none() && self.users.is_none()
    }

    /// Who presents `bearer` (an `Authorization: Bearer` value, or the web
    /// session cookie).
    pub fn principal(&self, bearer: Option<&str>) -> Result<Principal, ApiError> {
        let Some(token) = bearer.map(str::trim).filter(|t| !t.is_empty()) else {
            return if self.is_open() {
                Ok(Principal::Open)
            } else {
                Err(ApiError::Unauthenticated)
            };
        };
        if let Some(aor) = self.sessions.verify(token, self.clock.now_ms()) {
            return Ok(Principal::User { aor });
        }
        if let Some(tokens) = &self.tokens {
            if let Some((name, scope)) = tokens.current().check(token) {
                return Ok(Principal::Token {
                    name: name.to_string(),
                    scope,
                });
            }
        }
        if self.is_open() {
            // A stale session in a browser of an open server.
            return Ok(Principal::Open);
        }
        Err(ApiError::Unauthenticated)
    }
}
