//! The dashboard through its router: login and sessions, what each page renders, operator
//! actions with their CSRF and role checks, security headers. (The browser test drives the
//! same pages in chromium.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{Server, start};
use fleetward_test_support::{KeyKind, TestCa};
use http_body_util::BodyExt;
use registry::Role;
use sim_devices::client::TlsProfile;
use tower::ServiceExt;

struct Response {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn request(server: &Server, method: Method, path: &str, cookie: Option<&str>, form: Option<&str>) -> Response {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let body = match form {
        Some(f) => {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Body::from(f.to_owned())
        }
        None => Body::empty(),
    };
    let app = gateway::http::router(server.running.http_state());
    let r = app.oneshot(req.body(body).unwrap()).await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Response { status, headers, body }
}

async fn login(server: &Server, token: &str) -> String {
    let r = request(
        server,
        Method::POST,
        "/login",
        None,
        Some(&format!("token={token}&next=%2Fdevices")),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.headers[header::LOCATION], "/devices");
    let set = r.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    assert!(!set.contains(token), "the token is not the cookie");
    set.split(';').next().unwrap().to_owned()
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    page[at..at + 32].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_pages_actions_and_logout() {
    let root = TestCa::root(KeyKind::P256, "Dashboard Root");
    let server = start(&[&root]).await;
    let r = &server.running.registry;
    let viewer = r
        .create_token(Role::Viewer, None, "t", 0)
        .await
        .unwrap()
        .secret
        .to_string();
    let operator = r
        .create_token(Role::Operator, None, "t", 0)
        .await
        .unwrap()
        .secret
        .to_string();
    let d = root.issue_device(KeyKind::P256, "dash-1");
    let (_c, code) = server.connect(&d, "dash-1", TlsProfile::Tls13).await.unwrap();
    assert_eq!(code, 0);
    let stranger = TestCa::root(KeyKind::P256, "Stranger").issue_device(KeyKind::P256, "stranger");
    assert!(server.connect(&stranger, "stranger", TlsProfile::Tls13).await.is_err());
    server.wait_event("chain.rejected", |_| true).await;

    // Not logged in: every page sends us to the login form, remembering where we were going.
    for path in [
        "/",
        "/devices",
        "/devices/dash-1",
        "/cas",
        "/firmware",
        "/audit",
        "/events",
    ] {
        let r = request(&server, Method::GET, path, None, None).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        assert!(
            r.headers[header::LOCATION]
                .to_str()
                .unwrap()
                .starts_with("/login?next=")
        );
    }
    let r = request(&server, Method::GET, "/ui/events/stream", None, None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let form = request(&server, Method::GET, "/login", None, None).await;
    assert!(form.body.contains("type=\"password\" name=\"token\""));
    assert!(
        form.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    // A wrong token: 401 and the form again; an open redirect is not followed.
    let bad = request(&server, Method::POST, "/login", None, Some("token=fw_00_00&next=%2F")).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.body.contains("not accepted"));
    let evil = request(
        &server,
        Method::POST,
        "/login",
        None,
        Some(&format!("token={viewer}&next=%2F%2Fevil.example")),
    )
    .await;
    assert_eq!(evil.headers[header::LOCATION], "/");

    // A viewer sees the fleet, but no action buttons.
    let cookie = login(&server, &viewer).await;
    let c = Some(cookie.as_str());
    let overview = request(&server, Method::GET, "/", c, None).await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(
        overview
            .body
            .contains("id=\"total-devices\"><span class=\"big\">1</span>"),
        "{}",
        overview.body
    );
    assert!(overview.body.contains("<svg class=\"chart\""));
    assert!(overview.body.contains("chain.rejected"), "refusals are shown");
    assert_eq!(overview.headers[header::X_FRAME_OPTIONS], "DENY");
    let devices = request(&server, Method::GET, "/devices?status=active", c, None).await;
    assert!(devices.body.contains(">dash-1</a>"));
    let none = request(&server, Method::GET, "/devices?status=revoked", c, None).await;
    assert!(none.body.contains("No device matches."));
    let bad_filter = request(&server, Method::GET, "/devices?seen_since=whenever", c, None).await;
    assert_eq!(bad_filter.status, StatusCode::BAD_REQUEST);
    let page = request(&server, Method::GET, "/devices/dash-1", c, None).await;
    assert!(page.body.contains("id=\"device-id\">dash-1<"));
    assert!(page.body.contains("CN=Dashboard Root"));
    assert!(page.body.contains("device.registered"));
    assert!(
        !page.body.contains("value=\"quarantine\""),
        "viewers get no action buttons"
    );
    assert!(page.body.contains("id=\"attestation\""), "the attestation panel");
    assert!(page.body.contains("No evidence yet."));
    // The firmware page: reference values, and measured images that are not one.
    let reg = &server.running.registry;
    reg.add_firmware_reference("sensor-fw", "1.4.2", &"ab".repeat(32), None, true, "t", 0)
        .await
        .unwrap();
    reg.set_firmware("dash-1", "0.9.0", &"ee".repeat(32)).await.unwrap();
    let fw = request(&server, Method::GET, "/firmware", c, None).await;
    assert_eq!(fw.status, StatusCode::OK);
    assert!(
        fw.body.contains("sensor-fw") && fw.body.contains(&"ab".repeat(32)),
        "{}",
        fw.body
    );
    assert!(
        fw.body.contains("id=\"unknown-firmware\"") && fw.body.contains(&"ee".repeat(32)),
        "{}",
        fw.body
    );
    let by_digest = request(
        &server,
        Method::GET,
        &format!("/devices?firmware_digest={}", "ee".repeat(32)),
        c,
        None,
    )
    .await;
    assert!(by_digest.body.contains(">dash-1</a>"), "{}", by_digest.body);
    let missing = request(&server, Method::GET, "/devices/ghost", c, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        request(&server, Method::GET, "/cas", c, None)
            .await
            .body
            .contains("CN=Dashboard Root")
    );
    assert!(
        request(&server, Method::GET, "/audit", c, None)
            .await
            .body
            .contains("attestation_never_passed")
    );
    let events = request(&server, Method::GET, "/events", c, None).await;
    assert!(events.body.contains("/static/live.js") && events.body.contains("device.registered"));
    let filtered = request(&server, Method::GET, "/events?kind=chain.", c, None).await;
    assert!(filtered.body.contains("chain.rejected") && !filtered.body.contains("device.registered"));
    // A viewer's forged action is refused.
    let csrf = csrf_of(&page.body);
    let r = request(
        &server,
        Method::POST,
        "/devices/dash-1/action",
        c,
        Some(&format!("csrf={csrf}&action=revoke")),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // An operator acts; the CSRF token is required.
    let cookie = login(&server, &operator).await;
    let c = Some(cookie.as_str());
    let page = request(&server, Method::GET, "/devices/dash-1", c, None).await;
    assert!(page.body.contains("value=\"quarantine\""));
    let r = request(
        &server,
        Method::POST,
        "/devices/dash-1/action",
        c,
        Some("csrf=0000&action=quarantine"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a wrong CSRF token");
    let csrf = csrf_of(&page.body);
    let r = request(
        &server,
        Method::POST,
        "/devices/dash-1/action",
        c,
        Some(&format!("csrf={csrf}&action=quarantine&reason=looks+odd")),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(
        server.running.registry.device("dash-1").await.unwrap().status,
        registry::DeviceStatus::Quarantined
    );
    let e = server
        .wait_event("device.status", |e| e.device_id.as_deref() == Some("dash-1"))
        .await;
    assert_eq!(e.reason.as_deref(), Some("looks odd"));

    // Logging out ends the session.
    let r = request(&server, Method::POST, "/logout", c, Some(&format!("csrf={csrf}"))).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let after = request(&server, Method::GET, "/", c, None).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);

    // Revoking the token ends its sessions too.
    let cookie = login(&server, &viewer).await;
    let id = server
        .running
        .registry
        .tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.role == Role::Viewer)
        .unwrap()
        .id;
    server.running.registry.revoke_token(&id, 1).await.unwrap();
    let r = request(&server, Method::GET, "/", Some(&cookie), None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);

    // Static assets.
    let css = request(&server, Method::GET, "/static/app.css", None, None).await;
    assert_eq!(css.headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
    let js = request(&server, Method::GET, "/static/live.js", None, None).await;
    assert!(js.body.contains("EventSource") && js.body.contains("textContent"));
}
