//! The operator API through its router (`tower::ServiceExt::oneshot`): every endpoint, every
//! role, every error path; plus the live effects an operator's action must have on a device's
//! MQTT session, and the Server-Sent Events stream over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{Server, id_of, start};
use fleetward_test_support::{KeyKind, TestCa, pem_encode};
use http_body_util::BodyExt;
use registry::Role;
use serde_json::{Value, json};
use sim_devices::client::TlsProfile;
use std::time::Duration;
use tower::ServiceExt;

struct Api {
    server: Server,
    admin: String,
    operator: String,
    viewer: String,
}

impl Api {
    async fn new(cas: &[&TestCa]) -> Api {
        let server = start(cas).await;
        let r = &server.running.registry;
        let token = |role| async move { r.create_token(role, None, "test", 0).await.unwrap().secret.to_string() };
        Api {
            admin: token(Role::Admin).await,
            operator: token(Role::Operator).await,
            viewer: token(Role::Viewer).await,
            server,
        }
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Body,
    ) -> (StatusCode, Vec<u8>, axum::http::HeaderMap) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        req = req.header(header::CONTENT_TYPE, "application/json");
        let app = gateway::http::router(self.server.running.http_state());
        let response = app.oneshot(req.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, bytes, headers)
    }

    /// The status of a request whose success body is endless (an error body is read).
    async fn status_only(&self, method: Method, path: &str, token: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let app = gateway::http::router(self.server.running.http_state());
        let response = app.oneshot(req).await.unwrap();
        let status = response.status();
        if status.is_success() {
            return (status, Value::Null);
        }
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let (status, bytes, headers) = self.raw(method, path, token, body).await;
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            assert_eq!(
                headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap()),
                Some("application/json"),
                "{path}: {}",
                String::from_utf8_lossy(&bytes)
            );
            serde_json::from_slice(&bytes).unwrap()
        };
        if !status.is_success() && status != StatusCode::NO_CONTENT {
            // Every error has the one shape.
            assert!(
                json["error"].is_string() && json["message"].is_string(),
                "{path}: {json}"
            );
        }
        (status, json)
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let (status, json) = self.call(Method::GET, path, Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {json}");
        json
    }

    /// Registers `ca` through the API with proof of possession; the new CA.
    async fn register_ca(&self, ca: &TestCa, extra: Value) -> (StatusCode, Value) {
        let code = self.get("/api/v1/cas/registration-code", &self.admin).await["registration_code"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut body = json!({
            "certificate_pem": ca.pem(),
            "verification_certificate_pem": pem_encode("CERTIFICATE", &ca.verification_certificate(&code)),
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        self.call(Method::POST, "/api/v1/cas", Some(&self.admin), Some(body))
            .await
    }
}

/// Waits for the server to end a device's session (DISCONNECT or close), within 5 s.
async fn session_ends(client: &mut sim_devices::client::Client) {
    use sim_devices::client::{ClientError, ServerPacket};
    loop {
        match client.recv(Duration::from_secs(5)).await {
            Ok(ServerPacket::Disconnect) | Err(ClientError::Closed | ClientError::Io(_) | ClientError::Tls(_)) => {
                return;
            }
            Err(ClientError::Timeout(_)) => panic!("the session was not ended"),
            Ok(_) | Err(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_checks_token_and_role() {
    let api = Api::new(&[]).await;
    let table: &[(Method, &str, Role)] = &[
        (Method::GET, "/api/v1/cas/registration-code", Role::Admin),
        (Method::POST, "/api/v1/cas", Role::Admin),
        (Method::GET, "/api/v1/cas", Role::Viewer),
        (Method::GET, "/api/v1/cas/00", Role::Viewer),
        (Method::POST, "/api/v1/cas/00/revoke", Role::Admin),
        (Method::POST, "/api/v1/cas/00/crl", Role::Admin),
        (Method::GET, "/api/v1/devices", Role::Viewer),
        (Method::GET, "/api/v1/devices/nope", Role::Viewer),
        (Method::POST, "/api/v1/devices/nope/activate", Role::Operator),
        (Method::POST, "/api/v1/devices/nope/quarantine", Role::Operator),
        (Method::POST, "/api/v1/devices/nope/revoke", Role::Operator),
        (Method::PUT, "/api/v1/devices/nope/labels", Role::Operator),
        (Method::GET, "/api/v1/events", Role::Viewer),
        (Method::GET, "/api/v1/events/stream", Role::Viewer),
        (Method::GET, "/api/v1/fleet/summary", Role::Viewer),
        (Method::GET, "/api/v1/audit", Role::Viewer),
        (Method::GET, "/api/v1/tokens", Role::Admin),
        (Method::POST, "/api/v1/tokens", Role::Admin),
        (Method::POST, "/api/v1/attestation/challenge", Role::Operator),
        (Method::POST, "/api/v1/attestation/evidence", Role::Operator),
        (Method::POST, "/api/v1/devices/nope/attest", Role::Operator),
        (Method::GET, "/api/v1/devices/nope/attestation", Role::Viewer),
        (Method::GET, "/api/v1/firmware", Role::Viewer),
        (Method::POST, "/api/v1/firmware", Role::Admin),
        (Method::GET, "/api/v1/cas/00/attestation-policy", Role::Viewer),
        (Method::PUT, "/api/v1/cas/00/attestation-policy", Role::Admin),
        (Method::GET, "/api/v1/lorawan/devices", Role::Viewer),
        (Method::POST, "/api/v1/lorawan/devices", Role::Admin),
        (Method::GET, "/api/v1/lorawan/devices/0000000000000001", Role::Viewer),
        (
            Method::GET,
            "/api/v1/lorawan/devices/0000000000000001/uplinks",
            Role::Viewer,
        ),
        (Method::GET, "/api/v1/sigfox/devices", Role::Viewer),
        (Method::POST, "/api/v1/sigfox/devices", Role::Admin),
        (Method::GET, "/api/v1/sigfox/devices/004D33DB", Role::Viewer),
        (Method::GET, "/api/v1/sigfox/devices/004D33DB/uplinks", Role::Viewer),
        (Method::POST, "/api/v1/sigfox/frames", Role::Operator),
        (Method::GET, "/api/v1/sigfox/devices/004D33DB/downlinks", Role::Viewer),
        (
            Method::POST,
            "/api/v1/sigfox/devices/004D33DB/downlinks",
            Role::Operator,
        ),
        (Method::POST, "/api/v1/tokens/nope/revoke", Role::Admin),
    ];
    let body = |m: &Method, path: &str| match (m.as_str(), path) {
        ("POST", "/api/v1/cas") => Some(json!({"certificate_pem": "x", "verification_certificate_pem": "y"})),
        ("POST", p) if p.ends_with("/crl") => Some(json!({"crl_pem": "x"})),
        ("PUT", _) => Some(json!({"labels": {}})),
        ("POST", "/api/v1/tokens") => Some(json!({"role": "nobody"})),
        ("POST", "/api/v1/sigfox/devices") => Some(json!({"device_id": "x", "nak": "y"})),
        ("POST", "/api/v1/sigfox/frames") => Some(json!({"frame_hex": "00"})),
        ("POST", p) if p.ends_with("/downlinks") => Some(json!({"data_hex": "00"})),
        _ => None,
    };
    let mut unauthorized = 0;
    let mut forbidden = 0;
    for (method, path, needed) in table {
        // No token, a malformed header, a forged token: 401 with a challenge.
        for token in [None, Some("nonsense"), Some("fw_0000000000000000_00")] {
            let (status, bytes, headers) = api
                .raw(
                    method.clone(),
                    path,
                    token,
                    body(method, path).map_or_else(Body::empty, |b| Body::from(b.to_string())),
                )
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} {token:?}");
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
            let json: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(json["error"], "unauthorized");
            unauthorized += 1;
        }
        for (role, token) in [
            (Role::Viewer, &api.viewer),
            (Role::Operator, &api.operator),
            (Role::Admin, &api.admin),
        ] {
            let (status, json) = if *path == "/api/v1/events/stream" {
                // An endless body: look at the status (and an error's body) only.
                api.status_only(method.clone(), path, token).await
            } else {
                api.call(method.clone(), path, Some(token), body(method, path)).await
            };
            if role < *needed {
                assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} as {role:?}: {json}");
                assert_eq!(json["error"], "forbidden");
                forbidden += 1;
            } else {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED && !status.is_server_error(),
                    "{method} {path} as {role:?}: {status} {json}"
                );
            }
        }
    }
    // Each refusal is counted and recorded.
    let stats = api.server.running.stats.snapshot();
    assert_eq!(stats.api_unauthorized, unauthorized);
    assert_eq!(stats.api_forbidden, forbidden);
    api.server.wait_event("api.forbidden", |_| true).await;
    let e = api.server.wait_event("api.unauthorized", |_| true).await;
    assert!(!e.reason.unwrap().contains("fw_"), "no token text in events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_has_a_one_time_admin_token() {
    let api = Api::new(&[]).await;
    let first = api
        .server
        .running
        .initial_admin_token
        .clone()
        .expect("first start makes a token");
    let (status, _) = api.call(Method::GET, "/api/v1/tokens", Some(&first), None).await;
    assert_eq!(status, StatusCode::OK, "it is an admin token");
    // A second server on the same database (a restart, another node) makes none.
    let mut c = common::config(api.server.dir.path());
    c.database_url = None;
    let again = gateway::start(c).await.unwrap();
    assert!(again.initial_admin_token.is_none());
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_4xx_in_the_error_shape() {
    let api = Api::new(&[]).await;
    let admin = Some(api.admin.as_str());
    // Bad JSON, wrong types, missing fields.
    for body in ["{", "[]", "{\"certificate_pem\": 5}", "{}", "null"] {
        let (status, bytes, _) = api.raw(Method::POST, "/api/v1/cas", admin, Body::from(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"], "bad_json", "{body}");
    }
    // Oversize body.
    let big = format!("{{\"certificate_pem\": \"{}\"}}", "A".repeat(2 * 1024 * 1024));
    let (status, bytes, _) = api.raw(Method::POST, "/api/v1/cas", admin, Body::from(big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap()["error"], "too_large");
    // Bad queries and cursors.
    for path in [
        "/api/v1/devices?limit=0",
        "/api/v1/devices?limit=1001",
        "/api/v1/devices?limit=x",
        "/api/v1/devices?status=bogus",
        "/api/v1/devices?integrity=bogus",
        "/api/v1/devices?seen_since=yesterday",
        "/api/v1/devices?label=nokey",
        "/api/v1/devices?cursor=zz",
        "/api/v1/events?cursor=00",
        "/api/v1/events?since=later",
        "/api/v1/events?order=sideways",
        "/api/v1/fleet/summary?window=5y",
        "/api/v1/fleet/summary?window=10m",
        "/api/v1/fleet/summary?window=36h",
        "/api/v1/audit?silent_days=0",
        "/api/v1/audit?sample=-1",
    ] {
        let (status, json) = api.call(Method::GET, path, admin, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {json}");
    }
    // Unknown endpoints and methods.
    let (status, json) = api.call(Method::GET, "/api/v1/nope", admin, None).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, json) = api.call(Method::DELETE, "/api/v1/devices", admin, None).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    // Not found in the registry.
    for path in ["/api/v1/devices/ghost", "/api/v1/cas/ghost"] {
        let (status, json) = api.call(Method::GET, path, admin, None).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
    }
    // Labels: bad keys and values.
    let root = TestCa::root(KeyKind::P256, "Labels Root");
    api.register_ca(&root, json!({})).await;
    let d = root.issue_device(KeyKind::P256, "labelled");
    let (_c, code) = api.server.connect(&d, "labelled", TlsProfile::Tls13).await.unwrap();
    assert_eq!(code, 0);
    for labels in [
        json!({"": "x"}),
        json!({"a b": "x"}),
        json!({"k": "x\u{1}"}),
        json!({"k": 5}),
    ] {
        let (status, json) = api
            .call(
                Method::PUT,
                "/api/v1/devices/labelled/labels",
                Some(&api.operator),
                Some(json!({ "labels": labels })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{labels}: {json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_registration_needs_proof_of_possession_and_revocation_cascades() {
    let api = Api::new(&[]).await;
    let root = TestCa::stsafe_root("Fleet Provisioning CA");
    // The registration code is stable.
    let code = api.get("/api/v1/cas/registration-code", &api.admin).await;
    assert_eq!(code, api.get("/api/v1/cas/registration-code", &api.admin).await);
    let code = code["registration_code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 40);

    // A verification certificate with another CN, or signed by another key: refused, by check.
    let other = TestCa::root(KeyKind::P256, "Someone Else");
    for (proof, check) in [
        (root.verification_certificate("not-the-code"), "code_mismatch"),
        (other.verification_certificate(&code), "verification_not_issued_by_ca"),
    ] {
        let (status, json) = api
            .call(
                Method::POST,
                "/api/v1/cas",
                Some(&api.admin),
                Some(json!({
                    "certificate_pem": root.pem(),
                    "verification_certificate_pem": pem_encode("CERTIFICATE", &proof),
                })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
        assert_eq!(
            (json["error"].as_str(), json["check"].as_str()),
            (Some("ca_rejected"), Some(check))
        );
    }
    api.server.wait_event("ca.rejected", |_| true).await;
    let (status, json) = api
        .call(
            Method::POST,
            "/api/v1/cas",
            Some(&api.admin),
            Some(json!({"certificate_pem": "not pem", "verification_certificate_pem": "nor this"})),
        )
        .await;
    assert_eq!(
        (status, json["error"].as_str(), json["check"].as_str()),
        (StatusCode::BAD_REQUEST, Some("ca_rejected"), Some("malformed"))
    );

    // Accepted: 201 with the CA; a second registration conflicts.
    let (status, ca) = api
        .register_ca(
            &root,
            json!({"identity": "cn", "digest_mode": "sha256", "auto_activate": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ca}");
    let ca_id = ca["id"].as_str().unwrap().to_owned();
    assert_eq!(ca["status"], "active");
    assert_eq!(ca["identity"], "cn");
    assert_eq!(ca["digest_mode"], "sha256");
    assert_eq!(ca["key"], "ECDSA P-256");
    let (status, _) = api.register_ca(&root, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The new CA counts from the very next handshake: two devices onboard.
    let a = root.issue_stsafe_device("eval3", &[0x02, 0x09, 0x11]);
    let b = root.issue_stsafe_device("eval3", &[0x02, 0x09, 0x12]);
    let (mut ca_client, code) = api
        .server
        .connect(&a, &id_of(&a), TlsProfile::Stm32Tls12)
        .await
        .unwrap();
    assert_eq!(code, 0);
    let (_b_client, code) = api.server.connect(&b, &id_of(&b), TlsProfile::Tls13).await.unwrap();
    assert_eq!(code, 0);
    let listed = api.get("/api/v1/cas", &api.viewer).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(listed["next_cursor"].is_null());
    let one = api.get(&format!("/api/v1/cas/{ca_id}"), &api.viewer).await;
    assert_eq!(one["device_count"], 2);

    // A CRL from the CA is accepted; one from another CA is not.
    let crl = root.crl(&[&[0x7f]], "2026-01-01T00:00:00Z", "2036-01-01T00:00:00Z");
    let (status, json) = api
        .call(
            Method::POST,
            &format!("/api/v1/cas/{ca_id}/crl"),
            Some(&api.admin),
            Some(json!({ "crl_pem": pem_encode("X509 CRL", &crl) })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert_eq!(json["revoked"], 1);
    let foreign = other.crl(&[&[0x7f]], "2026-01-01T00:00:00Z", "2036-01-01T00:00:00Z");
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/api/v1/cas/{ca_id}/crl"),
            Some(&api.admin),
            Some(json!({ "crl_pem": pem_encode("X509 CRL", &foreign) })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Revoking the CA revokes both devices in one go, ends their sessions, refuses them after.
    let (status, json) = api
        .call(
            Method::POST,
            &format!("/api/v1/cas/{ca_id}/revoke"),
            Some(&api.admin),
            Some(json!({"reason": "CA key compromised"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(
        (json["status"].as_str(), json["devices_revoked"].as_u64()),
        (Some("revoked"), Some(2))
    );
    for d in [&a, &b] {
        let dev = api.get(&format!("/api/v1/devices/{}", id_of(d)), &api.viewer).await;
        assert_eq!(dev["status"], "revoked");
        assert!(
            dev["recent_events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "device.status" && e["detail"]["cause"] == "ca_revoked")
        );
    }
    session_ends(&mut ca_client).await;
    assert!(api.server.connect(&a, &id_of(&a), TlsProfile::Tls13).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_listed_filtered_paged_and_acted_on() {
    let root = TestCa::root(KeyKind::P256, "Device Root");
    let api = Api::new(&[&root]).await;
    let r = &api.server.running.registry;
    let mut sessions = Vec::new();
    for i in 0..7 {
        let d = root.issue_device(KeyKind::P256, &format!("dev-{i:02}"));
        let (c, code) = api
            .server
            .connect(&d, &format!("dev-{i:02}"), TlsProfile::Tls13)
            .await
            .unwrap();
        assert_eq!(code, 0);
        sessions.push((d, c));
    }
    r.set_firmware("dev-00", "2.0.0", "aa").await.unwrap();
    r.set_firmware("dev-01", "2.0.0", "aa").await.unwrap();

    // Pages of 3 cover everything once, in id order.
    let mut ids = Vec::new();
    let mut path = "/api/v1/devices?limit=3".to_owned();
    loop {
        let page = api.get(&path, &api.viewer).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        ids.extend(items.iter().map(|d| d["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/devices?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(ids, (0..7).map(|i| format!("dev-{i:02}")).collect::<Vec<_>>());
    // The contract's fields.
    let first = &api.get("/api/v1/devices?limit=1", &api.viewer).await["items"][0];
    for field in [
        "id",
        "status",
        "ca_id",
        "integrity",
        "firmware",
        "first_seen",
        "last_seen",
    ] {
        assert!(first.get(field).is_some(), "missing {field}: {first}");
    }
    assert_eq!(first["status"], "active");
    assert_eq!(first["online"], true);
    assert_eq!(first["firmware"], "2.0.0");
    let ca_id = first["ca_id"].as_str().unwrap().to_owned();

    // Filters.
    let count = |json: Value| json["items"].as_array().unwrap().len();
    assert_eq!(count(api.get("/api/v1/devices?firmware=2.0.0", &api.viewer).await), 2);
    assert_eq!(
        count(api.get(&format!("/api/v1/devices?ca={ca_id}"), &api.viewer).await),
        7
    );
    assert_eq!(count(api.get("/api/v1/devices?ca=other", &api.viewer).await), 0);
    assert_eq!(count(api.get("/api/v1/devices?q=dev-0", &api.viewer).await), 7);
    assert_eq!(count(api.get("/api/v1/devices?q=dev-05", &api.viewer).await), 1);
    assert_eq!(
        count(api.get("/api/v1/devices?integrity=unknown", &api.viewer).await),
        7
    );
    assert_eq!(count(api.get("/api/v1/devices?seen_since=1h", &api.viewer).await), 7);
    assert_eq!(
        count(
            api.get("/api/v1/devices?seen_since=2099-01-01T00:00:00Z", &api.viewer)
                .await
        ),
        0
    );

    // Labels: replaced as a whole, then filterable.
    let (status, json) = api
        .call(
            Method::PUT,
            "/api/v1/devices/dev-03/labels",
            Some(&api.operator),
            Some(json!({"labels": {"site": "lyon", "line": "3"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["labels"]["site"], "lyon");
    assert_eq!(count(api.get("/api/v1/devices?label=site=lyon", &api.viewer).await), 1);
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/devices/ghost/labels",
            Some(&api.operator),
            Some(json!({"labels": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Detail: labels, the chain up to the CA, recent events newest first.
    let detail = api.get("/api/v1/devices/dev-03", &api.viewer).await;
    assert_eq!(detail["id"], "dev-03");
    assert_eq!(detail["labels"]["line"], "3");
    let chain = detail["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 2);
    assert!(chain[0]["subject"].as_str().unwrap().contains("CN=dev-03"));
    assert!(chain[1]["subject"].as_str().unwrap().contains("CN=Device Root"));
    assert!(
        detail["certificate_pem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let kinds: Vec<&str> = detail["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["device.labels", "device.registered"]);

    // Quarantine ends the open session; the device comes back limited to attestation topics.
    let (status, json) = api
        .call(
            Method::POST,
            "/api/v1/devices/dev-04/quarantine",
            Some(&api.operator),
            Some(json!({"reason": "odd traffic"})),
        )
        .await;
    assert_eq!(
        (status, json["status"].as_str()),
        (StatusCode::OK, Some("quarantined")),
        "{json}"
    );
    let e = api
        .server
        .wait_event("device.status", |e| e.device_id.as_deref() == Some("dev-04"))
        .await;
    assert_eq!(e.reason.as_deref(), Some("odd traffic"));
    assert!(e.actor.starts_with("api:"));
    {
        let (_, client) = &mut sessions[4];
        session_ends(client).await;
    }
    // Forbidden transitions are 409; activate brings it back; the viewer cannot act.
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/devices/dev-04/quarantine",
            Some(&api.operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = api
        .call(Method::POST, "/api/v1/devices/dev-04/activate", Some(&api.viewer), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, json) = api
        .call(
            Method::POST,
            "/api/v1/devices/dev-04/activate",
            Some(&api.operator),
            None,
        )
        .await;
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("active")));

    // Revocation: the session ends at once, the next handshake is refused, and it is terminal.
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/devices/dev-05/revoke",
            Some(&api.operator),
            Some(json!({"reason": "stolen"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    {
        let (_, client) = &mut sessions[5];
        session_ends(client).await;
    }
    let (d5, _) = &sessions[5];
    assert!(api.server.connect(d5, "dev-05", TlsProfile::Tls13).await.is_err());
    let (status, _) = api
        .call(Method::POST, "/api/v1/devices/dev-05/activate", Some(&api.admin), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(count(api.get("/api/v1/devices?status=revoked", &api.viewer).await), 1);
    let (status, _) = api
        .call(Method::POST, "/api/v1/devices/ghost/revoke", Some(&api.operator), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_summary_audit_tokens_and_openapi() {
    let root = TestCa::root(KeyKind::P256, "Summary Root");
    let api = Api::new(&[&root]).await;
    let good = root.issue_device(KeyKind::P256, "good-1");
    let (_c, code) = api.server.connect(&good, "good-1", TlsProfile::Tls13).await.unwrap();
    assert_eq!(code, 0);
    // A device of an unknown CA is refused at the handshake (a rejection).
    let stranger = TestCa::root(KeyKind::P256, "Stranger").issue_device(KeyKind::P256, "stranger");
    assert!(
        api.server
            .connect(&stranger, "stranger", TlsProfile::Tls13)
            .await
            .is_err()
    );
    // Another device's client id (a refused CONNECT).
    let impostor = root.issue_device(KeyKind::P256, "impostor");
    let (_i, code) = api
        .server
        .connect(&impostor, "good-1", TlsProfile::Tls13)
        .await
        .unwrap();
    assert_eq!(code, 2);
    api.server.wait_event("device.refused", |_| true).await;
    api.server.wait_event("chain.rejected", |_| true).await;

    // Events: filters, order, paging.
    let all = api.get("/api/v1/events?limit=1000", &api.viewer).await;
    let items = all["items"].as_array().unwrap();
    assert!(
        items.windows(2).all(|w| w[0]["id"].as_i64() > w[1]["id"].as_i64()),
        "newest first"
    );
    let asc = api.get("/api/v1/events?order=asc&limit=1000", &api.viewer).await;
    assert_eq!(asc["items"].as_array().unwrap().len(), items.len());
    let registered = api.get("/api/v1/events?kind=device.registered", &api.viewer).await;
    assert_eq!(registered["items"].as_array().unwrap().len(), 2);
    let family = api.get("/api/v1/events?kind=device.&device=good-1", &api.viewer).await;
    assert!(
        family["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["device_id"] == "good-1")
    );
    let page1 = api.get("/api/v1/events?limit=2", &api.viewer).await;
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = api
        .get(&format!("/api/v1/events?limit=2&cursor={cursor}"), &api.viewer)
        .await;
    assert!(page2["items"][0]["id"].as_i64() < page1["items"][1]["id"].as_i64());
    assert_eq!(
        api.get("/api/v1/events?since=2099-01-01T00:00:00Z", &api.viewer).await["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Fleet summary: counts and 24 buckets of onboarding and rejections.
    let s = api.get("/api/v1/fleet/summary", &api.viewer).await;
    assert_eq!(s["total"], 2);
    assert_eq!(s["by_status"]["active"], 2);
    assert_eq!(s["online"], 1);
    assert_eq!(s["onboarding"].as_array().unwrap().len(), 24);
    let sum = |series: &Value| {
        series
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!(sum(&s["onboarding"]), 2);
    assert!(sum(&s["rejections"]) >= 2, "{s}");
    assert_eq!(s["bucket_seconds"], 3600);
    assert_eq!(
        api.get("/api/v1/fleet/summary?window=7d", &api.viewer).await["bucket_seconds"],
        25200
    );

    // Audit: the client-id conflict is a finding; each finding has the contract's fields.
    let audit = api.get("/api/v1/audit", &api.viewer).await;
    assert_eq!(
        audit["checks_run"].as_array().unwrap().len(),
        registry::AUDIT_CHECKS.len()
    );
    let findings = audit["findings"].as_array().unwrap();
    let conflict = findings
        .iter()
        .find(|f| f["check"] == "conflicting_client_ids")
        .expect("finding");
    assert_eq!(conflict["affected_devices"], json!(["impostor"]));
    assert_eq!(conflict["severity"], "high");
    for f in findings {
        for field in [
            "severity",
            "title",
            "affected_count",
            "affected_devices",
            "suggested_action",
        ] {
            assert!(f.get(field).is_some(), "{f}");
        }
    }

    // Tokens: created (secret once), usable at once, listed without secrets, revoked at once.
    let (status, created) = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&api.admin),
            Some(json!({"role": "viewer", "description": "grafana"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().unwrap().to_owned();
    api.get("/api/v1/devices", &secret).await;
    let list = api.get("/api/v1/tokens", &api.admin).await;
    assert!(!list.to_string().contains(&secret));
    let id = created["id"].as_str().unwrap();
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/api/v1/tokens/{id}/revoke"),
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.call(Method::GET, "/api/v1/devices", Some(&secret), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The OpenAPI document is public and describes every endpoint with bearer security.
    let (status, doc) = api.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/cas/registration-code",
        "/api/v1/cas",
        "/api/v1/cas/{id}",
        "/api/v1/cas/{id}/revoke",
        "/api/v1/cas/{id}/crl",
        "/api/v1/devices",
        "/api/v1/devices/{id}",
        "/api/v1/devices/{id}/activate",
        "/api/v1/devices/{id}/quarantine",
        "/api/v1/devices/{id}/revoke",
        "/api/v1/devices/{id}/labels",
        "/api/v1/events",
        "/api/v1/events/stream",
        "/api/v1/fleet/summary",
        "/api/v1/audit",
        "/api/v1/tokens",
        "/api/v1/sigfox/devices",
        "/api/v1/sigfox/devices/{device_id}",
        "/api/v1/sigfox/devices/{device_id}/uplinks",
        "/api/v1/sigfox/frames",
        "/api/v1/sigfox/devices/{device_id}/downlinks",
    ] {
        assert!(paths.contains_key(p), "{p} missing from OpenAPI");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_over_real_http() {
    let root = TestCa::root(KeyKind::P256, "Stream Root");
    let api = Api::new(&[&root]).await;
    let url = format!("http://{}/api/v1/events/stream", api.server.running.http_addr);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = reqwest::Client::new();
    let mut response = client.get(&url).bearer_auth(&api.viewer).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    // A device onboards: its registration arrives on the stream with its event id.
    let d = root.issue_device(KeyKind::P256, "streamed");
    let (_c, code) = api.server.connect(&d, "streamed", TlsProfile::Tls13).await.unwrap();
    assert_eq!(code, 0);
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains("device.registered") {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let id: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .unwrap();
    let event: Value = serde_json::from_str(data).unwrap();
    assert_eq!(event["id"], id);
    // Resuming with Last-Event-ID replays what came after; a filtered stream sees only its kind.
    let mut resumed = client
        .get(format!("{url}?kind=device.registered"))
        .bearer_auth(&api.viewer)
        .header("Last-Event-ID", (id - 1).to_string())
        .send()
        .await
        .unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(5), resumed.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&chunk).contains("\"streamed\""));
    // Without a token: 401.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    // Streams are bounded per node: with every slot taken, a new one is refused with 503.
    let slots = api.server.running.http_state().stream_slots;
    let held = slots
        .clone()
        .try_acquire_many_owned(slots.available_permits() as u32)
        .unwrap();
    let refused = client.get(&url).bearer_auth(&api.viewer).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    drop(held);
    // Open streams do not hold up shutdown.
    let shutdown = tokio::time::timeout(Duration::from_secs(20), api.server.running.shutdown()).await;
    assert!(shutdown.is_ok(), "shutdown waited on an open event stream");
    drop((response, resumed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_headers_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::new(&[]).await;
    let mut slow = tokio::net::TcpStream::connect(api.server.running.http_addr)
        .await
        .unwrap();
    slow.write_all(b"GET /api/v1/devices HTTP/1.1\r\nHost: fleetward\r\n")
        .await
        .unwrap();
    // Never finishes its headers: the server hangs up after its 10 s header timeout.
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection was still open after 20 s");
    // Meanwhile and after, normal requests are served.
    let (status, _) = api.call(Method::GET, "/api/v1/devices", Some(&api.viewer), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lorawan_devices_keep_their_keys() {
    let api = Api::new(&[]).await;
    let admin = Some(api.admin.as_str());
    let otaa = json!({"dev_eui": "0x0004A30B001B7AD2", "join_eui": "70b3d57ed0000001", "mac_version": "1.1",
        "app_key": "000102030405060708090a0b0c0d0e0f", "nwk_key": "0f0e0d0c0b0a09080706050403020100"});
    let (status, body) = api
        .call(Method::POST, "/api/v1/lorawan/devices", admin, Some(otaa.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["dev_eui"], "0004A30B001B7AD2");
    assert_eq!(body["activation"], "otaa");
    assert!(
        !body.to_string().contains("000102030405060708090a0b0c0d0e0f"),
        "keys never come back: {body}"
    );
    let (status, _) = api
        .call(Method::POST, "/api/v1/lorawan/devices", admin, Some(otaa))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let abp = json!({"dev_eui": "0004a30b001b7ad3", "dev_addr": "26011bda", "mac_version": "1.0.3",
        "nwk_s_key": "02020202020202020202020202020202", "app_s_key": "01010101010101010101010101010101",
        "fcnt_up": 10, "fcnt_down": 3});
    let (status, body) = api
        .call(Method::POST, "/api/v1/lorawan/devices", admin, Some(abp))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (
            body["activation"].as_str(),
            body["dev_addr"].as_str(),
            body["fcnt_up"].as_i64()
        ),
        (Some("abp"), Some("26011BDA"), Some(10))
    );
    for bad in [
        json!({"dev_eui": "0004a30b001b7ad4", "mac_version": "1.0.3", "join_eui": "70b3d57ed0000001"}),
        json!({"dev_eui": "0004a30b001b7ad4", "mac_version": "1.0.3", "join_eui": "70b3d57ed0000001", "app_key": "00", }),
        json!({"dev_eui": "0004a30b001b7ad4", "mac_version": "1.1", "join_eui": "70b3d57ed0000001", "app_key": "000102030405060708090a0b0c0d0e0f"}),
        json!({"dev_eui": "0004a30b001b7ad4", "mac_version": "1.0.3", "join_eui": "70b3d57ed0000001", "app_key": "000102030405060708090a0b0c0d0e0f", "nwk_key": "000102030405060708090a0b0c0d0e0f"}),
        json!({"dev_eui": "0004a30b001b7ad4", "mac_version": "2.0", "join_eui": "70b3d57ed0000001", "app_key": "000102030405060708090a0b0c0d0e0f"}),
        json!({"dev_eui": "xyz", "mac_version": "1.0.3"}),
        json!({"dev_eui": "0004a30b001b7ad4", "mac_version": "1.1", "dev_addr": "26011bdb", "app_s_key": "01010101010101010101010101010101", "nwk_s_key": "02020202020202020202020202020202"}),
    ] {
        let (status, body) = api
            .call(Method::POST, "/api/v1/lorawan/devices", admin, Some(bad.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {body}");
    }
    let viewer = Some(api.viewer.as_str());
    let (_, list) = api
        .call(Method::GET, "/api/v1/lorawan/devices?limit=1", viewer, None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let cursor = list["next_cursor"].as_str().unwrap().to_owned();
    let (_, page2) = api
        .call(
            Method::GET,
            &format!("/api/v1/lorawan/devices?limit=1&cursor={cursor}"),
            viewer,
            None,
        )
        .await;
    assert_eq!(page2["items"][0]["dev_eui"], "0004A30B001B7AD3");
    assert_eq!(page2["next_cursor"], Value::Null);
    let (status, up) = api
        .call(
            Method::GET,
            "/api/v1/lorawan/devices/0004a30b001b7ad3/uplinks",
            viewer,
            None,
        )
        .await;
    assert_eq!((status, up["items"].as_array().unwrap().len()), (StatusCode::OK, 0));
    let (status, _) = api
        .call(Method::GET, "/api/v1/lorawan/devices/0004a30b001b7ad9", viewer, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.server.running.shutdown().await;
}
