//! Tokens are checked before the WebSocket upgrade: bad ones get HTTP 401 and a precise code.

mod common;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use veza_sfu::auth::unix_now;
use veza_signaling::{Client, ClientError, ErrorCode, Grants, ServerMessage};

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

/// Unsigned, mangled, oversized and misdirected tokens: each refused before anything is
/// upgraded or joined, with a code that says which.
#[tokio::test]
async fn the_token_attack_matrix_is_refused_with_precise_codes() {
    use base64::Engine as _;
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let server = common::start().await;
    let url = server.ws_url();

    // `alg: none`, with and without a trailing signature segment.
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims()));
    assert_eq!(refused_with(&url, &none).await, ErrorCode::TokenWrongAlgorithm);
    assert_eq!(refused_with(&url, none.trim_end_matches('.')).await, ErrorCode::TokenWrongAlgorithm);

    // Broken base64 in each segment, and a valid signature over a payload that is not JSON.
    let good = hs256(claims());
    let parts: Vec<&str> = good.split('.').collect();
    for broken in [
        format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}%%.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}*", parts[0], parts[1], parts[2]),
    ] {
        let code = refused_with(&url, &urlencode(&broken)).await;
        assert!(matches!(code, ErrorCode::TokenMalformed | ErrorCode::TokenBadSignature), "{broken}: {code:?}");
    }

    // Longer than auth.max_token_bytes: refused by size, before any decoding.
    let mut c = claims();
    c["name"] = json!("x".repeat(9 * 1024));
    assert_eq!(refused_with(&url, &hs256(c)).await, ErrorCode::TokenTooLarge);

    // A 1 MB token does not even fit in an HTTP request head: HTTP refuses it, and the server
    // goes on serving.
    let huge = "a".repeat(1024 * 1024);
    let status = reqwest::Client::new()
        .get(format!("{}/v1/ws", server.http_url()))
        .bearer_auth(&huge)
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(matches!(status, Ok(431) | Ok(414) | Ok(400) | Err(_)), "{status:?}");
    let mut client = Client::connect(&url, &good).await.expect("a good token still joins");
    assert!(matches!(client.recv().await.unwrap(), Some(ServerMessage::Joined(_))));

    // A token for another session gives no way into this one's REST resources.
    let other = common::token_with("other-jam", "u1", Grants { record: true, ..Grants::default() });
    let (status, body) = common::http_json(
        &reqwest::Client::new(),
        format!("{}/v1/sessions/jam/recordings", server.http_url()),
        Some(&other),
        reqwest::Method::GET,
        None,
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));

    // No grants claim: a plain musician. No recording, no session management.
    let plain = hs256(claims());
    for (method, path) in
        [(reqwest::Method::GET, "/v1/sessions/jam/recordings"), (reqwest::Method::GET, "/v1/sessions")]
    {
        let (status, _) = common::http_json(
            &reqwest::Client::new(),
            format!("{}{path}", server.http_url()),
            Some(&plain),
            method,
            None,
        )
        .await;
        assert_eq!(status, 403, "{path}");
    }
    server.shutdown().await.unwrap();
}

/// `%`, `!` and `*` must reach the server as they are, not be taken for URL syntax.
fn urlencode(token: &str) -> String {
    token.replace('%', "%25").replace('!', "%21").replace('*', "%2A")
}
