//! The SMF's Nsmf_EventExposure API (TS 29.508) on 127.0.0.1: resource handling, errors as
//! ProblemDetails, the token, and every body checked against the 3GPP OpenAPI schemas.
//! (Notifications themselves are checked in `smf_lr.rs`, where handovers happen.)

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use emu_5gc::smf::SmfConfig;
use model::schema::{names, SchemaSet};
use sbi::nf::{Ready, Shutdown};
use serde_json::{json, Value};
use tokio::net::{TcpListener, UdpSocket};

const TOKEN: &str = "test-token";

struct Smf {
    subscriptions: String,
    schemas: SchemaSet,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn start() -> Smf {
    let sbi = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = sbi.local_addr().expect("addr");
    let pfcp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let config = SmfConfig {
        sbi_addr: "127.0.0.1:0".parse().expect("addr"),
        pfcp_addr: "127.0.0.1:0".parse().expect("addr"),
        token: Some(TOKEN.into()),
        lr_url: "http://127.0.0.1:9".into(),
        ue_pool: "192.168.1.0/24".parse().expect("pool"),
        qfi: 9,
        upfs: Vec::new(),
        gnbs: Vec::new(),
        callback_networks: Vec::new(),
        state_dir: None,
        ack_timeout_ms: None,
    };
    let (stop, shutdown) = Shutdown::new();
    tokio::spawn(emu_5gc::smf::run_on(
        config,
        sbi,
        pfcp,
        Ready::none(),
        shutdown,
    ));
    Smf {
        subscriptions: format!("http://{addr}/nsmf-event-exposure/v1/subscriptions"),
        schemas: SchemaSet::load(SchemaSet::default_dir()).expect("3gpp schemas"),
        _stop: stop,
    }
}

struct Answer {
    status: StatusCode,
    content_type: String,
    location: Option<String>,
    body: Value,
}

async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut r = client.request(method, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = r.send().await.expect("send");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (content_type, location) = (
        header("content-type").unwrap_or_default(),
        header("location"),
    );
    let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
    let text = resp.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).expect("json body")
    };
    Answer {
        status,
        content_type,
        location,
        body,
    }
}

impl Smf {
    fn check(&self, schema: &str, value: &Value) {
        if let Err(errors) = self.schemas.validate(schema, value) {
            panic!("{value} does not match {schema}: {errors:#?}");
        }
    }

    /// A request that must fail with `status`; checks the ProblemDetails and returns it.
    fn problem(&self, a: &Answer, status: StatusCode) -> Value {
        assert_eq!(a.status, status, "{}", a.body);
        assert_eq!(a.content_type, "application/problem+json");
        self.check(names::PROBLEM_DETAILS, &a.body);
        assert_eq!(a.body["status"], status.as_u16());
        a.body.clone()
    }

    async fn post(&self, body: &Value) -> Answer {
        self.check(names::NSMF_EVENT_EXPOSURE, body);
        call(
            reqwest::Method::POST,
            &self.subscriptions,
            Some(TOKEN),
            Some(&body.to_string()),
        )
        .await
    }
}

fn subscription(notif_id: &str, chg: &str) -> Value {
    json!({
        "anyUeInd": true,
        "notifId": notif_id,
        "notifUri": "http://127.0.0.1:9/af/v1/notifications",
        "eventSubs": [{"event": "UP_PATH_CH", "dnaiChgType": chg}],
    })
}

#[tokio::test]
async fn subscriptions_are_resources() {
    let smf = start().await;
    let request = subscription("n-1", "EARLY");
    let created = smf.post(&request).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    smf.check(names::NSMF_EVENT_EXPOSURE, &created.body);
    let sub_id = created.body["subId"].as_str().expect("subId").to_owned();
    let url = format!("{}/{sub_id}", smf.subscriptions);
    assert_eq!(created.location.as_deref(), Some(url.as_str()));
    let mut expected = request.clone();
    expected["subId"] = json!(sub_id);
    assert_eq!(
        created.body, expected,
        "the 201 body is the subscription with its subId"
    );

    let got = call(reqwest::Method::GET, &url, Some(TOKEN), None).await;
    assert_eq!(got.status, StatusCode::OK);
    smf.check(names::NSMF_EVENT_EXPOSURE, &got.body);
    assert_eq!(got.body, expected);

    // PUT replaces the whole resource; the subId stays.
    let mut replacement = subscription("n-2", "LATE");
    replacement["anyUeInd"] = json!(null);
    replacement
        .as_object_mut()
        .expect("object")
        .remove("anyUeInd");
    replacement["supi"] = json!("imsi-001010000000001");
    smf.check(names::NSMF_EVENT_EXPOSURE, &replacement);
    let put = call(
        reqwest::Method::PUT,
        &url,
        Some(TOKEN),
        Some(&replacement.to_string()),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    smf.check(names::NSMF_EVENT_EXPOSURE, &put.body);
    let mut expected = replacement.clone();
    expected["subId"] = json!(sub_id);
    assert_eq!(put.body, expected);
    let got = call(reqwest::Method::GET, &url, Some(TOKEN), None).await;
    assert_eq!(got.body, expected);

    // DELETE, then it is gone.
    let deleted = call(reqwest::Method::DELETE, &url, Some(TOKEN), None).await;
    assert_eq!(
        (deleted.status, deleted.body),
        (StatusCode::NO_CONTENT, Value::Null)
    );
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        smf.problem(
            &call(method, &url, Some(TOKEN), None).await,
            StatusCode::NOT_FOUND,
        );
    }
    let put = call(
        reqwest::Method::PUT,
        &url,
        Some(TOKEN),
        Some(&replacement.to_string()),
    )
    .await;
    smf.problem(&put, StatusCode::NOT_FOUND);
    let unknown = format!("{}/sub-404", smf.subscriptions);
    smf.problem(
        &call(reqwest::Method::GET, &unknown, Some(TOKEN), None).await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test]
async fn bad_requests_are_problems() {
    let smf = start().await;
    let url = smf.subscriptions.clone();
    let send = |body: String| {
        let url = url.clone();
        async move { call(reqwest::Method::POST, &url, Some(TOKEN), Some(&body)).await }
    };

    // Not JSON.
    let p = smf.problem(
        &send("{\"notifId\": ".into()).await,
        StatusCode::BAD_REQUEST,
    );
    assert_eq!(p["cause"], "INVALID_MSG_FORMAT");
    // An unknown field.
    let mut extra = subscription("n", "EARLY");
    extra["colour"] = json!("blue");
    let p = smf.problem(&send(extra.to_string()).await, StatusCode::BAD_REQUEST);
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("colour")),
        "{p}"
    );
    // Missing notifUri; empty eventSubs.
    let mut no_uri = subscription("n", "EARLY");
    no_uri.as_object_mut().expect("object").remove("notifUri");
    let p = smf.problem(&send(no_uri.to_string()).await, StatusCode::BAD_REQUEST);
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("notifUri")),
        "{p}"
    );
    let mut no_events = subscription("n", "EARLY");
    no_events["eventSubs"] = json!([]);
    smf.problem(&send(no_events.to_string()).await, StatusCode::BAD_REQUEST);

    // Valid TS 29.508 bodies this SMF does not support: 400 naming the parameter at fault.
    let cases = [
        (
            json!({"eventSubs": [{"event": "PDU_SES_EST"}]}),
            "/eventSubs/0/event",
            "MANDATORY_IE_INCORRECT",
        ),
        (
            json!({"eventSubs": [{"event": "UP_PATH_CH"}]}),
            "/eventSubs/0/dnaiChgType",
            "MANDATORY_IE_MISSING",
        ),
        (json!({"anyUeInd": null}), "/supi", "MANDATORY_IE_MISSING"),
        (
            json!({"supi": "imsi-001010000000001"}),
            "/anyUeInd",
            "OPTIONAL_IE_INCORRECT",
        ),
        (
            json!({"anyUeInd": null, "groupId": "abcdef12-001-01-00"}),
            "/groupId",
            "OPTIONAL_IE_INCORRECT",
        ),
        (
            json!({"notifMethod": "PERIODIC", "repPeriod": 10}),
            "/notifMethod",
            "OPTIONAL_IE_INCORRECT",
        ),
        (
            json!({"notifUri": "not a uri"}),
            "/notifUri",
            "MANDATORY_IE_INCORRECT",
        ),
        // Callbacks outside the deployment (the SMF's own network, loopback here), or to a
        // name the SMF would have to resolve.
        (
            json!({"notifUri": "http://8.8.8.8/x"}),
            "/notifUri",
            "MANDATORY_IE_INCORRECT",
        ),
        (
            json!({"notifUri": "http://af.example.invalid/x"}),
            "/notifUri",
            "MANDATORY_IE_INCORRECT",
        ),
    ];
    for (patch, param, cause) in cases {
        let mut body = subscription("n", "EARLY");
        for (k, v) in patch.as_object().expect("patch") {
            if v.is_null() {
                body.as_object_mut().expect("object").remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        smf.check(names::NSMF_EVENT_EXPOSURE, &body);
        let p = smf.problem(&send(body.to_string()).await, StatusCode::BAD_REQUEST);
        assert_eq!(p["cause"], cause, "{p}");
        assert_eq!(p["invalidParams"][0]["param"], param, "{p}");
    }

    // Wrong media type.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let resp = client
        .post(&smf.subscriptions)
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body(subscription("n", "EARLY").to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 415);

    // Nothing was created by any of these: the next subscription is the first.
    let created = smf.post(&subscription("n", "EARLY")).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["subId"], "sub-1");
}

#[tokio::test]
async fn the_token_is_required_and_nothing_changes_without_it() {
    let smf = start().await;
    let created = smf.post(&subscription("n-1", "EARLY")).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let url = created.location.expect("location");
    let other = subscription("n-2", "LATE").to_string();

    for token in [None, Some("wrong-token")] {
        let a = call(
            reqwest::Method::POST,
            &smf.subscriptions,
            token,
            Some(&other),
        )
        .await;
        smf.problem(&a, StatusCode::UNAUTHORIZED);
        let a = call(reqwest::Method::PUT, &url, token, Some(&other)).await;
        smf.problem(&a, StatusCode::UNAUTHORIZED);
        let a = call(reqwest::Method::DELETE, &url, token, None).await;
        smf.problem(&a, StatusCode::UNAUTHORIZED);
        let a = call(reqwest::Method::GET, &url, token, None).await;
        smf.problem(&a, StatusCode::UNAUTHORIZED);
    }
    let got = call(reqwest::Method::GET, &url, Some(TOKEN), None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, created.body, "unchanged");
    let next = smf.post(&subscription("n-3", "LATE")).await;
    assert_eq!(
        next.body["subId"], "sub-2",
        "no subscription was created without the token"
    );
}
