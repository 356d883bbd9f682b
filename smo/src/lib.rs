//! The Service Mobility Orchestrator (thesis chapters 3–4): one per edge cloud.
//!
//! * [`core`]: the relocation procedure as source and target state machines that do no I/O;
//! * [`negotiator`]: the handover negotiator — databases, service modules, and the driver that
//!   runs the machines against [`negotiator::Remote`] and a [`routing::FlowProgrammer`];
//! * [`routing`]: rule generation per phase, the Open vSwitch programmer (a long-lived OpenFlow
//!   1.3 connection) and a fake;
//! * [`store`]: the embedded store (relocations persisted after every step);
//! * [`config`]: the SMO's configuration file;
//! * [`events`]: the event signalling module — subscription to the SMF's `UP_PATH_CH` events and
//!   the notification check (the API hands checked notifications to the negotiator in process);
//! * [`http`]: the negotiator's [`negotiator::Remote`] over HTTP/2 (peer SMOs, service modules);
//! * [`api`]: the HTTP API (`smo/openapi.yaml`): handlers that parse and forward;
//! * [`paths`]: the API's paths;
//! * [`metrics`]: Prometheus text rendered from the relocation records.

pub mod api;
pub mod config;
pub mod core;
pub mod events;
pub mod http;
pub mod metrics;
pub mod negotiator;
pub mod paths;
pub mod routing;
pub mod store;
