//! A **fake** service module (`tbmodule`): it registers with its edge cloud's SMO and serves the
//! three callbacks of the service-mobility API exactly as a real module would, but it moves
//! nothing. Execute waits (a fixed delay, then for as long as a hold file exists), answers a report
//! or, when told to, a 500 ProblemDetails, and after a successful Execute drops the service from
//! its list ("it moved"). The service itself (e.g. an edge cloud's probe server) stays where it
//! runs. For tests and experiments of the SMO before real migration exists.
//!
//! Callbacks (the real module's paths, `svcmod::api`: base `http://HOST:PORT/svcmod/v1`):
//! * `GET /services` → `[Service]` (GetServices);
//! * `GET /served-service?ueIpv4Addr=A` → `Service` or 404 ProblemDetails (ServedService);
//! * `POST /execute` `ExecuteRequest` → `ExecuteReport` or 500 ProblemDetails (Execute).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use model::smo::{
    ExecuteReport, ExecuteRequest, RelocationType, Service, ServiceModule,
    ServiceModuleRegistration,
};
use sbi::{ApiError, Client, ClientError, Json};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The SMO's service-module collection.
pub const SERVICE_MODULES: &str = "/service-mobility/v1/service-modules";

/// A `--service` argument that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad service `{arg}`: {reason} (want ID,IP,MAC,OVS_PORT[,UE_IP...])")]
pub struct BadService {
    pub arg: String,
    pub reason: String,
}

/// Parses `ID,IP,MAC,OVS_PORT[,UE_IP...]` into the service a module of `relocation_type` hosts.
pub fn parse_service(arg: &str, relocation_type: RelocationType) -> Result<Service, BadService> {
    let bad = |reason: &str| BadService {
        arg: arg.to_owned(),
        reason: reason.to_owned(),
    };
    let f: Vec<&str> = arg.split(',').map(str::trim).collect();
    if f.len() < 4 {
        return Err(bad("fewer than four fields"));
    }
    if f[0].is_empty() || f[3].is_empty() {
        return Err(bad("empty service id or OVS port"));
    }
    let ipv4_addr: Ipv4Addr = f[1].parse().map_err(|_| bad("not an IPv4 address"))?;
    let mac = f[2];
    let mac_ok = mac.len() == 17
        && mac
            .split(':')
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
    if !mac_ok {
        return Err(bad("not a MAC address aa:bb:cc:dd:ee:ff"));
    }
    let ue_ipv4_addrs = f[4..]
        .iter()
        .map(|u| u.parse().map_err(|_| bad("a UE address is not IPv4")))
        .collect::<Result<Vec<Ipv4Addr>, _>>()?;
    Ok(Service {
        service_id: f[0].to_owned(),
        ipv4_addr,
        mac_addr: mac.to_ascii_lowercase(),
        ovs_port: f[3].to_owned(),
        relocation_type,
        resource_requirements: Default::default(),
        ue_ipv4_addrs,
    })
}

/// How the fake behaves on Execute.
#[derive(Debug, Clone, Default)]
pub struct ExecuteBehaviour {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Answer 500 instead of a report (the service then stays).
    pub fail: bool,
    /// After the delay, keep waiting while this file exists.
    pub hold_file: Option<PathBuf>,
}

/// The fake module's state: the services it claims to host.
#[derive(Debug)]
pub struct FakeModule {
    services: Mutex<Vec<Service>>,
    execute: ExecuteBehaviour,
}

impl FakeModule {
    pub fn new(services: Vec<Service>, execute: ExecuteBehaviour) -> Arc<Self> {
        Arc::new(Self {
            services: Mutex::new(services),
            execute,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Service>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The services it hosts now.
    pub fn services(&self) -> Vec<Service> {
        self.lock().clone()
    }

    /// The service serving `ue`, if any.
    pub fn served(&self, ue: Ipv4Addr) -> Option<Service> {
        self.lock()
            .iter()
            .find(|s| s.ue_ipv4_addrs.contains(&ue))
            .cloned()
    }

    /// Pretends to migrate: waits as told, then drops the service (or refuses).
    pub async fn execute(&self, req: &ExecuteRequest) -> Result<ExecuteReport, ApiError> {
        let start = tokio::time::Instant::now();
        if !self
            .lock()
            .iter()
            .any(|s| s.service_id == req.service.service_id)
        {
            return Err(ApiError::not_found(format!(
                "no service `{}` here",
                req.service.service_id
            )));
        }
        tokio::time::sleep(self.execute.delay).await;
        if let Some(hold) = &self.execute.hold_file {
            if hold.exists() {
                tracing::info!(hold = %hold.display(), relocation = %req.relocation_id, "holding Execute");
            }
            while hold.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if self.execute.fail {
            tracing::info!(relocation = %req.relocation_id, "failing Execute as told");
            return Err(ApiError::status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "fake module told to fail (--execute-fail): the service stays at the source",
            ));
        }
        self.lock()
            .retain(|s| s.service_id != req.service.service_id);
        let took_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        tracing::info!(
            relocation = %req.relocation_id,
            service = %req.service.service_id,
            target = %req.target_address,
            took_us,
            "Execute answered: the service \"moved\" (nothing was moved: fake module)"
        );
        Ok(ExecuteReport {
            took_us,
            bytes_moved: None,
            steps: Vec::new(),
        })
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServedQuery {
    ue_ipv4_addr: Option<String>,
}

/// The callbacks, as an axum router (serve it with [`sbi::serve`] and the deployment's token).
pub fn router(module: Arc<FakeModule>) -> Router {
    Router::new()
        .route(
            svcmod::api::SERVICES,
            get(|State(m): State<Arc<FakeModule>>| async move { Json(m.services()) }),
        )
        .route(
            svcmod::api::SERVED_SERVICE,
            get(
                |State(m): State<Arc<FakeModule>>, Query(q): Query<ServedQuery>| async move {
                    let raw = q.ue_ipv4_addr.ok_or_else(|| {
                        ApiError::bad_request("ueIpv4Addr is required", Some("ueIpv4Addr"))
                    })?;
                    let ue: Ipv4Addr = raw.parse().map_err(|_| {
                        ApiError::bad_request(
                            format!("`{raw}` is not an IPv4 address"),
                            Some("ueIpv4Addr"),
                        )
                    })?;
                    m.served(ue)
                        .map(Json)
                        .ok_or_else(|| ApiError::not_found(format!("no service here serves {ue}")))
                },
            ),
        )
        .route(
            svcmod::api::EXECUTE,
            post(
                |State(m): State<Arc<FakeModule>>, Json(req): Json<ExecuteRequest>| async move {
                    m.execute(&req).await.map(Json)
                },
            ),
        )
        .with_state(module)
}

/// Registers with the SMO at `smo` (base URL), retrying while it cannot be reached or answers
/// 5xx, for at most `patience`. A 4xx answer (bad registration, wrong token) fails at once.
pub async fn register(
    client: &Client,
    smo: &str,
    reg: &ServiceModuleRegistration,
    patience: Duration,
) -> Result<ServiceModule, ClientError> {
    let url = format!("{}{SERVICE_MODULES}", smo.trim_end_matches('/'));
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match client.post::<_, ServiceModule>(&url, reg).await {
            Ok(m) => return Ok(m),
            Err(e) if matches!(e, ClientError::Status { status, .. } if status < 500) => {
                return Err(e)
            }
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "SMO not answering yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// De-registers module `module_id` from the SMO at `smo`.
pub async fn deregister(client: &Client, smo: &str, module_id: &str) -> Result<(), ClientError> {
    client
        .delete(&format!(
            "{}{SERVICE_MODULES}/{module_id}",
            smo.trim_end_matches('/')
        ))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

    fn svc() -> Service {
        parse_service(
            "probe-x,20.0.0.10,02:14:00:00:00:0A,srv,192.168.1.2",
            RelocationType::Test,
        )
        .expect("service")
    }

    #[test]
    fn service_arguments_parse_and_bad_ones_are_named() {
        let s = svc();
        assert_eq!(s.service_id, "probe-x");
        assert_eq!(s.ipv4_addr, Ipv4Addr::new(20, 0, 0, 10));
        assert_eq!(s.mac_addr, "02:14:00:00:00:0a");
        assert_eq!(s.ovs_port, "srv");
        assert_eq!(s.relocation_type, RelocationType::Test);
        assert_eq!(s.ue_ipv4_addrs, [UE]);
        let no_ue = parse_service("a,20.0.0.20,02:14:00:00:00:14,srv", RelocationType::Criu)
            .expect("no UE");
        assert!(no_ue.ue_ipv4_addrs.is_empty());
        for bad in [
            "a,20.0.0.1,02:14:00:00:00:01",
            "a,20.0.0.300,02:14:00:00:00:01,srv",
            "a,20.0.0.1,02:14:00:00:01,srv",
            "a,20.0.0.1,02:14:00:00:00:01,srv,ue1",
            ",20.0.0.1,02:14:00:00:00:01,srv",
        ] {
            let e = parse_service(bad, RelocationType::Test).expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    async fn serve(module: Arc<FakeModule>) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(sbi::serve(
            listener,
            router(module),
            Some("tok".into()),
            async move {
                let _ = rx.await;
            },
        ));
        (format!("http://{addr}{}", svcmod::api::BASE), tx)
    }

    fn request() -> ExecuteRequest {
        ExecuteRequest {
            relocation_id: "smo-x-1".into(),
            service: svc(),
            target_address: "10.100.0.42:9100".parse().expect("addr"),
        }
    }

    #[tokio::test]
    async fn callbacks_answer_like_a_module_and_execute_drops_the_service() {
        let m = FakeModule::new(vec![svc()], ExecuteBehaviour::default());
        let (base, _stop) = serve(m.clone()).await;
        let c = Client::new(Some("tok".into()), Duration::from_secs(5));
        let list: Vec<Service> = c.get(&format!("{base}/services")).await.expect("list");
        assert_eq!(list, [svc()]);
        let s: Service = c
            .get(&format!("{base}/served-service?ueIpv4Addr={UE}"))
            .await
            .expect("served");
        assert_eq!(s.service_id, "probe-x");
        let other = c
            .get::<Service>(&format!("{base}/served-service?ueIpv4Addr=192.168.1.9"))
            .await;
        assert!(
            matches!(other, Err(ClientError::Status { status: 404, .. })),
            "{other:?}"
        );
        let bad = c
            .get::<Service>(&format!("{base}/served-service?ueIpv4Addr=nope"))
            .await;
        assert!(matches!(bad, Err(ClientError::Status { status: 400, .. })));
        let unauth = Client::new(None, Duration::from_secs(5))
            .get::<Vec<Service>>(&format!("{base}/services"))
            .await;
        assert!(matches!(
            unauth,
            Err(ClientError::Status { status: 401, .. })
        ));
        let rep: ExecuteReport = c
            .post(&format!("{base}/execute"), &request())
            .await
            .expect("execute");
        assert!(rep.bytes_moved.is_none());
        assert!(m.services().is_empty(), "the service \"moved\"");
        let again = c
            .post::<_, ExecuteReport>(&format!("{base}/execute"), &request())
            .await;
        assert!(matches!(
            again,
            Err(ClientError::Status { status: 404, .. })
        ));
    }

    #[tokio::test]
    async fn execute_fails_when_told_and_the_service_stays() {
        let m = FakeModule::new(
            vec![svc()],
            ExecuteBehaviour {
                fail: true,
                ..Default::default()
            },
        );
        let (base, _stop) = serve(m.clone()).await;
        let c = Client::new(Some("tok".into()), Duration::from_secs(5));
        let r = c
            .post::<_, ExecuteReport>(&format!("{base}/execute"), &request())
            .await;
        match r {
            Err(ClientError::Status {
                status, problem, ..
            }) => {
                assert_eq!(status, 500);
                assert!(problem.and_then(|p| p.detail).is_some());
            }
            other => panic!("want 500, got {other:?}"),
        }
        assert_eq!(m.services().len(), 1);
    }

    #[tokio::test]
    async fn execute_waits_while_the_hold_file_exists() {
        let hold = std::env::temp_dir().join(format!("tbmodule-hold-{}", std::process::id()));
        std::fs::write(&hold, "").expect("hold file");
        let m = FakeModule::new(
            vec![svc()],
            ExecuteBehaviour {
                delay: Duration::from_millis(20),
                hold_file: Some(hold.clone()),
                ..Default::default()
            },
        );
        let run = tokio::spawn({
            let m = m.clone();
            async move { m.execute(&request()).await }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!run.is_finished(), "Execute answered while held");
        assert_eq!(m.services().len(), 1);
        std::fs::remove_file(&hold).expect("release");
        let rep = run.await.expect("join").expect("report");
        assert!(rep.took_us >= 150_000, "{rep:?}");
        assert!(m.services().is_empty());
    }

    #[tokio::test]
    async fn register_retries_until_the_smo_answers_and_deregisters() {
        use axum::routing::delete;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("reserve");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let smo = format!("http://{addr}");
        let (gone_tx, mut gone_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        // The SMO comes up only after the module started asking.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let app = Router::new()
                .route(
                    SERVICE_MODULES,
                    post(|Json(reg): Json<ServiceModuleRegistration>| async move {
                        (
                            StatusCode::CREATED,
                            Json(ServiceModule {
                                module_id: "module-1".into(),
                                registration: reg,
                            }),
                        )
                    }),
                )
                .route(
                    &format!("{SERVICE_MODULES}/{{id}}"),
                    delete(
                        move |axum::extract::Path(id): axum::extract::Path<String>| async move {
                            let _ = gone_tx.send(id);
                            StatusCode::NO_CONTENT
                        },
                    ),
                );
            let l = tokio::net::TcpListener::bind(addr).await.expect("bind smo");
            let _ = sbi::serve(l, app, Some("tok".into()), std::future::pending()).await;
        });
        let c = Client::new(Some("tok".into()), Duration::from_secs(2));
        let reg = svcmod::daemon::registration(RelocationType::Test, addr, addr);
        let m = register(&c, &smo, &reg, Duration::from_secs(10))
            .await
            .expect("registered");
        assert_eq!(m.module_id, "module-1");
        deregister(&c, &smo, &m.module_id)
            .await
            .expect("deregistered");
        assert_eq!(gone_rx.recv().await.as_deref(), Some("module-1"));
        let wrong = Client::new(Some("wrong".into()), Duration::from_secs(2));
        let refused = register(&wrong, &smo, &reg, Duration::from_secs(10)).await;
        assert!(matches!(
            refused,
            Err(ClientError::Status { status: 401, .. })
        ));
    }
}
