//! Common data types of 3GPP TS 29.571 (`TS29571_CommonData.yaml`, API version 1.2.7) that the
//! Nsmf_EventExposure bodies use.
//!
//! IPv4/IPv6 addresses are `std::net` types and IPv6 prefixes are [`ipnet::Ipv6Net`]: their serde
//! text forms are exactly the 3GPP `Ipv4Addr`, `Ipv6Addr` and `Ipv6Prefix` strings.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Defines a `String` newtype that serializes as the bare string.
macro_rules! string_newtype {
    ($($(#[$meta:meta])* $name:ident;)+) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// Wraps a string.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The string itself.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }
    )+};
}
pub(crate) use string_newtype;

/// Defines an extensible 3GPP enumeration: an `anyOf` of a string `enum` and any other string.
///
/// Known values get a variant; any other string is kept in `Other`, so a peer of a later release
/// can send values this release does not know. Construct values with the named variants (or
/// [`From<&str>`], which maps known strings to them): `Other("UP_PATH_CH")` would serialize the
/// same as the named variant but compare unequal to it.
macro_rules! extensible_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this release does not define (3GPP enumerations are extensible).
            Other(String),
        }

        impl $name {
            /// The value as it appears on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(other) => other,
                }
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                match value {
                    $($text => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = std::convert::Infallible;

            fn from_str(value: &str) -> Result<Self, Self::Err> {
                Ok(Self::from(value))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <::std::borrow::Cow<'de, str> as ::serde::Deserialize<'de>>::deserialize(deserializer)?;
                Ok(Self::from(text.as_ref()))
            }
        }
    };
}
pub(crate) use extensible_enum;

string_newtype! {
    /// `Supi`: subscription permanent identifier, e.g. `imsi-001010000000001`.
    Supi;
    /// `Gpsi`: generic public subscription identifier, e.g. `msisdn-491701234567`.
    Gpsi;
    /// `Dnai`: data network access identifier, names one edge site (user-plane access to a DN).
    Dnai;
    /// `MacAddr48`: MAC address as six dash-separated hex octets, e.g. `00-1a-2b-3c-4d-5e`.
    MacAddr48;
}

/// `PduSessionId`: 0..=255.
pub type PduSessionId = u8;

/// `Qfi`: QoS flow identifier, 0..=63.
pub type Qfi = u8;

/// `Uinteger`: unsigned integer.
pub type Uinteger = u64;

/// `DurationSec`: a duration in seconds.
pub type DurationSec = i64;

/// `DateTime`: an RFC 3339 date-time (`format: date-time`), always written in UTC with a `Z`.
///
/// A received value with another offset is accepted and converted to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DateTime(pub chrono::DateTime<chrono::Utc>);

impl DateTime {
    /// The instant `secs` seconds and `nanos` nanoseconds after the Unix epoch, if representable.
    pub fn from_unix(secs: i64, nanos: u32) -> Option<Self> {
        chrono::DateTime::from_timestamp(secs, nanos).map(Self)
    }
}

impl From<SystemTime> for DateTime {
    fn from(time: SystemTime) -> Self {
        Self(time.into())
    }
}

impl From<chrono::DateTime<chrono::Utc>> for DateTime {
    fn from(time: chrono::DateTime<chrono::Utc>) -> Self {
        Self(time)
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    }
}

impl FromStr for DateTime {
    type Err = chrono::ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        chrono::DateTime::parse_from_rfc3339(text).map(|time| Self(time.to_utc()))
    }
}

impl Serialize for DateTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DateTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `Snssai`: single network slice selection assistance information.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snssai {
    /// Slice/service type, 0..=255.
    pub sst: u8,
    /// Slice differentiator: six hex digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sd: Option<String>,
}

/// `PlmnId`: mobile country code and mobile network code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlmnId {
    /// Three decimal digits.
    pub mcc: String,
    /// Two or three decimal digits.
    pub mnc: String,
}

extensible_enum! {
    /// `DnaiChangeType`: when the AF wants to hear about a user-plane path change.
    DnaiChangeType {
        /// Early notification: before the new user-plane path is in use.
        Early = "EARLY",
        /// Both early and late notification (subscriptions only).
        EarlyLate = "EARLY_LATE",
        /// Late notification: after the new user-plane path is in use.
        Late = "LATE",
    }
}

extensible_enum! {
    /// `DlDataDeliveryStatus`: downlink data delivery status.
    DlDataDeliveryStatus {
        /// Downlink data is buffered.
        Buffered = "BUFFERED",
        /// Buffered downlink data was transmitted.
        Transmitted = "TRANSMITTED",
        /// Downlink data was discarded.
        Discarded = "DISCARDED",
    }
}

extensible_enum! {
    /// `PduSessionType`.
    PduSessionType {
        /// IPv4.
        Ipv4 = "IPV4",
        /// IPv6.
        Ipv6 = "IPV6",
        /// Dual stack.
        Ipv4v6 = "IPV4V6",
        /// Unstructured.
        Unstructured = "UNSTRUCTURED",
        /// Ethernet.
        Ethernet = "ETHERNET",
    }
}

/// `AccessType` (a closed enumeration in TS 29.571).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccessType {
    /// 3GPP access.
    #[serde(rename = "3GPP_ACCESS")]
    ThreeGppAccess,
    /// Non-3GPP access.
    #[serde(rename = "NON_3GPP_ACCESS")]
    NonThreeGppAccess,
}

/// `RouteInformation`: where the traffic to an application goes at one DNAI (N6 tunnel end).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteInformation {
    /// IPv4 address of the tunnel end point in the data network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_addr: Option<Ipv4Addr>,
    /// IPv6 address of the tunnel end point in the data network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_addr: Option<Ipv6Addr>,
    /// UDP port of the tunnel end point (`Uinteger` in the YAML; a port here).
    pub port_number: u16,
}

/// `RouteToLocation`: the traffic routing of an application at one DNAI.
///
/// The YAML requires `routeInfo` or `routeProfId` (an `anyOf`); [`RouteToLocation::new`] sets
/// `routeInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteToLocation {
    /// The DNAI this routing applies to.
    pub dnai: Dnai,
    /// Route information (N6 tunnel end point).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_info: Option<RouteInformation>,
    /// Identifier of a routing profile pre-agreed between AF and operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_prof_id: Option<String>,
}

impl RouteToLocation {
    /// Routing at `dnai` to the IPv4 tunnel end point `addr:port`.
    pub fn new(dnai: impl Into<Dnai>, addr: Ipv4Addr, port: u16) -> Self {
        Self {
            dnai: dnai.into(),
            route_info: Some(RouteInformation {
                ipv4_addr: Some(addr),
                ipv6_addr: None,
                port_number: port,
            }),
            route_prof_id: None,
        }
    }
}

/// `DddTrafficDescriptor`: the downlink traffic a DDD status event is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DddTrafficDescriptor {
    /// Source IPv4 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_addr: Option<Ipv4Addr>,
    /// Source IPv6 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_addr: Option<Ipv6Addr>,
    /// Source port (`Uinteger` in the YAML; a port here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u16>,
    /// Source MAC address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_addr: Option<MacAddr48>,
}

/// Deserializes a `Vec` that must not be empty (`minItems: 1` on a required array).
pub(crate) fn non_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let items = Vec::<T>::deserialize(deserializer)?;
    if items.is_empty() {
        return Err(serde::de::Error::invalid_length(0, &"at least one item"));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensible_enum_keeps_unknown_values() {
        let known: DnaiChangeType = serde_json::from_str("\"EARLY_LATE\"").expect("known value");
        assert_eq!(known, DnaiChangeType::EarlyLate);
        let unknown: DnaiChangeType = serde_json::from_str("\"SOMETIME\"").expect("unknown value");
        assert_eq!(unknown, DnaiChangeType::Other("SOMETIME".into()));
        assert_eq!(
            serde_json::to_string(&unknown).expect("serialize"),
            "\"SOMETIME\""
        );
        assert!(serde_json::from_str::<DnaiChangeType>("3").is_err());
    }

    #[test]
    fn date_time_is_rfc3339_utc() {
        let time = DateTime::from_unix(1_700_000_000, 250_000_000).expect("in range");
        let json = serde_json::to_string(&time).expect("serialize");
        assert_eq!(json, "\"2023-11-14T22:13:20.250Z\"");
        let back: DateTime =
            serde_json::from_str("\"2023-11-14T23:13:20.25+01:00\"").expect("parse");
        assert_eq!(back, time);
        assert!(serde_json::from_str::<DateTime>("\"2023-11-14 22:13\"").is_err());
    }

    #[test]
    fn access_type_wire_names() {
        let json = serde_json::to_string(&AccessType::ThreeGppAccess).expect("serialize");
        assert_eq!(json, "\"3GPP_ACCESS\"");
    }
}
