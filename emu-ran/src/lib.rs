//! RAN stand-ins: the UE ([`ue`]: TUN device, radio client, downlink gap recorder) and the gNB
//! ([`gnb`]: radio side, N3 GTP-U, Xn handover, path switch). Each has a config type, a
//! `run(config, ready, shutdown)` entry point and a thin binary in `src/bin/`. [`radio`] is the
//! frame codec both ends of the air segment share.

pub mod gnb;
pub mod radio;
pub mod ue;
