//! The SBI data model of the testbed: serde types for the JSON bodies the SMF and the AF (SMO)
//! exchange, exactly as the 3GPP Release 16 OpenAPI files in `shared/3gpp/` define them.
//!
//! * [`nsmf_event_exposure`]: TS 29.508 Nsmf_EventExposure (subscriptions and `UP_PATH_CH`
//!   notifications).
//! * [`traffic_influence`]: TS 29.522 TrafficInfluence of the NEF (subscriptions, `UP_PATH_CHANGE`
//!   notifications, the AF's acknowledgement).
//! * [`sm_policy`]: the TS 29.512 traffic control data (with `UpPathChgEvent`, `afAckInd`) that
//!   carries an AF's traffic influence to the SMF.
//! * [`common`]: the TS 29.571 common data types those bodies use.
//! * [`ran`]: the testbed's own RAN/core signalling where 3GPP has no JSON form (radio, N2, Xn, LR).
//! * [`smo`]: the SMO's own messages (service-mobility API, module callbacks, peer protocol,
//!   relocation records).
//! * [`edge`]: the service range's fixed addresses (the anycast gateway).
//! * [`problem`]: `ProblemDetails`, the `application/problem+json` error body.
//! * [`timeline`]: the one [`timeline::Stopwatch`] of every procedure that reports its steps
//!   (on tokio's clock, so tests can pause it).
//! * `schema` (feature `schema`): validation of any JSON body against the OpenAPI files, for
//!   tests.
//!
//! The crate does no I/O (except `schema`, which reads the OpenAPI files).

pub mod common;
pub mod edge;
pub mod nsmf_event_exposure;
pub mod problem;
pub mod ran;
#[cfg(feature = "schema")]
pub mod schema;
pub mod sm_policy;
pub mod smo;
pub mod timeline;
pub mod traffic_influence;
