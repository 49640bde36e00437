//! Ephemeral TURN credentials, the TURN REST API scheme coturn checks with `use-auth-secret`.
//!
//! veza-sfu and coturn share one secret. For each participant the server mints
//! `username = "EXPIRY:PARTICIPANT_ID"` (EXPIRY in Unix seconds) and
//! `credential = base64(HMAC-SHA1(secret, username))`; coturn recomputes the HMAC from its
//! `static-auth-secret` and refuses the allocation once EXPIRY has passed. Nothing is stored on
//! either side and nothing is revoked: the TTL bounds how long a leaked credential is useful.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use sha1::Sha1;
use veza_signaling::IceServer;

/// `[turn]`: the coturn next to this server. Every `joined` carries its URIs with fresh
/// credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// STUN and TURN URIs handed to clients, e.g. `turn:turn.example.org:3478`,
    /// `turn:turn.example.org:3478?transport=tcp`, `turns:turn.example.org:5349`,
    /// `stun:turn.example.org:3478`. A list, or one string of URIs separated by commas or
    /// spaces (handy in `VEZA_TURN__URIS`). `stun:` URIs go out without credentials.
    /// Default: none.
    #[serde(deserialize_with = "uri_list")]
    pub uris: Vec<String>,
    /// The secret shared with coturn (its `static-auth-secret`). Required when a `turn:` or
    /// `turns:` URI is configured. Default: none.
    pub secret: Option<String>,
    /// How long minted credentials stay valid. A credential only has to outlive the ICE
    /// allocation it opens (coturn keeps a live allocation refreshed past it), so a few hours
    /// covers a long jam. Default: 6 h.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig { uris: Vec::new(), secret: None, ttl: Duration::from_secs(6 * 3600) }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TurnConfigError {
    #[error("turn.uris lists {0:?}, which is not a stun:, turn: or turns: URI")]
    BadUri(String),
    #[error("turn.uris lists TURN servers but turn.secret (VEZA_TURN__SECRET) is not set")]
    NoSecret,
    #[error("turn.secret is empty")]
    EmptySecret,
    #[error("turn.ttl must be at least one second")]
    ZeroTtl,
}

impl TurnConfig {
    /// Checks the section once at start-up, so a bad one fails there and not at each join.
    pub fn validate(&self) -> Result<(), TurnConfigError> {
        if let Some(bad) = self.uris.iter().find(|u| scheme(u).is_none()) {
            return Err(TurnConfigError::BadUri(bad.clone()));
        }
        if self.uris.iter().any(|u| scheme(u) == Some(Scheme::Turn)) {
            match &self.secret {
                None => return Err(TurnConfigError::NoSecret),
                Some(s) if s.is_empty() => return Err(TurnConfigError::EmptySecret),
                Some(_) => {}
            }
        }
        if self.ttl < Duration::from_secs(1) {
            return Err(TurnConfigError::ZeroTtl);
        }
        Ok(())
    }

    /// The ICE servers for one participant: STUN URIs as they are, TURN URIs with credentials
    /// for `participant_id` valid until `now + ttl`. Empty when nothing is configured.
    pub fn ice_servers(&self, participant_id: &str, now: SystemTime) -> Vec<IceServer> {
        let (stun, turn): (Vec<String>, Vec<String>) =
            self.uris.iter().cloned().partition(|u| scheme(u) == Some(Scheme::Stun));
        let mut out = Vec::new();
        if !stun.is_empty() {
            out.push(IceServer { urls: stun, username: None, credential: None });
        }
        if let (false, Some(secret)) = (turn.is_empty(), &self.secret) {
            let expiry = now.duration_since(UNIX_EPOCH).unwrap_or_default() + self.ttl;
            let username = username(expiry.as_secs(), participant_id);
            let credential = credential(secret, &username);
            out.push(IceServer { urls: turn, username: Some(username), credential: Some(credential) });
        }
        out
    }
}

/// Every ICE server a participant is handed in `joined`: the static `ice_servers` list, then
/// the `[turn]` section's URIs with credentials minted for this participant.
pub fn ice_servers_for(config: &crate::Config, participant_id: &str) -> Vec<IceServer> {
    let mut out = config.ice_servers.clone();
    out.extend(config.turn.ice_servers(participant_id, SystemTime::now()));
    out
}

/// The TURN REST API username: `EXPIRY:ID`, EXPIRY in Unix seconds.
pub fn username(expiry_unix_secs: u64, participant_id: &str) -> String {
    format!("{expiry_unix_secs}:{participant_id}")
}

/// The TURN REST API password: base64(HMAC-SHA1(secret, username)).
pub fn credential(secret: &str, username: &str) -> String {
    STANDARD.encode(hmac_sha1(secret.as_bytes(), username.as_bytes()))
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Stun,
    Turn,
}

fn scheme(uri: &str) -> Option<Scheme> {
    let (scheme, rest) = uri.split_once(':')?;
    if rest.is_empty() {
        return None;
    }
    match scheme.to_ascii_lowercase().as_str() {
        "stun" | "stuns" => Some(Scheme::Stun),
        "turn" | "turns" => Some(Scheme::Turn),
        _ => None,
    }
}

/// A list of URIs, or one string of them separated by commas or whitespace.
fn uri_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => {
            s.split(|c: char| c == ',' || c.is_whitespace()).filter(|u| !u.is_empty()).map(str::to_owned).collect()
        }
        OneOrMany::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_sha1_matches_rfc_2202() {
        // RFC 2202, test case 2.
        assert_eq!(
            hex(&hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    #[test]
    fn credential_matches_an_independent_computation() {
        // printf '%s' '1700000000:pAbCdEf123456' | openssl dgst -sha1 -hmac 'coturn-shared-secret' -binary | base64
        assert_eq!(username(1_700_000_000, "pAbCdEf123456"), "1700000000:pAbCdEf123456");
        assert_eq!(credential("coturn-shared-secret", "1700000000:pAbCdEf123456"), "499mnb4sVqMR7c7E7Qn6W2yaDtQ=");
    }

    #[test]
    fn stun_passes_through_and_turn_gets_credentials() {
        let cfg = TurnConfig {
            uris: vec![
                "stun:turn.example.org:3478".into(),
                "turn:turn.example.org:3478".into(),
                "turn:turn.example.org:3478?transport=tcp".into(),
                "turns:turn.example.org:5349".into(),
            ],
            secret: Some("coturn-shared-secret".into()),
            ttl: Duration::from_secs(3600),
        };
        cfg.validate().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_699_996_400);
        let servers = cfg.ice_servers("pAbCdEf123456", now);
        assert_eq!(servers.len(), 2);
        assert_eq!(
            servers[0],
            IceServer { urls: vec!["stun:turn.example.org:3478".into()], username: None, credential: None }
        );
        assert_eq!(servers[1].urls.len(), 3);
        assert_eq!(servers[1].username.as_deref(), Some("1700000000:pAbCdEf123456"));
        assert_eq!(servers[1].credential.as_deref(), Some("499mnb4sVqMR7c7E7Qn6W2yaDtQ="));
    }

    #[test]
    fn nothing_configured_means_no_servers() {
        assert!(TurnConfig::default().ice_servers("p1", SystemTime::now()).is_empty());
        TurnConfig::default().validate().unwrap();
    }

    #[test]
    fn validation_catches_missing_secret_and_bad_uris() {
        let turn = |uris: &[&str], secret: Option<&str>| TurnConfig {
            uris: uris.iter().map(|u| u.to_string()).collect(),
            secret: secret.map(str::to_owned),
            ..Default::default()
        };
        assert_eq!(turn(&["turn:t:3478"], None).validate(), Err(TurnConfigError::NoSecret));
        assert_eq!(turn(&["turn:t:3478"], Some("")).validate(), Err(TurnConfigError::EmptySecret));
        assert_eq!(turn(&["stun:t:3478"], None).validate(), Ok(()));
        assert_eq!(turn(&["http://t"], Some("s")).validate(), Err(TurnConfigError::BadUri("http://t".into())));
        assert_eq!(turn(&["turn:"], Some("s")).validate(), Err(TurnConfigError::BadUri("turn:".into())));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closures must return figment::Error
    fn environment_configures_turn() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("VEZA_TURN__URIS", "turn:turn.example.org:3478?transport=udp,turns:turn.example.org:5349");
            jail.set_env("VEZA_TURN__SECRET", "s3cret");
            jail.set_env("VEZA_TURN__TTL", "2h");
            let c = crate::Config::load(false, None).map_err(|e| e.to_string())?;
            assert_eq!(c.turn.uris, ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"]);
            assert_eq!(c.turn.secret.as_deref(), Some("s3cret"));
            assert_eq!(c.turn.ttl, Duration::from_secs(7200));
            Ok(())
        });
    }

    #[test]
    fn uris_take_a_list_or_one_separated_string() {
        let from_json = |json: &str| serde_json::from_str::<TurnConfig>(json).unwrap().uris;
        assert_eq!(from_json(r#"{"uris":["turn:a:3478","stun:a:3478"]}"#), ["turn:a:3478", "stun:a:3478"]);
        assert_eq!(
            from_json(r#"{"uris":"turn:a:3478?transport=tcp, turns:a:5349 stun:a:3478"}"#),
            ["turn:a:3478?transport=tcp", "turns:a:5349", "stun:a:3478"]
        );
    }
}
