//! The paths of the SMO's API (`smo/openapi.yaml`), shared by the routes ([`crate::api`]), the
//! subscription's callback ([`crate::events`]) and the calls to peer SMOs ([`crate::http`]).

/// The SMF's callback (the `notifUri` of the SMO's subscription).
pub const EVENT_NOTIFICATIONS: &str = "/event-signalling/v1/notifications";
/// The NEF's callback (the `notificationDestination` of the SMO's traffic influence
/// subscription, TS 29.522 `EventNotification`).
pub const NEF_NOTIFICATIONS: &str = "/event-signalling/v1/nef-notifications";
/// The relocation records.
pub const AF_RELOCATIONS: &str = "/application-function/v1/relocations";
/// The peer protocol (target side).
pub const PEER_RELOCATIONS: &str = "/smo-peer/v1/relocations";
/// Service-module registrations.
pub const SERVICE_MODULES: &str = "/service-mobility/v1/service-modules";
/// The service database.
pub const SERVICES: &str = "/service-mobility/v1/services";
/// Relocations as the service modules see them: `{RELOCATIONS}/{relocationId}/arrival`.
pub const RELOCATIONS: &str = "/service-mobility/v1/relocations";
/// Prometheus metrics.
pub const METRICS: &str = "/metrics";
/// This API's OpenAPI description.
pub const OPENAPI: &str = "/openapi.yaml";
