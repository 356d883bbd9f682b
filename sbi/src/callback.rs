//! Callback URIs a client asks an NF to call later (a subscription's `notifUri` at the SMF, its
//! `notifyUri` at the LR) must point inside the deployment: an `http(s)` URI whose host is an
//! IPv4 address in one of the NF's callback networks. Anything else (`http://8.8.8.8/x`, a host
//! name, which the NF would have to resolve) is refused, so no NF ever POSTs outside.
//!
//! The networks come from the NF's config; an empty list means the NF's own SBI network, see
//! [`CallbackNetworks::or_own`].

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Why a callback URI is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("`{0}` is not an http(s) URI")]
    NotHttp(String),
    #[error("the host of `{0}` is not an IPv4 address (callback hosts are not resolved)")]
    NotIpv4(String),
    #[error("{host} (in `{uri}`) is outside the deployment's sbi networks {allowed}")]
    Outside {
        uri: String,
        host: Ipv4Addr,
        allowed: CallbackNetworks,
    },
}

/// The networks callback URIs may point into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackNetworks(Vec<Ipv4Net>);

impl CallbackNetworks {
    /// Exactly these networks (none: every callback is refused).
    pub fn new(networks: Vec<Ipv4Net>) -> Self {
        Self(networks.into_iter().map(|n| n.trunc()).collect())
    }

    /// `configured`, or when it is empty the network of the NF's own SBI address `sbi`: its /24
    /// (the testbed's SBI segment is one), `127.0.0.0/8` for a loopback address, nothing for an
    /// unspecified one.
    pub fn or_own(configured: &[Ipv4Net], sbi: Ipv4Addr) -> Self {
        if !configured.is_empty() {
            return Self::new(configured.to_vec());
        }
        let own = if sbi.is_loopback() {
            Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).ok()
        } else if sbi.is_unspecified() {
            None
        } else {
            Ipv4Net::new(sbi, 24).ok()
        };
        Self::new(own.into_iter().collect())
    }

    /// The networks.
    pub fn networks(&self) -> &[Ipv4Net] {
        &self.0
    }

    /// Accepts `uri` if it is `http(s)` with an IPv4 host inside one of the networks.
    pub fn check(&self, uri: &str) -> Result<(), CallbackError> {
        let url = reqwest::Url::parse(uri).map_err(|_| CallbackError::NotHttp(uri.to_owned()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CallbackError::NotHttp(uri.to_owned()));
        }
        // The parser writes every IPv4 form (`0x7f.1`, `2130706433`) as a dotted quad.
        let host = match url.host_str() {
            Some(h) => h
                .parse::<Ipv4Addr>()
                .map_err(|_| CallbackError::NotIpv4(uri.to_owned()))?,
            None => return Err(CallbackError::NotHttp(uri.to_owned())),
        };
        if self.0.iter().any(|n| n.contains(&host)) {
            Ok(())
        } else {
            Err(CallbackError::Outside {
                uri: uri.to_owned(),
                host,
                allowed: self.clone(),
            })
        }
    }
}

impl fmt::Display for CallbackNetworks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.0.iter().map(Ipv4Net::to_string).collect();
        write!(f, "[{}]", list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn only_ipv4_hosts_inside_the_networks_pass() {
        let sbi = CallbackNetworks::new(vec![net("10.100.0.0/24")]);
        assert_eq!(
            sbi.check("http://10.100.0.41:8090/event-signalling/v1/n"),
            Ok(())
        );
        assert_eq!(sbi.check("https://10.100.0.21/x"), Ok(()));
        assert!(matches!(
            sbi.check("http://8.8.8.8/x"),
            Err(CallbackError::Outside { host, .. }) if host == Ipv4Addr::new(8, 8, 8, 8)
        ));
        assert!(matches!(
            sbi.check("http://10.100.1.1/x"),
            Err(CallbackError::Outside { .. })
        ));
        for name in [
            "http://localhost:8080/x",
            "http://example.invalid/x",
            "http://[::1]/x",
        ] {
            assert_eq!(
                sbi.check(name),
                Err(CallbackError::NotIpv4(name.into())),
                "{name}"
            );
        }
        // Other spellings of an address outside are still outside.
        assert!(matches!(
            sbi.check("http://134744072/x"),
            Err(CallbackError::Outside { host, .. }) if host == Ipv4Addr::new(8, 8, 8, 8)
        ));
        for bad in ["nowhere", "ftp://10.100.0.1/x", "unix:/run/x.sock", ""] {
            assert_eq!(
                sbi.check(bad),
                Err(CallbackError::NotHttp(bad.into())),
                "{bad}"
            );
        }
        let e = sbi.check("http://8.8.8.8/x").expect_err("outside");
        assert_eq!(
            e.to_string(),
            "8.8.8.8 (in `http://8.8.8.8/x`) is outside the deployment's sbi networks [10.100.0.0/24]"
        );
    }

    #[test]
    fn the_default_is_the_nfs_own_sbi_network() {
        let own = CallbackNetworks::or_own(&[], Ipv4Addr::new(10, 100, 0, 10));
        assert_eq!(own.networks(), [net("10.100.0.0/24")]);
        let lo = CallbackNetworks::or_own(&[], Ipv4Addr::LOCALHOST);
        assert_eq!(lo.networks(), [net("127.0.0.0/8")]);
        assert_eq!(lo.check("http://127.0.0.5:9/x"), Ok(()));
        let none = CallbackNetworks::or_own(&[], Ipv4Addr::UNSPECIFIED);
        assert!(none.check("http://10.0.0.1/x").is_err());
        let configured =
            CallbackNetworks::or_own(&[net("10.100.0.7/16")], Ipv4Addr::new(10, 100, 0, 10));
        assert_eq!(configured.networks(), [net("10.100.0.0/16")]);
    }
}
