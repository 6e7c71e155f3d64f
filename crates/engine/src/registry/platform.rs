//! Platforms (`linux/arm64/v8`) and picking the entry of an image index that
//! matches one, the way containerd's platform matcher does.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::manifest::{Descriptor, ImageIndex, ManifestError};

/// An OS/architecture pair as found in image indexes and image configs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
}

impl Default for Platform {
    /// `linux/amd64`, what Berth runs.
    fn default() -> Self {
        Platform::new("linux", "amd64", None)
    }
}

/// A platform string that is not `os[/arch[/variant]]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {0:?}: expected os[/arch[/variant]]")]
pub struct InvalidPlatform(pub String);

const KNOWN_OS: &[&str] = &[
    "aix", "android", "darwin", "dragonfly", "freebsd", "illumos", "ios", "js", "linux", "netbsd",
    "openbsd", "plan9", "solaris", "wasip1", "windows",
];

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_owned),
            os_version: None,
            os_features: Vec::new(),
        }
    }

    /// Parses `os`, `arch`, `os/arch` or `os/arch/variant` (the `platform`
    /// query parameter of the API). A lone word is an OS if it names one,
    /// otherwise an architecture on linux; the missing part defaults to
    /// `linux/amd64`.
    pub fn parse(s: &str) -> Result<Self, InvalidPlatform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if parts.len() > 3 || !parts.iter().all(|p| ok(p)) {
            return Err(InvalidPlatform(s.to_owned()));
        }
        let p = match parts.as_slice() {
            [one] if KNOWN_OS.contains(&one.to_lowercase().as_str()) => Platform::new(one, "amd64", None),
            [one] => Platform::new("linux", one, None),
            [os, arch] => Platform::new(os, arch, None),
            [os, arch, variant] => Platform::new(os, arch, Some(variant)),
            _ => return Err(InvalidPlatform(s.to_owned())),
        };
        Ok(p.normalized())
    }

    /// The canonical spelling: `x86_64` → `amd64`, `aarch64` → `arm64` (its
    /// default variant `v8` dropped), `armhf` → `arm/v7`, bare `arm` →
    /// `arm/v7`, OS lowercased.
    pub fn normalized(&self) -> Self {
        let os = match self.os.to_lowercase().as_str() {
            "macos" => "darwin".to_owned(),
            other => other.to_owned(),
        };
        let arch = self.architecture.to_lowercase();
        let variant = self.variant.as_deref().unwrap_or("").to_lowercase();
        let (arch, variant): (&str, String) = match arch.as_str() {
            "i386" => ("386", String::new()),
            "x86_64" | "x86-64" | "amd64" => ("amd64", if variant == "v1" { String::new() } else { variant }),
            "aarch64" | "arm64" => match variant.as_str() {
                "8" | "v8" | "v8.0" => ("arm64", String::new()),
                "9" | "9.0" | "v9.0" => ("arm64", "v9".into()),
                _ => ("arm64", variant),
            },
            "armhf" => ("arm", "v7".into()),
            "armel" => ("arm", "v6".into()),
            "arm" => match variant.as_str() {
                "" | "7" => ("arm", "v7".into()),
                "5" | "6" | "8" => ("arm", format!("v{variant}")),
                _ => ("arm", variant),
            },
            other => (other, variant),
        };
        Platform {
            os,
            architecture: arch.to_owned(),
            variant: (!variant.is_empty()).then_some(variant),
            os_version: self.os_version.clone(),
            os_features: self.os_features.clone(),
        }
    }

    /// Whether an image built for `candidate` runs where `self` is wanted
    /// (e.g. to check a single-platform image's config against the
    /// platform a pull asked for).
    pub fn matches(&self, candidate: &Platform) -> bool {
        self.rank(candidate).is_some()
    }

    /// How well an index entry for `candidate` suits a host that wants
    /// `self`: `None` if it cannot run, else a rank where lower is better.
    fn rank(&self, candidate: &Platform) -> Option<u32> {
        let want = self.normalized();
        let have = candidate.normalized();
        if want.os != have.os || want.architecture != have.architecture {
            return None;
        }
        if want.variant == have.variant {
            return Some(0);
        }
        let arm_level = |v: &Option<String>| -> Option<u32> { v.as_deref()?.strip_prefix('v')?.parse().ok() };
        match (want.architecture.as_str(), arm_level(&want.variant), arm_level(&have.variant)) {
            // An armv7 host runs v6 and v5 code too, preferring the newest.
            ("arm", Some(w), Some(h)) if h < w && h >= 5 => Some(w - h),
            // A host that asked for no variant accepts any, after exact ones.
            _ if self.variant.as_deref().unwrap_or("").is_empty() && want.architecture != "arm" => Some(100),
            _ => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Picks the manifest of `index` for `wanted`. Entries that are not image
/// manifests or indexes (attestations, artifacts) are skipped; an entry
/// without a platform matches anything but ranks last; among equals the
/// first in the index wins.
pub fn choose<'a>(index: &'a ImageIndex, wanted: &Platform) -> Result<&'a Descriptor, ManifestError> {
    index
        .manifests
        .iter()
        .filter(|d| super::manifest::is_manifest_media_type(&d.media_type))
        .filter_map(|d| match &d.platform {
            Some(p) => wanted.rank(p).map(|r| (r, d)),
            None => Some((1000, d)),
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
        .ok_or_else(|| ManifestError::NoMatchingManifest { platform: wanted.normalized().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_the_usual_spellings() {
        assert_eq!(Platform::parse("linux/amd64").unwrap(), Platform::new("linux", "amd64", None));
        assert_eq!(Platform::parse("linux/arm64/v8").unwrap(), Platform::new("linux", "arm64", None));
        assert_eq!(Platform::parse("linux/arm").unwrap(), Platform::new("linux", "arm", Some("v7")));
        assert_eq!(Platform::parse("arm64").unwrap(), Platform::new("linux", "arm64", None));
        assert_eq!(Platform::parse("windows").unwrap(), Platform::new("windows", "amd64", None));
        assert_eq!(Platform::parse("Linux/x86_64").unwrap(), Platform::new("linux", "amd64", None));
        for bad in ["", "/", "linux/", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arm64_matches_arm64_v8() {
        let want = Platform::new("linux", "arm64", None);
        assert_eq!(want.rank(&Platform::new("linux", "arm64", Some("v8"))), Some(0));
        assert_eq!(want.rank(&Platform::new("linux", "aarch64", None)), Some(0));
        let want = Platform::new("linux", "arm64", Some("v8"));
        assert_eq!(want.rank(&Platform::new("linux", "arm64", None)), Some(0));
        assert!(want.matches(&Platform::new("linux", "aarch64", Some("8"))));
    }

    #[test]
    fn arm_v7_host_accepts_older_variants_but_not_newer() {
        let want = Platform::new("linux", "arm", Some("v7"));
        assert_eq!(want.rank(&Platform::new("linux", "arm", Some("v6"))), Some(1));
        assert_eq!(want.rank(&Platform::new("linux", "arm", Some("v8"))), None);
        let want = Platform::new("linux", "arm", Some("v6"));
        assert_eq!(want.rank(&Platform::new("linux", "arm", Some("v7"))), None);
    }

    #[test]
    fn different_os_or_arch_never_matches() {
        let want = Platform::default();
        assert_eq!(want.rank(&Platform::new("windows", "amd64", None)), None);
        assert_eq!(want.rank(&Platform::new("linux", "arm64", None)), None);
        assert_eq!(want.rank(&Platform::new("unknown", "unknown", None)), None);
    }
}
