//! Tokens are checked before the WebSocket upgrade: bad ones get HTTP 401 and a precise code.

mod common;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use veza_sfu::auth::unix_now;
use veza_signaling::{Client, ClientError, ErrorCode, ServerMessage};

fn sign(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn claims() -> serde_json::Value {
    json!({"sub": "u1", "session": "jam", "name": "Ana", "exp": unix_now() + 600})
}

fn hs256(claims: serde_json::Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(common::SECRET.as_bytes()), claims)
}

async fn refused_with(url: &str, token: &str) -> ErrorCode {
    match Client::connect(url, token).await {
        Err(ClientError::Rejected { status: 401, body: Some(body) }) => body.code,
        Err(e) => panic!("expected a 401 with a JSON body, got {e}"),
        Ok(_) => panic!("a bad token opened a socket"),
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let server = common::start().await;
    let url = server.ws_url();
    let now = unix_now();

    let mut c = claims();
    c["exp"] = json!(now - 3600);
    assert_eq!(refused_with(&url, &hs256(c)).await, ErrorCode::TokenExpired);

    let mut c = claims();
    c["nbf"] = json!(now + 3600);
    assert_eq!(refused_with(&url, &hs256(c)).await, ErrorCode::TokenNotYetValid);

    let other = sign(Algorithm::HS256, &EncodingKey::from_secret(b"someone else's secret"), claims());
    assert_eq!(refused_with(&url, &other).await, ErrorCode::TokenBadSignature);

    let hs384 = sign(Algorithm::HS384, &EncodingKey::from_secret(common::SECRET.as_bytes()), claims());
    assert_eq!(refused_with(&url, &hs384).await, ErrorCode::TokenWrongAlgorithm);

    assert_eq!(refused_with(&url, "definitely-not-a-jwt").await, ErrorCode::TokenMalformed);

    let mut c = claims();
    c.as_object_mut().unwrap().remove("session");
    assert_eq!(refused_with(&url, &hs256(c)).await, ErrorCode::TokenInvalidClaims);

    match Client::connect_request(url.as_str()).await {
        Err(ClientError::Rejected { status: 401, body: Some(body) }) => assert_eq!(body.code, ErrorCode::TokenMissing),
        _ => panic!("a missing token must be a 401"),
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let mut config = common::test_config();
    config.auth.issuer = Some("veza-api".into());
    config.auth.audience = Some("veza-sfu".into());
    let server = common::start_with(config).await;
    let url = server.ws_url();

    let mut c = claims();
    c["iss"] = json!("someone-else");
    c["aud"] = json!("veza-sfu");
    assert_eq!(refused_with(&url, &hs256(c)).await, ErrorCode::TokenWrongIssuer);

    let mut c = claims();
    c["iss"] = json!("veza-api");
    c["aud"] = json!("another-service");
    assert_eq!(refused_with(&url, &hs256(c)).await, ErrorCode::TokenWrongAudience);

    // Leaving a configured claim out is no way around it.
    let mut c = claims();
    c["aud"] = json!("veza-sfu");
    assert_eq!(refused_with(&url, &hs256(c)).await, ErrorCode::TokenInvalidClaims);
    let mut c = claims();
    c["iss"] = json!("veza-api");
    assert_eq!(refused_with(&url, &hs256(c)).await, ErrorCode::TokenInvalidClaims);

    // golang-jwt v5 writes `aud` as an array.
    let mut c = claims();
    c["iss"] = json!("veza-api");
    c["aud"] = json!(["veza-sfu"]);
    let mut client = Client::connect(&url, &hs256(c)).await.expect("a good token joins");
    assert!(matches!(client.recv().await.unwrap(), Some(ServerMessage::Joined(_))));
    server.shutdown().await.unwrap();
}

/// The Go API may sign with a key pair; the server holds only the public key.
#[tokio::test]
async fn rs256_and_eddsa_tokens_verify_with_public_keys() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    let cases = [(Algorithm::RS256, "RS256", "rsa"), (Algorithm::EdDSA, "EdDSA", "ed25519")];
    for (alg, name, file) in cases {
        let private = std::fs::read(format!("{fixtures}{file}.pem")).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private).unwrap(),
            _ => EncodingKey::from_ed_pem(&private).unwrap(),
        };
        let mut config = common::test_config();
        config.auth.algorithm = name.into();
        config.auth.secret = None;
        config.auth.public_key_file = Some(format!("{fixtures}{file}.pub.pem").into());
        let server = common::start_with(config).await;
        let url = server.ws_url();

        let mut client = Client::connect(&url, &sign(alg, &key, claims())).await.expect("key-pair token joins");
        assert!(matches!(client.recv().await.unwrap(), Some(ServerMessage::Joined(_))));

        // An HS256 token "signed" with the public key as secret: the algorithm-confusion attack.
        let public = std::fs::read(format!("{fixtures}{file}.pub.pem")).unwrap();
        let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&public), claims());
        assert_eq!(refused_with(&url, &confused).await, ErrorCode::TokenWrongAlgorithm);
        server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_short_secret_stops_the_server_from_starting() {
    let mut config = common::test_config();
    config.auth.secret = Some(String::new());
    let err = veza_sfu::Server::start(config).await.err().expect("an empty secret must be refused");
    assert!(err.to_string().contains("at least"), "{err}");
}
