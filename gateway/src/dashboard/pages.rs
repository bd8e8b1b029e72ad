//! The dashboard's pages.

use super::charts::{self, bar_list, stacked_bar, swatch, time_bars};
use super::{COOKIE, User, clear_cookie, error_page, secure, urlencode};
use crate::api::devices::{DeviceQuery, device_detail, list_devices, set_status};
use crate::api::events::{self as api_events, EventQuery, list_events};
use crate::api::fleet::{AuditQuery, fleet_summary, run_audit};
use crate::api::model::{AuditFinding, Ca, EventItem, FirmwareStatus};
use crate::http::AppState;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use registry::{DeviceStatus, Role};
use serde::Deserialize;

const CSS: &str = include_str!("app.css");
const LIVE_JS: &str = include_str!("live.js");

pub(super) async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
}

pub(super) async fn live_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        LIVE_JS,
    )
}

fn layout(title: &str, user: Option<&User>, active: &str, body: Markup) -> Markup {
    let nav = [
        ("/", "Overview"),
        ("/devices", "Devices"),
        ("/cas", "CAs"),
        ("/firmware", "Firmware"),
        ("/audit", "Audit"),
        ("/events", "Live events"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fleetward" }
                link rel="stylesheet" href="/static/app.css";
            }
            body {
                header.top {
                    a.brand href="/" { "fleetward" }
                    @if let Some(u) = user {
                        nav {
                            @for (href, name) in nav {
                                a href=(href) class=[(active == href).then_some("active")] { (name) }
                            }
                        }
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(u.csrf);
                            span.role { (u.caller.role.as_str()) }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn page(title: &str, user: &User, active: &str, body: Markup) -> Response {
    secure(layout(title, Some(user), active, body).into_response())
}

pub(super) fn message_page(title: &str, message: &str) -> Markup {
    layout(
        title,
        None,
        "",
        html! { h1 { (title) } p.error { (message) } p { a href="/" { "Back to the overview" } } },
    )
}

fn badge(value: &str) -> Markup {
    html! { span class=(format!("badge b-{}", value.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))) { (value) } }
}

// --- login ------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

pub(super) async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    secure(login_page(q.next.as_deref().unwrap_or("/"), None).into_response())
}

fn login_page(next: &str, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        "",
        html! {
            section.login {
                h1 { "Fleet integrity dashboard" }
                p { "Log in with an API token (printed at the server's first start, or made with "
                    code { "fleetward token create --role viewer --data-dir DIR" } ")." }
                @if let Some(e) = error { p.error { (e) } }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    label for="token" { "API token" }
                    input #token type="password" name="token" autocomplete="off" required autofocus;
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
    next: Option<String>,
}

pub(super) async fn login(
    State(state): State<AppState>,
    parts: axum::http::request::Parts,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = form
        .next
        .filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/login"))
        .unwrap_or_else(|| "/".into());
    let token = form.token.trim();
    match crate::api::authenticate(&state, &parts, Some(token)).await {
        Ok(_) => {
            let Some(id) = state.sessions.create(token) else {
                return error_page(crate::api::ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "no randomness for a session",
                ));
            };
            let mut r = Redirect::to(&next).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                super::SESSION_TTL.as_secs()
            )) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => secure(
            (
                StatusCode::UNAUTHORIZED,
                login_page(
                    &next,
                    Some("That token was not accepted (unknown, mistyped or revoked)."),
                ),
            )
                .into_response(),
        ),
        Err(e) => error_page(e),
    }
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    csrf: String,
}

pub(super) async fn logout(
    State(state): State<AppState>,
    user: User,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !same_origin(&headers) || !csrf_ok(&user, &form.csrf) {
        return forbidden_form();
    }
    if let Some(id) = super::session_id(&headers) {
        state.sessions.remove(&id);
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    r
}

fn csrf_ok(user: &User, presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(user.csrf.as_bytes().ct_eq(presented.as_bytes()))
}

/// A browser's POST carries `Origin`; if it does, it must be this server.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host)
}

fn forbidden_form() -> Response {
    secure(
        (
            StatusCode::FORBIDDEN,
            message_page("Forbidden", "This form did not come from this dashboard."),
        )
            .into_response(),
    )
}

// --- overview ---------------------------------------------------------------------------------

fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 0,
        "high" => 1,
        "medium" => 2,
        _ => 3,
    }
}

fn finding_card(f: &AuditFinding) -> Markup {
    html! {
        article.finding {
            div.finding-head {
                (badge(&f.severity))
                strong { (f.title) }
                span.check { (f.check) }
            }
            p { (f.description) }
            @if !f.affected_devices.is_empty() {
                p.devices {
                    "Devices: "
                    @for (i, d) in f.affected_devices.iter().enumerate() {
                        @if i > 0 { ", " }
                        a href=(format!("/devices/{}", urlencode(d))) { (d) }
                    }
                    @if f.affected_count > f.affected_devices.len() as i64 {
                        " … (" (f.affected_count) @if f.affected_count_capped { "+" } " in all)"
                    }
                }
            }
            @if !f.affected_cas.is_empty() {
                p.devices { "CAs: " @for c in &f.affected_cas { code { (&c[..c.len().min(16)]) } " " } }
            }
            p.action { "→ " (f.suggested_action) }
        }
    }
}

pub(super) async fn overview(State(state): State<AppState>, user: User) -> Response {
    let audit_query = AuditQuery::default();
    let (summary, audit, cas, refusals) = tokio::join!(
        fleet_summary(&state, None),
        run_audit(&state, &audit_query),
        state.registry.cas(),
        recent_refusals(&state)
    );
    let summary = match summary {
        Ok(s) => s,
        Err(e) => return error_page(e),
    };
    let audit = match audit {
        Ok(a) => a,
        Err(e) => return error_page(e),
    };
    let cas = cas.unwrap_or_default();
    let status: Vec<(String, i64)> = ["active", "pending", "quarantined", "revoked"]
        .iter()
        .map(|s| ((*s).to_owned(), summary.by_status.get(*s).copied().unwrap_or(0)))
        .collect();
    let integrity: Vec<(String, i64)> = ["verified", "unknown", "stale", "failed"]
        .iter()
        .map(|s| ((*s).to_owned(), summary.by_integrity.get(*s).copied().unwrap_or(0)))
        .collect();
    let mut firmware: Vec<(String, i64)> = summary.by_firmware.iter().map(|(k, v)| (k.clone(), *v)).collect();
    firmware.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    firmware.truncate(10);
    let onboarding: Vec<(String, i64)> = summary.onboarding.iter().map(|b| (b.start.clone(), b.count)).collect();
    let rejections: Vec<(String, i64)> = summary.rejections.iter().map(|b| (b.start.clone(), b.count)).collect();
    let lorawan_refusals: Vec<(String, i64)> = summary
        .lorawan_refusals
        .iter()
        .map(|b| (b.start.clone(), b.count))
        .collect();
    let sigfox_refusals: Vec<(String, i64)> = summary
        .sigfox_refusals
        .iter()
        .map(|b| (b.start.clone(), b.count))
        .collect();
    let onboarded: i64 = onboarding.iter().map(|(_, n)| n).sum();
    let rejected: i64 = rejections.iter().map(|(_, n)| n).sum();
    let mut findings = audit.findings.clone();
    findings.sort_by_key(|f| severity_rank(&f.severity));
    let critical = findings.iter().filter(|f| f.severity == "critical").count();
    let body = html! {
        h1 { "Fleet integrity" }
        section.cards {
            div.card #total-devices { span.big { (summary.total) } span { "devices" } }
            div.card #online-devices { span.big { (summary.online) } span { "online now" } }
            div.card #active-devices { span.big { (summary.by_status.get("active").copied().unwrap_or(0)) } span { "active" } }
            div.card #onboarded-24h { span.big { (onboarded) } span { "onboarded (24 h)" } }
            div.card.warn[rejected > 0] #rejected-24h { span.big { (rejected) } span { "connections refused (24 h)" } }
            div.card.alert[critical > 0] #critical-findings { span.big { (critical) } span { "critical findings" } }
        }
        div.grid {
            section.panel {
                h2 { "Status" }
                (stacked_bar(&status, "Devices by status"))
            }
            section.panel {
                h2 { "Integrity" }
                (stacked_bar(&integrity, "Devices by integrity verdict"))
            }
            section.panel {
                h2 { "Onboarding (24 h)" }
                (time_bars(&onboarding, "onboarding", "Devices onboarded per hour"))
            }
            section.panel {
                h2 { "Rejections (24 h)" }
                p.hint { "Bad certificate chains and refused MQTT sessions." }
                (time_bars(&rejections, "rejections", "Connections refused per hour"))
            }
            section.panel #lorawan-refusals {
                h2 { "LoRaWAN refusals (24 h)" }
                p.hint { "Frames with a bad MIC, replayed or out-of-window counters, unknown DevAddrs; refused joins." }
                (time_bars(&lorawan_refusals, "rejections", "LoRaWAN frames and joins refused per hour"))
            }
            section.panel #sigfox-refusals {
                h2 { "Sigfox refusals (24 h)" }
                p.hint { "Frames failing UL-AUTH, replayed sequence numbers; callbacks without the secret or from outside the allowed sources." }
                (time_bars(&sigfox_refusals, "rejections", "Sigfox frames and callbacks refused per hour"))
            }
            section.panel {
                h2 { "Firmware" }
                @if firmware.is_empty() { p { "No devices yet." } } @else { (bar_list(&firmware, "Devices by firmware version")) }
            }
            section.panel {
                h2 { "Provisioning CAs" }
                table {
                    thead { tr { th { "CA" } th { "Status" } th.num { "Devices" } } }
                    tbody {
                        @for c in &cas {
                            tr {
                                td { (c.subject) }
                                td { (badge(match c.status { registry::CaStatus::Active => "active", registry::CaStatus::Revoked => "revoked" })) }
                                td.num { (summary.by_ca.get(&c.id).copied().unwrap_or(0)) }
                            }
                        }
                    }
                }
            }
        }
        section.panel #recent-refusals {
            h2 { "Recently refused or flagged " a.more href="/events" { "live events →" } }
            @if refusals.is_empty() { p { "Nobody was refused lately." } }
            @else { (events_table(&refusals, false)) }
        }
        section.panel #top-findings {
            h2 { "Top audit findings " a.more href="/audit" { "all findings →" } }
            @if findings.is_empty() { p { "No findings: every check passed." } }
            @for f in findings.iter().take(5) { (finding_card(f)) }
        }
    };
    page("Overview", &user, "/", body)
}

/// Event kinds that mean a connection or a frame was refused, or a device flagged.
const REFUSAL_KINDS: &[&str] = &[
    "chain.rejected",
    "device.refused",
    "device.acl_violation",
    "device.clone_suspected",
    "lorawan.uplink_rejected",
    "lorawan.join_refused",
    "sigfox.frame_rejected",
    "sigfox.callback_rejected",
];

/// How many of the newest refusals and flags the overview lists (across MQTT, LoRaWAN and
/// Sigfox, so one protocol's burst does not hide the others' for long).
const RECENT_REFUSALS: u32 = 20;

/// The newest refusals and flags.
async fn recent_refusals(state: &AppState) -> Vec<EventItem> {
    let mut all = Vec::new();
    for kind in REFUSAL_KINDS {
        let filter = registry::EventFilter {
            kind: Some((*kind).to_owned()),
            newest_first: true,
            ..Default::default()
        };
        if let Ok(events) = state.registry.events(&filter, RECENT_REFUSALS).await {
            all.extend(events);
        }
    }
    all.sort_by_key(|e| std::cmp::Reverse(e.id));
    all.iter().take(RECENT_REFUSALS as usize).map(EventItem::from).collect()
}

// --- devices ----------------------------------------------------------------------------------

pub(super) async fn devices(State(state): State<AppState>, user: User, Query(query): Query<DeviceQuery>) -> Response {
    let mut q = query;
    if q.limit.is_none() {
        q.limit = Some(50);
    }
    let list = match list_devices(&state, &q).await {
        Ok(l) => l,
        Err(e) => return error_page(e),
    };
    let selected = |a: Option<&str>, b: &str| a == Some(b);
    let status = q.status.map(|s| format!("{s:?}").to_lowercase());
    let integrity = q.integrity.map(|s| format!("{s:?}").to_lowercase());
    let next_link = list.next_cursor.as_ref().map(|c| {
        let mut params: Vec<(String, String)> = Vec::new();
        for (k, v) in [
            ("status", status.clone()),
            ("integrity", integrity.clone()),
            ("ca", q.ca.clone()),
            ("firmware", q.firmware.clone()),
            ("label", q.label.clone()),
            ("seen_since", q.seen_since.clone()),
            ("q", q.q.clone()),
        ] {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                params.push((k.into(), v));
            }
        }
        params.push(("cursor".into(), c.clone()));
        format!(
            "/devices?{}",
            params
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect::<Vec<_>>()
                .join("&")
        )
    });
    let body = html! {
        h1 { "Devices" }
        form.filters method="get" action="/devices" {
            input type="search" name="q" placeholder="id prefix" value=[q.q.as_deref()];
            select name="status" {
                option value="" { "any status" }
                @for s in ["pending", "active", "quarantined", "revoked"] {
                    option value=(s) selected[selected(status.as_deref(), s)] { (s) }
                }
            }
            select name="integrity" {
                option value="" { "any integrity" }
                @for s in ["unknown", "verified", "failed", "stale"] {
                    option value=(s) selected[selected(integrity.as_deref(), s)] { (s) }
                }
            }
            input type="text" name="firmware" placeholder="firmware" value=[q.firmware.as_deref()];
            input type="text" name="label" placeholder="label key=value" value=[q.label.as_deref()];
            input type="text" name="seen_since" placeholder="seen since (24h, 7d)" value=[q.seen_since.as_deref()];
            input type="text" name="ca" placeholder="CA id" value=[q.ca.as_deref()];
            button type="submit" { "Filter" }
        }
        table #devices {
            thead { tr { th { "Device" } th { "Status" } th { "Integrity" } th { "Firmware" } th { "Online" } th { "Last seen" } th { "Certificate until" } } }
            tbody {
                @for d in &list.items {
                    tr {
                        td { a.device-id href=(format!("/devices/{}", urlencode(&d.id))) { (d.id) } }
                        td { (badge(&d.status)) }
                        td { (badge(&d.integrity)) }
                        td { (d.firmware.as_deref().unwrap_or("—")) }
                        td { @if d.online { "●" } @else { "" } }
                        td { (charts::short_time(&d.last_seen)) }
                        td { (d.certificate.not_after.get(..10).unwrap_or("")) }
                    }
                }
            }
        }
        @if list.items.is_empty() { p { "No device matches." } }
        nav.pager {
            @if let Some(link) = &next_link { a href=(link) { "Next page →" } }
        }
    };
    page("Devices", &user, "/devices", body)
}

pub(super) async fn device(State(state): State<AppState>, user: User, Path(id): Path<String>) -> Response {
    let d = match device_detail(&state, &id).await {
        Ok(d) => d,
        Err(e) => return error_page(e),
    };
    let dev = &d.device;
    let can_act = user.caller.role >= Role::Operator;
    let attestations = state.registry.attestation_history(&id, 20).await.unwrap_or_default();
    let body = html! {
        h1 { "Device " code #device-id { (dev.id) } }
        section.cards {
            div.card { span.label { "Status" } (badge(&dev.status)) }
            div.card { span.label { "Integrity" } (badge(&dev.integrity)) }
            div.card { span.label { "Firmware" } span { (dev.firmware.as_deref().unwrap_or("not reported")) } }
            div.card { span.label { "Online" } span { @if dev.online { "yes" } @else { "no" } } }
        }
        div.grid {
            section.panel {
                h2 { "Identity" }
                dl {
                    dt { "First seen" } dd { (dev.first_seen) }
                    dt { "Last seen" } dd { (dev.last_seen) }
                    dt { "Connections" } dd { (dev.connections) }
                    dt { "Last peer" } dd { (dev.last_peer.as_deref().unwrap_or("—")) }
                    dt { "TLS" } dd { (dev.tls_version.as_deref().unwrap_or("—")) " " (dev.tls_suite.as_deref().unwrap_or("")) }
                    dt { "Integrity verdict" } dd { (dev.integrity_at.as_deref().unwrap_or("never")) " " (dev.integrity_reason.as_deref().unwrap_or("")) }
                    dt { "Firmware digest" } dd { code { (dev.firmware_digest.as_deref().unwrap_or("—")) } }
                    dt { "Labels" } dd {
                        @if d.labels.is_empty() { "—" }
                        @for (k, v) in &d.labels { span.label-chip { (k) "=" (v) } " " }
                    }
                }
            }
            section.panel {
                h2 { "Certificate chain" }
                ol.chain {
                    @for link in &d.chain {
                        li {
                            strong { (link.subject) }
                            br;
                            span.hint { (link.key) " · serial " (link.serial) " · " (link.not_before.get(..10).unwrap_or("")) " → " (link.not_after.get(..10).unwrap_or("")) }
                            br;
                            code.hash { "sha256 " (link.sha256) }
                        }
                    }
                }
                details { summary { "Device certificate (PEM)" } pre { (d.certificate_pem) } }
            }
        }
        @if can_act {
            section.panel.actions {
                h2 { "Actions" }
                form method="post" action=(format!("/devices/{}/action", urlencode(&dev.id))) {
                    input type="hidden" name="csrf" value=(user.csrf);
                    input type="text" name="reason" placeholder="reason (recorded in the audit trail)";
                    @if dev.status != "active" && dev.status != "revoked" { button name="action" value="activate" { "Activate" } }
                    @if dev.status != "quarantined" && dev.status != "revoked" { button name="action" value="quarantine" { "Quarantine" } }
                    @if dev.status != "revoked" { button.danger name="action" value="revoke" { "Revoke" } }
                    @if dev.online && dev.status != "revoked" { button name="action" value="attest" { "Attest now" } }
                }
            }
        }
        section.panel #attestation {
            h2 { "Attestation" }
            @if attestations.is_empty() {
                p.hint { "No evidence yet. Devices are challenged when they subscribe to "
                    code { "devices/" (dev.id) "/attestation/#" } "; see docs/attestation.md." }
            } @else {
                table {
                    thead { tr { th { "When" } th { "Format" } th { "Result" } th { "Reason" } th { "Firmware" } th { "Digest" } } }
                    tbody {
                        @for a in &attestations {
                            tr {
                                td { (crate::api::rfc3339(a.at_ms)) }
                                td { (a.format) }
                                td { (badge(&a.result)) }
                                td { (a.reason.as_deref().unwrap_or("")) }
                                td { (a.firmware_name.as_deref().unwrap_or("")) " " (a.firmware_version.as_deref().unwrap_or("")) }
                                td { code.hash { (a.firmware_digest.as_deref().map(|d| &d[..d.len().min(16)]).unwrap_or("")) } }
                            }
                        }
                    }
                }
            }
        }
        section.panel {
            h2 { "Event timeline" }
            (events_table(&d.recent_events, false))
        }
    };
    page(&format!("Device {}", dev.id), &user, "/devices", body)
}

#[derive(Deserialize)]
pub(super) struct ActionForm {
    csrf: String,
    action: String,
    reason: Option<String>,
}

pub(super) async fn device_action(
    State(state): State<AppState>,
    user: User,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !same_origin(&headers) || !csrf_ok(&user, &form.csrf) {
        return forbidden_form();
    }
    if form.action == "attest" {
        if crate::attestation::challenge_connected(&state.hub, &id).await.is_err() {
            return error_page(crate::api::ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "not_sent",
                "the device is not connected to this node or not subscribed to its challenge topic",
            ));
        }
        return Redirect::to(&format!("/devices/{}#attestation", urlencode(&id))).into_response();
    }
    let to = match form.action.as_str() {
        "activate" => DeviceStatus::Active,
        "quarantine" => DeviceStatus::Quarantined,
        "revoke" => DeviceStatus::Revoked,
        _ => return error_page(crate::api::ApiError::bad_request("bad_action", "unknown action")),
    };
    match set_status(&state, &user.caller, &id, to, form.reason).await {
        Ok(_) => Redirect::to(&format!("/devices/{}", urlencode(&id))).into_response(),
        Err(e) => error_page(e),
    }
}

// --- CAs, audit, events -----------------------------------------------------------------------

pub(super) async fn cas(State(state): State<AppState>, user: User) -> Response {
    let cas: Vec<Ca> = match crate::api::cas::all_with_counts(&state).await {
        Ok(c) => c,
        Err(e) => return error_page(e),
    };
    let body = html! {
        h1 { "Provisioning CAs" }
        p.hint { "Register a CA with " code { "fleetward ca add --certificate CA.pem --ca-key CA.key" } " (proof of possession)." }
        table #cas {
            thead { tr { th { "Subject" } th { "Status" } th { "Key" } th { "Valid until" } th { "Identity" } th { "New devices" } th.num { "Devices" } th { "Id" } } }
            tbody {
                @for c in &cas {
                    tr {
                        td { (c.subject) }
                        td { (badge(&c.status)) @if let Some(r) = &c.revoked_reason { br; span.hint { (r) } } }
                        td { (c.key) }
                        td { (c.not_after.get(..10).unwrap_or("")) }
                        td { (format!("{:?}", c.identity).to_lowercase()) }
                        td { @if c.auto_activate { "active" } @else { "pending" } }
                        td.num { a href=(format!("/devices?ca={}", c.id)) { (c.device_count) } }
                        td { code { (&c.id[..c.id.len().min(16)]) } }
                    }
                }
            }
        }
        @if cas.is_empty() { p { "No CA registered yet." } }
    };
    page("CAs", &user, "/cas", body)
}

pub(super) async fn firmware(State(state): State<AppState>, user: User) -> Response {
    let items = match crate::api::attestation::firmware_items(&state).await {
        Ok(i) => i,
        Err(e) => return error_page(e),
    };
    let counts = state.registry.firmware_digest_counts().await.unwrap_or_default();
    let unknown: Vec<(&String, &i64)> = counts
        .iter()
        .filter(|(digest, _)| digest.as_str() != "unknown" && !items.iter().any(|i| &i.digest_hex == *digest))
        .collect();
    let body = html! {
        h1 { "Firmware reference values" }
        p.hint { "Evidence is appraised against these. Add one with "
            code { "fleetward firmware add --name N --version V --digest HEX" } " or " code { "POST /api/v1/firmware" } "." }
        table #firmware {
            thead { tr { th { "Name" } th { "Version" } th { "Status" } th { "Digest" } th { "Signer" } th.num { "Devices" } th { "Added" } } }
            tbody {
                @for f in &items {
                    tr {
                        td { (f.name) }
                        td { (f.version) }
                        td { (badge(match f.status { FirmwareStatus::Allowed => "allowed", FirmwareStatus::Blocked => "blocked" })) }
                        td { code.hash { (f.digest_hex) } }
                        td { code.hash { (f.signer_id_hex.as_deref().unwrap_or("any")) } }
                        td.num { a href=(format!("/devices?firmware_digest={}", f.digest_hex)) { (f.devices) } }
                        td { (f.created_at.get(..10).unwrap_or("")) " " span.hint { (f.created_by) } }
                    }
                }
            }
        }
        @if items.is_empty() { p { "No reference values yet: every measured image is unknown." } }
        h2 { "Images in the fleet that are not reference values" }
        @if unknown.is_empty() { p.hint { "None." } } @else {
            table #unknown-firmware {
                thead { tr { th { "Digest" } th.num { "Devices" } } }
                tbody { @for (digest, n) in &unknown { tr { td { code.hash { (digest) } } td.num { (n) } } } }
            }
        }
    };
    page("Firmware", &user, "/firmware", body)
}

pub(super) async fn audit(State(state): State<AppState>, user: User) -> Response {
    let audit = match run_audit(&state, &AuditQuery::default()).await {
        Ok(a) => a,
        Err(e) => return error_page(e),
    };
    let failing: std::collections::BTreeSet<&str> = audit.findings.iter().map(|f| f.check.as_str()).collect();
    let body = html! {
        h1 { "Fleet audit" }
        p.hint { "Computed from the registry at " (audit.generated_at) ". Checks modelled on AWS IoT Device Defender's audit, plus attestation and firmware." }
        section #findings {
            @if audit.findings.is_empty() { p { "No findings: every check passed." } }
            @for f in &audit.findings { (finding_card(f)) }
        }
        section.panel {
            h2 { "Checks run" }
            ul.checks {
                @for c in &audit.checks_run {
                    li { @if failing.contains(c.as_str()) { (swatch("failed")) } @else { (swatch("active")) } " " code { (c) } }
                }
            }
        }
    };
    page("Audit", &user, "/audit", body)
}

fn events_table(events: &[EventItem], live: bool) -> Markup {
    html! {
        table.events #events data-live=[live.then_some("1")] {
            thead { tr { th { "When" } th { "Kind" } th { "Device" } th { "Actor" } th { "Why" } } }
            tbody {
                @for e in events {
                    tr {
                        td { (charts::short_time(&e.at)) }
                        td { span class=(format!("kind k-{}", e.kind.split('.').next().unwrap_or(""))) { (e.kind) } }
                        td { @if let Some(d) = &e.device_id { a href=(format!("/devices/{}", urlencode(d))) { (d) } } }
                        td { (e.actor) }
                        td { (e.reason.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct EventsPageQuery {
    kind: Option<String>,
    device: Option<String>,
    cursor: Option<String>,
}

pub(super) async fn events(State(state): State<AppState>, user: User, Query(q): Query<EventsPageQuery>) -> Response {
    let paging_back = q.cursor.is_some();
    let list = match list_events(
        &state.registry,
        &EventQuery {
            kind: q.kind.clone().filter(|k| !k.is_empty()),
            device: q.device.clone().filter(|d| !d.is_empty()),
            cursor: q.cursor.clone(),
            limit: Some(50),
            ..Default::default()
        },
    )
    .await
    {
        Ok(l) => l,
        Err(e) => return error_page(e),
    };
    let older = list.next_cursor.as_ref().map(|c| {
        let mut link = format!("/events?cursor={}", urlencode(c));
        for (k, v) in [("kind", &q.kind), ("device", &q.device)] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                link.push_str(&format!("&{k}={}", urlencode(v)));
            }
        }
        link
    });
    let live = !paging_back && q.kind.is_none() && q.device.is_none();
    let body = html! {
        h1 { "Live events" }
        form.filters method="get" action="/events" {
            input type="text" name="kind" placeholder="kind (device. for a family)" value=[q.kind.as_deref()];
            input type="text" name="device" placeholder="device id" value=[q.device.as_deref()];
            button type="submit" { "Filter" }
        }
        @if live {
            p.hint #live-status { "Newest first; new events appear as they happen." }
        } @else {
            p.hint { "Filtered or older events (not live). " a href="/events" { "Back to the live feed" } }
        }
        (events_table(&list.items, live))
        nav.pager { @if let Some(link) = &older { a href=(link) { "Older events →" } } }
        @if live { script src="/static/live.js" {} }
    };
    page("Live events", &user, "/events", body)
}

pub(super) async fn live_events(State(state): State<AppState>, _user: User) -> Response {
    match api_events::event_stream(&state, None, None, None).await {
        Ok(sse) => sse.into_response(),
        Err(e) => e.into_response(),
    }
}
