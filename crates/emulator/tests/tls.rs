//! TLS with the emulator's test CA: https and wss for the Genesys flow with a client that
//! trusts only that CA, plain HTTP on the same port, and a certificate the CA did not sign.

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::json;
use streamkeeper_emulator::TlsConfig;

#[tokio::test]
async fn the_genesys_flow_runs_over_https_and_wss_with_the_test_ca() {
    let path = std::env::temp_dir().join(format!("sk-emu-ca-{}.pem", std::process::id()));
    let emu = start(|c| {
        c.tls = Some(TlsConfig {
            ca_pem_path: Some(path.clone()),
            untrusted: false,
        });
    })
    .await;
    let ca = emu.ca_pem().expect("a CA with TLS on").to_string();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(std::fs::read_to_string(&path).expect("CA file"), ca);
    let _ = std::fs::remove_file(&path);
    assert!(emu.base_url().starts_with("https://"));
    assert!(emu.stream_url("s").starts_with("wss://"));

    let t = Target::tls(&emu, &ca);
    let token = genesys_token(&t, "genesys-client", "genesys-secret").await;
    let ch = t
        .send_json(Method::POST, "/api/v2/notifications/channels", &token, "")
        .await
        .json();
    let uri = ch["connectUri"].as_str().expect("connectUri");
    assert!(uri.starts_with("wss://"), "{uri}");
    let id = ch["id"].as_str().expect("id");
    let topic = "v2.users.u1.presence";
    let put = t
        .send_json(
            Method::PUT,
            &format!("/api/v2/notifications/channels/{id}/subscriptions"),
            &token,
            &json!([{ "id": topic }]).to_string(),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    let mut ws = t.ws(uri).await.expect("wss socket");
    // Many events at once, so TLS records are split and batched.
    emu.emit_genesys(topic, 500);
    for seq in 1..=500u64 {
        assert_eq!(next_json(&mut ws).await["eventBody"]["seq"], seq);
    }
    send(&mut ws, &json!({"message": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["eventBody"]["message"], "pong");
    // The discovery document says https when asked over TLS.
    let d = t
        .http(Method::GET, "/.well-known/openid-configuration", &[], "")
        .await
        .json();
    assert!(
        d["token_endpoint"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://"))
    );
    // Plain HTTP still answers on the same port.
    let plain = Target::plain(&emu)
        .http(Method::GET, "/healthz", &[], "")
        .await;
    assert_eq!(plain.status, StatusCode::OK);
    ws.close(None).await.expect("close");
    emu.shutdown().await;
}

#[tokio::test]
async fn a_certificate_not_signed_by_the_exposed_ca_is_refused() {
    let emu = start(|c| {
        c.tls = Some(TlsConfig {
            ca_pem_path: None,
            untrusted: true,
        });
    })
    .await;
    let ca = emu.ca_pem().expect("CA").to_string();
    let t = Target::tls(&emu, &ca);
    let err = match t.io().await {
        Ok(_) => panic!("the handshake must fail"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("invalid peer certificate") && err.contains("UnknownIssuer"),
        "{err}"
    );
    emu.shutdown().await;
}
