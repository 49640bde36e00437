//! JWT verification (tokens minted by the Veza Go API) and minting for dev and tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use veza_signaling::{ErrorCode, Grants};

use crate::config::AuthConfig;

/// Claims as golang-jwt v5 emits them: registered claims plus ours.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The Veza user id.
    pub sub: String,
    /// The session this token admits to.
    pub session: String,
    /// Display name; defaults to `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub grants: Grants,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// `aud` as RFC 7519 allows it: one string or an array (golang-jwt v5 writes an array).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims of a service (admin) token: like [`Claims`] but without `session`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceClaims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default)]
    pub grants: Grants,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// Who is calling the REST API.
#[derive(Debug, Clone, PartialEq)]
pub enum RestCaller {
    /// A service token: `grants.admin` and no `session` claim. Any session.
    Admin { sub: String },
    /// A participant token: its own session only, as its grants allow.
    Participant(Identity),
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user: String,
    pub session: String,
    pub name: String,
    pub grants: Grants,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{message}")]
pub struct AuthError {
    pub code: ErrorCode,
    pub message: String,
}

impl AuthError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AuthError { code, message: message.into() }
    }
}

/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size, 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest session id or user id we accept in a token.
const MAX_ID_LEN: usize = 128;

/// Checks tokens against the configured key, with the algorithm pinned.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// The same checks without `exp`: only for resuming a participation (src/http/ws.rs).
    validation_any_age: Validation,
    max_token_bytes: usize,
}

/// A configuration problem that stops the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("auth.algorithm {0:?} is not one of HS256, RS256, EdDSA")]
    UnknownAlgorithm(String),
    #[error("auth.algorithm {0} needs {1}")]
    MissingKey(&'static str, &'static str),
    #[error("reading auth.public_key_file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("auth key: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("auth.secret must be at least {0} bytes")]
    WeakSecret(usize),
}

pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(KeyError::UnknownAlgorithm(other.to_owned())),
    }
}

impl Verifier {
    pub fn from_config(cfg: &AuthConfig) -> Result<Verifier, KeyError> {
        let alg = parse_algorithm(&cfg.algorithm)?;
        let key = match alg {
            Algorithm::HS256 => {
                let secret = cfg.secret.as_deref().ok_or(KeyError::MissingKey("HS256", "auth.secret"))?;
                // An empty or short secret (an unset variable in a compose file) lets anyone
                // forge tokens: refuse to start instead.
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(KeyError::WeakSecret(MIN_SECRET_BYTES));
                }
                DecodingKey::from_secret(secret.as_bytes())
            }
            _ => {
                let pem = match (&cfg.public_key_pem, &cfg.public_key_file) {
                    (Some(pem), _) => pem.clone(),
                    (None, Some(path)) => {
                        std::fs::read_to_string(path).map_err(|e| KeyError::Read(path.display().to_string(), e))?
                    }
                    (None, None) => {
                        return Err(KeyError::MissingKey("RS256/EdDSA", "auth.public_key_pem or auth.public_key_file"));
                    }
                };
                if alg == Algorithm::RS256 {
                    DecodingKey::from_rsa_pem(pem.as_bytes())?
                } else {
                    DecodingKey::from_ed_pem(pem.as_bytes())?
                }
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = cfg.leeway.as_secs();
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not merely not contradicted.
        let mut required = vec!["exp"];
        required.extend(cfg.issuer.as_ref().map(|_| "iss"));
        required.extend(cfg.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &cfg.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &cfg.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let mut validation_any_age = validation.clone();
        validation_any_age.validate_exp = false;
        Ok(Verifier { key, validation, validation_any_age, max_token_bytes: cfg.max_token_bytes })
    }

    /// Verifies a participant token. Never logs or echoes the token itself.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_with(token, &self.validation)
    }

    /// Like [`verify`](Self::verify), but an expired token passes: only for presenting together
    /// with a resume token, which is what proves the participation is still the caller's.
    pub fn verify_ignoring_expiry(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_with(token, &self.validation_any_age)
    }

    fn verify_with(&self, token: &str, validation: &Validation) -> Result<Identity, AuthError> {
        self.precheck(token)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, validation).map_err(|e| classify(&e))?;
        let c = data.claims;
        if c.sub.is_empty() || c.sub.len() > MAX_ID_LEN {
            return Err(AuthError::new(ErrorCode::TokenInvalidClaims, "sub must be 1-128 characters"));
        }
        if !valid_session_id(&c.session) {
            return Err(AuthError::new(
                ErrorCode::TokenInvalidClaims,
                "session must be 1-128 characters of [A-Za-z0-9._-]",
            ));
        }
        let name = c.name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| c.sub.clone());
        Ok(Identity { user: c.sub, session: c.session, name: name.chars().take(64).collect(), grants: c.grants })
    }
}

impl Verifier {
    /// Verifies a token for the REST API: a service token (admin grant, no session) or a
    /// participant token.
    pub fn verify_rest(&self, token: &str) -> Result<RestCaller, AuthError> {
        self.precheck(token)?;
        let data =
            jsonwebtoken::decode::<ServiceClaims>(token, &self.key, &self.validation).map_err(|e| classify(&e))?;
        let c = data.claims;
        match c.session {
            None if c.grants.admin && !c.sub.is_empty() && c.sub.len() <= MAX_ID_LEN => {
                Ok(RestCaller::Admin { sub: c.sub })
            }
            None => {
                Err(AuthError::new(ErrorCode::TokenInvalidClaims, "a token without a session claim must grant admin"))
            }
            Some(_) => self.verify(token).map(RestCaller::Participant),
        }
    }
}

impl Verifier {
    /// Refuses oversized tokens before any base64 or JSON work is spent on them, and tokens
    /// whose header names another algorithm. jsonwebtoken cannot even parse a header with an
    /// algorithm it does not know (`none`), which it reports as malformed JSON; the header is
    /// read here first so that `alg: none` is called what it is.
    fn precheck(&self, token: &str) -> Result<(), AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::new(
                ErrorCode::TokenTooLarge,
                format!("token is {} bytes; the limit is {}", token.len(), self.max_token_bytes),
            ));
        }
        if let Some(alg) = header_algorithm(token)
            && !alg.parse::<Algorithm>().is_ok_and(|a| self.validation.algorithms.contains(&a))
        {
            return Err(AuthError::new(
                ErrorCode::TokenWrongAlgorithm,
                "token is signed with an algorithm this server does not accept",
            ));
        }
        Ok(())
    }
}

/// The `alg` a token's header claims, if the header is base64url JSON with a string `alg`.
fn header_algorithm(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&json).ok()?;
    value.get("alg")?.as_str().map(str::to_owned)
}

/// Session ids travel in URLs and file names later: keep them plain.
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn classify(e: &jsonwebtoken::errors::Error) -> AuthError {
    let (code, message) = match e.kind() {
        ErrorKind::ExpiredSignature => (ErrorCode::TokenExpired, "token has expired"),
        ErrorKind::ImmatureSignature => (ErrorCode::TokenNotYetValid, "token is not valid yet (nbf)"),
        ErrorKind::InvalidSignature => (ErrorCode::TokenBadSignature, "token signature does not verify"),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            (ErrorCode::TokenWrongAlgorithm, "token is signed with an algorithm this server does not accept")
        }
        ErrorKind::InvalidIssuer => (ErrorCode::TokenWrongIssuer, "token issuer is not accepted"),
        ErrorKind::InvalidAudience => (ErrorCode::TokenWrongAudience, "token audience is not accepted"),
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => {
            (ErrorCode::TokenInvalidClaims, "token claims are missing or malformed")
        }
        _ => (ErrorCode::TokenMalformed, "token is not a well-formed JWT"),
    };
    AuthError::new(code, message)
}

/// Mints HS256 tokens with the configured secret: `veza-sfu token`, dev mode and tests.
pub struct Minter {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Minter {
    pub fn from_config(cfg: &AuthConfig) -> Result<Minter, KeyError> {
        if parse_algorithm(&cfg.algorithm)? != Algorithm::HS256 {
            return Err(KeyError::MissingKey(
                "HS256",
                "an HS256 secret to mint tokens (RS256/EdDSA tokens come from the Go API's private key)",
            ));
        }
        let secret = cfg.secret.as_deref().ok_or(KeyError::MissingKey("HS256", "auth.secret"))?;
        Ok(Minter {
            key: EncodingKey::from_secret(secret.as_bytes()),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
        })
    }

    /// A service token: `admin` grant, no session (what the Veza API would mint for itself).
    pub fn mint_admin(&self, sub: &str, ttl: Duration) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now();
        let claims = ServiceClaims {
            sub: sub.to_owned(),
            session: None,
            grants: Grants { publish: false, subscribe: false, chat: false, record: true, admin: true },
            exp: now + ttl.as_secs(),
            nbf: None,
            iat: Some(now),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Audience::One),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
    }

    pub fn mint(&self, identity: &Identity, ttl: Duration) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now();
        let claims = Claims {
            sub: identity.user.clone(),
            session: identity.session.clone(),
            name: Some(identity.name.clone()),
            grants: identity.grants,
            exp: now + ttl.as_secs(),
            nbf: None,
            iat: Some(now),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Audience::One),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AuthConfig {
        AuthConfig { secret: Some("s3cret-s3cret-s3cret-s3cret-s3cret".into()), ..AuthConfig::default() }
    }

    fn ident() -> Identity {
        Identity { user: "u1".into(), session: "jam".into(), name: "Ana".into(), grants: Grants::default() }
    }

    #[test]
    fn minted_token_verifies() {
        let t = Minter::from_config(&cfg()).unwrap().mint(&ident(), Duration::from_secs(60)).unwrap();
        assert_eq!(Verifier::from_config(&cfg()).unwrap().verify(&t).unwrap(), ident());
    }

    #[test]
    fn other_secret_is_bad_signature() {
        let t = Minter::from_config(&cfg()).unwrap().mint(&ident(), Duration::from_secs(60)).unwrap();
        let other = AuthConfig { secret: Some("other-other-other-other-other-other".into()), ..AuthConfig::default() };
        let e = Verifier::from_config(&other).unwrap().verify(&t).unwrap_err();
        assert_eq!(e.code, ErrorCode::TokenBadSignature);
    }

    #[test]
    fn garbage_is_malformed() {
        let e = Verifier::from_config(&cfg()).unwrap().verify("not.a.jwt").unwrap_err();
        assert_eq!(e.code, ErrorCode::TokenMalformed);
    }

    #[test]
    fn admin_tokens_reach_rest_but_never_join() {
        let minter = Minter::from_config(&cfg()).unwrap();
        let verifier = Verifier::from_config(&cfg()).unwrap();
        let admin = minter.mint_admin("veza-api", Duration::from_secs(60)).unwrap();
        assert_eq!(verifier.verify_rest(&admin).unwrap(), RestCaller::Admin { sub: "veza-api".into() });
        assert_eq!(verifier.verify(&admin).unwrap_err().code, ErrorCode::TokenInvalidClaims);
        let participant = minter.mint(&ident(), Duration::from_secs(60)).unwrap();
        assert_eq!(verifier.verify_rest(&participant).unwrap(), RestCaller::Participant(ident()));
    }

    #[test]
    fn session_ids_are_plain() {
        assert!(valid_session_id("jam-1.a_b"));
        assert!(!valid_session_id("../etc"));
        assert!(!valid_session_id(""));
    }
}
