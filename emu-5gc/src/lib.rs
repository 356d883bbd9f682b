//! 5G core stand-ins with real packets and real protocols: the SMF ([`smf`]), the NEF ([`nef`]),
//! the Location Registry ([`lr`]), the UPF ([`upf`]) and the IAP ([`iap`]). Each has a config type, a `run(config, ready,
//! shutdown)` entry point and a thin binary in `src/bin/`.

pub mod iap;
pub mod lr;
pub mod nef;
pub mod smf;
pub mod upf;
