//! Topology specifications: what a user writes (TOML) or takes built in (`two-site`).

use serde::{Deserialize, Serialize};

/// The built-in default topology.
pub const TWO_SITE: &str = include_str!("../topologies/two-site.toml");
/// A built-in three-site topology.
pub const THREE_SITE: &str = include_str!("../topologies/three-site.toml");

/// Most sites a topology may have (addresses are planned for this many).
pub const MAX_SITES: usize = 8;
/// Most UEs a topology may have (addresses are planned for this many).
pub const MAX_UES: u16 = 150;

/// A testbed topology as written by the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySpec {
    /// The testbed's name; its state lives under `/run/testbed/<name>/`.
    pub name: String,
    /// Prefix of every network namespace: `<prefix>-<node>`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Number of UEs, named `ue1` … `ueN`.
    #[serde(default = "default_ues")]
    pub ues: u16,
    /// The sites, in order; each has a gNB, a UPF + IAP and an edge cloud.
    pub sites: Vec<SiteSpec>,
}

/// One site of the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    /// Short name (1–4 of `a-z0-9`): namespaces `gnb-<name>` and `site-<name>`.
    pub name: String,
    /// Short name of the site's edge cloud (1–4 of `a-z0-9`): namespace `edge-<edge>`.
    pub edge: String,
    /// The Data Network Access Identifier of the edge cloud (default `edge-<edge>`).
    #[serde(default)]
    pub dnai: Option<String>,
}

fn default_prefix() -> String {
    "tb".to_owned()
}

fn default_ues() -> u16 {
    1
}

/// Why a topology was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot parse topology: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("unknown built-in topology `{0}` (built in: two-site, three-site; or pass --topology FILE.toml)")]
    UnknownBuiltin(String),
    #[error("invalid topology: {0}")]
    Invalid(String),
}

impl TopologySpec {
    /// Parses and validates a TOML topology.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: Self = toml::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// A built-in topology by name.
    pub fn builtin(name: &str) -> Result<Self, SpecError> {
        match name {
            "two-site" => Self::from_toml(TWO_SITE),
            "three-site" => Self::from_toml(THREE_SITE),
            other => Err(SpecError::UnknownBuiltin(other.to_owned())),
        }
    }

    /// Checks names, counts and uniqueness.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError::Invalid(m));
        if !is_name(&self.name, 32, true) {
            return bad(format!(
                "name `{}` must be 1-32 of a-z, 0-9 and '-', starting with a letter",
                self.name
            ));
        }
        if !is_name(&self.prefix, 6, false) {
            return bad(format!(
                "prefix `{}` must be 1-6 of a-z and 0-9, starting with a letter",
                self.prefix
            ));
        }
        if self.ues == 0 || self.ues > MAX_UES {
            return bad(format!("ues = {} must be 1..={MAX_UES}", self.ues));
        }
        if self.sites.is_empty() || self.sites.len() > MAX_SITES {
            return bad(format!(
                "{} sites given; a topology has 1..={MAX_SITES}",
                self.sites.len()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.sites {
            for (what, n) in [("site", &s.name), ("edge", &s.edge)] {
                if !is_name(n, 4, false) {
                    return bad(format!(
                        "{what} name `{n}` must be 1-4 of a-z and 0-9, starting with a letter"
                    ));
                }
                if !seen.insert(format!("{what}-{n}")) {
                    return bad(format!("{what} name `{n}` is used twice"));
                }
            }
            if let Some(d) = &s.dnai {
                if d.is_empty() || d.len() > 64 || d.chars().any(char::is_whitespace) {
                    return bad(format!("dnai `{d}` must be 1-64 characters without spaces"));
                }
            }
        }
        Ok(())
    }
}

fn is_name(s: &str, max: usize, dash: bool) -> bool {
    (1..=max).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || (dash && c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse() {
        let two = TopologySpec::builtin("two-site").expect("two-site");
        assert_eq!(two.name, "two-site");
        assert_eq!(two.prefix, "tb");
        assert_eq!(two.sites.len(), 2);
        assert_eq!(
            TopologySpec::builtin("three-site")
                .expect("three")
                .sites
                .len(),
            3
        );
        assert!(matches!(
            TopologySpec::builtin("four-site"),
            Err(SpecError::UnknownBuiltin(_))
        ));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err =
            TopologySpec::from_toml("name = \"t\"\nsites = []\ncolour = 1\n").expect_err("refused");
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let cases = [
            ("name = \"Bad Name\"\n[[sites]]\nname=\"a\"\nedge=\"x\"", "name `Bad Name`"),
            ("name = \"t\"\nprefix = \"toolong\"\n[[sites]]\nname=\"a\"\nedge=\"x\"", "prefix"),
            ("name = \"t\"\nues = 0\n[[sites]]\nname=\"a\"\nedge=\"x\"", "ues = 0"),
            ("name = \"t\"\nsites = []", "0 sites"),
            ("name = \"t\"\n[[sites]]\nname=\"a\"\nedge=\"x\"\n[[sites]]\nname=\"a\"\nedge=\"y\"", "used twice"),
            ("name = \"t\"\n[[sites]]\nname=\"abcde\"\nedge=\"x\"", "site name `abcde`"),
        ];
        for (text, want) in cases {
            let err = TopologySpec::from_toml(text).expect_err(text);
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }
}
