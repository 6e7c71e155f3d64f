//! Image references (`docker.io/library/redis:latest`).
//!
//! Owns parsing, validating and normalizing the names users type (`redis`,
//! `user/app:1`, `localhost:5000/x@sha256:…`) the way the docker CLI and
//! dockerd do (the distribution `reference` grammar plus the Docker Hub
//! normalization rules), and printing them back in full or in the familiar
//! short form `docker images` shows. Does not own where images are stored
//! nor how a name is resolved against a registry (see `registry`).
//!
//! Grammar (from the distribution reference package):
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain '/'] path-component ['/' path-component]*
//! domain           := host [':' port-number]
//! host             := domain-name | '[' ipv6 ']'
//! domain-name      := domain-component ['.' domain-component]*
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! path-component   := /[a-z0-9]+/ [separator /[a-z0-9]+/]*
//! separator        := /[_.]|__|[-]+/
//! tag              := /[\w][\w.-]{0,127}/
//! digest           := algorithm ":" hex      (only sha256 is accepted here)
//! ```

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// The registry that names without a domain refer to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The old spelling of [`DEFAULT_DOMAIN`], normalized to it.
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// Docker Hub puts single-component names under this namespace.
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag used when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest accepted `domain/path`.
const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// Longest accepted tag.
const TAG_MAX: usize = 128;

/// A reference that does not follow the grammar. Messages match dockerd's so
/// clients that grep for them keep working.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format")]
    InvalidFormat,
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    NotLowercase(String),
    #[error("repository name must not be more than 255 characters")]
    NameTooLong,
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexName(String),
    #[error("invalid tag format")]
    InvalidTag,
    #[error("invalid checksum digest format")]
    InvalidDigestFormat,
    #[error("invalid checksum digest length")]
    InvalidDigestLength,
    #[error("unsupported digest algorithm")]
    UnsupportedDigest,
}

/// A normalized image reference: always has a domain and a full path
/// (`docker.io/library/redis`), and optionally a tag and/or a digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes `s` like dockerd's `ParseNormalizedNamed`:
    /// `redis` → `docker.io/library/redis`, `user/app` → `docker.io/user/app`,
    /// `index.docker.io/x` → `docker.io/library/x`. A tag is not added; see
    /// [`Reference::with_default_tag`].
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if is_hex64(s) {
            return Err(ReferenceError::HexName(s.to_owned()));
        }
        let (domain, remainder) = split_docker_domain(s);
        // dockerd checks case on everything before the first ':' of the
        // remainder, so `Redis:tag` reports `library/Redis`.
        let remote_name = match remainder.find(':') {
            Some(i) => &remainder[..i],
            None => &remainder[..],
        };
        if remote_name.to_lowercase() != remote_name {
            return Err(ReferenceError::NotLowercase(remote_name.to_owned()));
        }
        parse_full(&domain, &remainder)
    }

    /// Builds a reference from a `domain/path` already split apart, checking
    /// both against the grammar. No normalization is applied.
    pub fn from_parts(domain: &str, path: &str) -> Result<Self, ReferenceError> {
        if !is_domain(domain) || !is_path(path) {
            return Err(ReferenceError::InvalidFormat);
        }
        if domain.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::NameTooLong);
        }
        Ok(Reference { domain: domain.to_owned(), path: path.to_owned(), tag: None, digest: None })
    }

    /// The registry host, with port if any (`docker.io`, `localhost:5000`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry (`library/redis`).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// True for Docker Hub names.
    pub fn is_hub(&self) -> bool {
        self.domain == DEFAULT_DOMAIN
    }

    /// Adds the `latest` tag when the reference has neither tag nor digest,
    /// as `docker pull redis` does.
    pub fn with_default_tag(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_owned());
        }
        self
    }

    /// The same repository with `tag` (replacing any tag, keeping the digest).
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        if !is_tag(tag) {
            return Err(ReferenceError::InvalidTag);
        }
        Ok(Reference { tag: Some(tag.to_owned()), ..self.clone() })
    }

    /// The same repository pinned to `digest`, keeping any tag.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference { digest: Some(digest), ..self.clone() }
    }

    /// The repository alone, without tag or digest.
    pub fn name_only(&self) -> Self {
        Reference { tag: None, digest: None, ..self.clone() }
    }

    /// What dockerd pulls for this reference (`ParseDockerRef`): a reference
    /// with both tag and digest drops the tag; one with neither gets `latest`.
    pub fn docker_ref(&self) -> Self {
        if self.digest.is_some() {
            Reference { tag: None, ..self.clone() }
        } else {
            self.clone().with_default_tag()
        }
    }

    /// `domain/path`, e.g. `docker.io/library/redis`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The repository as users see it: the `docker.io/` domain and the
    /// `library/` namespace of official images dropped (`redis`, `user/app`,
    /// `localhost:5000/x`).
    pub fn familiar_repository(&self) -> String {
        if self.is_hub() {
            match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_owned(),
                _ => self.path.clone(),
            }
        } else {
            self.repository()
        }
    }

    /// The familiar form with tag and digest, as `docker images` shows
    /// RepoTags: `redis:latest`, `user/app:1`, `localhost:5000/x:latest`.
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_repository();
        self.push_suffix(&mut s);
        s
    }

    /// The fully qualified form with tag and digest:
    /// `docker.io/library/redis:latest`. Same as `Display`.
    pub fn full_name(&self) -> String {
        self.to_string()
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            s.push('@');
            s.push_str(&digest.to_string());
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.repository();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Reference::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Whether `s` is exactly 64 lowercase hex digits: an image ID, never a name.
fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Splits off the registry host the way the docker CLI does: the first
/// component is a host only if it contains `.` or `:`, is `localhost`, or
/// has uppercase letters (which a path may not).
fn split_docker_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.find('/') {
        Some(i) => {
            let first = &name[..i];
            let looks_like_host = first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first;
            if looks_like_host {
                (first.to_owned(), name[i + 1..].to_owned())
            } else {
                (DEFAULT_DOMAIN.to_owned(), name.to_owned())
            }
        }
        None => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_owned();
    }
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        remainder = format!("{OFFICIAL_REPO_PREFIX}{remainder}");
    }
    (domain, remainder)
}

/// Parses `path[:tag][@digest]` under an already split `domain`.
fn parse_full(domain: &str, remainder: &str) -> Result<Reference, ReferenceError> {
    let (name_and_tag, digest) = match remainder.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (remainder, None),
    };
    // A tag follows the last ':' that comes after the last '/'; the domain's
    // port colon is not in `remainder`.
    let (path, tag) = match name_and_tag.rfind(':') {
        Some(i) if !name_and_tag[i..].contains('/') => (&name_and_tag[..i], Some(&name_and_tag[i + 1..])),
        _ => (name_and_tag, None),
    };
    if !is_domain(domain) || !is_path(path) {
        return Err(ReferenceError::InvalidFormat);
    }
    if let Some(tag) = tag {
        if !is_tag(tag) {
            return Err(ReferenceError::InvalidFormat);
        }
    }
    let digest = match digest {
        Some(d) => Some(parse_digest(d)?),
        None => None,
    };
    if domain.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::NameTooLong);
    }
    Ok(Reference {
        domain: domain.to_owned(),
        path: path.to_owned(),
        tag: tag.map(str::to_owned),
        digest,
    })
}

/// `algorithm:hex` where the grammar allows any algorithm and 32+ hex
/// digits; only a well-formed sha256 is then accepted.
fn parse_digest(s: &str) -> Result<Digest, ReferenceError> {
    let (alg, hex) = s.split_once(':').ok_or(ReferenceError::InvalidFormat)?;
    let alg_ok = alg.split(['-', '_', '+', '.']).all(|c| {
        let mut b = c.bytes();
        matches!(b.next(), Some(f) if f.is_ascii_alphabetic()) && b.all(|x| x.is_ascii_alphanumeric())
    });
    if !alg_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ReferenceError::InvalidFormat);
    }
    if alg != "sha256" {
        return Err(ReferenceError::UnsupportedDigest);
    }
    if hex.len() != 64 {
        return Err(ReferenceError::InvalidDigestLength);
    }
    Digest::from_hex(hex).map_err(|_| ReferenceError::InvalidDigestFormat)
}

fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut bytes = tag.bytes();
    tag.len() <= TAG_MAX
        && matches!(bytes.next(), Some(b) if word(b))
        && bytes.all(|b| word(b) || b == b'.' || b == b'-')
}

fn is_path(path: &str) -> bool {
    !path.is_empty() && path.split('/').all(is_path_component)
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        let sep_start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        debug_assert!(i > sep_start);
    }
}

/// `host[:port]` where host is a DNS-like name (case allowed) or `[ipv6]`.
pub(crate) fn is_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        match rest.find(']') {
            Some(end) => {
                let addr = &rest[..end];
                if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                    return false;
                }
                let after = &rest[end + 1..];
                if after.is_empty() {
                    return true;
                }
                match after.strip_prefix(':') {
                    Some(port) => ("x", Some(port)),
                    None => return false,
                }
            }
            None => return false,
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn full(s: &str) -> String {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).to_string()
    }

    #[test]
    fn hub_names_are_normalized() {
        let cases = [
            ("redis", "docker.io/library/redis"),
            ("redis:7", "docker.io/library/redis:7"),
            ("library/redis", "docker.io/library/redis"),
            ("user/app", "docker.io/user/app"),
            ("user/app:1", "docker.io/user/app:1"),
            ("a/b/c", "docker.io/a/b/c"),
            ("docker.io/redis", "docker.io/library/redis"),
            ("index.docker.io/redis", "docker.io/library/redis"),
            ("index.docker.io/user/app", "docker.io/user/app"),
            ("docker.io/library/redis:latest", "docker.io/library/redis:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(full(input), want, "{input}");
        }
    }

    #[test]
    fn other_registries_keep_their_domain() {
        let cases = [
            ("localhost:5000/x", "localhost:5000", "x"),
            ("localhost/x", "localhost", "x"),
            ("127.0.0.1:5000/x", "127.0.0.1:5000", "x"),
            ("quay.io/coreos/etcd", "quay.io", "coreos/etcd"),
            ("gcr.io/a/b/c:v1", "gcr.io", "a/b/c"),
            ("[::1]:5000/x", "[::1]:5000", "x"),
            ("[fe80::1]/x", "[fe80::1]", "x"),
            ("Example.COM/x", "Example.COM", "x"),
            ("registry-1.example.com:443/a", "registry-1.example.com:443", "a"),
        ];
        for (input, domain, path) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!((r.domain(), r.path()), (domain, path), "{input}");
            assert!(!r.is_hub());
        }
    }

    #[test]
    fn first_component_without_dot_colon_or_localhost_is_a_hub_namespace() {
        let r = Reference::parse("myhost/x").unwrap();
        assert_eq!((r.domain(), r.path()), ("docker.io", "myhost/x"));
        assert!(r.is_hub());
    }

    #[test]
    fn tags_and_digests_are_split() {
        let r = Reference::parse(&format!("localhost:5000/x:v1.0_rc-1@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag(), Some("v1.0_rc-1"));
        assert_eq!(r.digest().map(|d| d.hex()), Some(HEX));
        let r = Reference::parse(&format!("redis@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.to_string(), format!("docker.io/library/redis@sha256:{HEX}"));
        let r = Reference::parse("localhost:5000/x").unwrap();
        assert_eq!((r.tag(), r.digest()), (None, None));
        assert_eq!(Reference::parse("redis:Latest").unwrap().tag(), Some("Latest"));
    }

    #[test]
    fn uppercase_repository_is_refused_with_the_dockerd_message() {
        let e = Reference::parse("Redis").unwrap_err();
        assert_eq!(e.to_string(), "invalid reference format: repository name (library/Redis) must be lowercase");
        let e = Reference::parse("user/App:1").unwrap_err();
        assert_eq!(e.to_string(), "invalid reference format: repository name (user/App) must be lowercase");
        let e = Reference::parse("localhost:5000/Foo").unwrap_err();
        assert_eq!(e.to_string(), "invalid reference format: repository name (Foo) must be lowercase");
    }

    #[test]
    fn malformed_references_are_invalid_format() {
        let long_tag = format!("redis:{}", "a".repeat(129));
        let bad = [
            "",
            ":",
            "redis:",
            "redis::1",
            "/redis",
            "redis/",
            "a//b",
            "-redis",
            "redis-",
            "re..dis",
            "re___dis",
            "redis:-tag",
            "redis:.tag",
            "redis:ta/g",
            "redis@",
            "redis@sha256:",
            "redis@sha256:abc",
            "redis with space",
            "localhost:abc/x",
            "local_host.com/x",
            "-bad.com/x",
            "[::1/x",
            "redis:tag:tag",
            "user/app@sha256:zz",
            long_tag.as_str(),
        ];
        for input in bad {
            assert_eq!(Reference::parse(input), Err(ReferenceError::InvalidFormat), "{input:?}");
        }
    }

    #[test]
    fn separators_follow_the_grammar() {
        for ok in ["a.b", "a_b", "a__b", "a-b", "a---b", "a.b-c_d__e", "0", "a/b.c/d-e"] {
            assert!(Reference::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["a._b", "a.-b", "a___b", "a_-b", "a..b", "_a", "a."] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_other_than_sha256_are_refused() {
        let e = Reference::parse(&format!("redis@sha512:{HEX}{HEX}")).unwrap_err();
        assert_eq!(e, ReferenceError::UnsupportedDigest);
        let e = Reference::parse(&format!("redis@sha256:{HEX}00")).unwrap_err();
        assert_eq!(e, ReferenceError::InvalidDigestLength);
        let e = Reference::parse(&format!("redis@sha256:{}", HEX.to_uppercase())).unwrap_err();
        assert_eq!(e, ReferenceError::InvalidDigestFormat);
    }

    #[test]
    fn sixty_four_hex_characters_are_not_a_repository_name() {
        let e = Reference::parse(HEX).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("invalid repository name ({HEX}), cannot specify 64-byte hexadecimal strings")
        );
        // With a namespace or tag it is a name like any other.
        assert!(Reference::parse(&format!("user/{HEX}")).is_ok());
        assert!(Reference::parse(&format!("{HEX}:1")).is_ok());
    }

    #[test]
    fn overlong_names_are_refused() {
        let long = format!("localhost:5000/{}", "a".repeat(241));
        assert_eq!(Reference::parse(&long), Err(ReferenceError::NameTooLong));
        let fits = format!("localhost:5000/{}", "a".repeat(240));
        assert!(Reference::parse(&fits).is_ok());
    }

    #[test]
    fn default_tag_is_added_only_without_tag_or_digest() {
        assert_eq!(Reference::parse("redis").unwrap().with_default_tag().tag(), Some("latest"));
        assert_eq!(Reference::parse("redis:7").unwrap().with_default_tag().tag(), Some("7"));
        let pinned = Reference::parse(&format!("redis@sha256:{HEX}")).unwrap().with_default_tag();
        assert_eq!(pinned.tag(), None);
    }

    #[test]
    fn familiar_form_drops_hub_domain_and_library() {
        let cases = [
            ("redis", "redis:latest", "redis"),
            ("docker.io/library/redis:7", "redis:7", "redis"),
            ("user/app:1", "user/app:1", "user/app"),
            ("library/a/b", "library/a/b:latest", "library/a/b"),
            ("localhost:5000/x", "localhost:5000/x:latest", "localhost:5000/x"),
            ("127.0.0.1:5000/a/b:2", "127.0.0.1:5000/a/b:2", "127.0.0.1:5000/a/b"),
        ];
        for (input, familiar, repo) in cases {
            let r = Reference::parse(input).unwrap().with_default_tag();
            assert_eq!(r.familiar(), familiar, "{input}");
            assert_eq!(r.familiar_repository(), repo, "{input}");
        }
        let r = Reference::parse(&format!("redis:7@sha256:{HEX}")).unwrap();
        assert_eq!(r.familiar(), format!("redis:7@sha256:{HEX}"));
    }

    #[test]
    fn repository_and_full_name_are_fully_qualified() {
        let r = Reference::parse("redis:7").unwrap();
        assert_eq!(r.repository(), "docker.io/library/redis");
        assert_eq!(r.full_name(), "docker.io/library/redis:7");
        let r = Reference::parse("localhost:5000/x").unwrap();
        assert_eq!(r.repository(), "localhost:5000/x");
    }

    #[test]
    fn docker_ref_prefers_the_digest() {
        let r = Reference::parse(&format!("redis:7@sha256:{HEX}")).unwrap().docker_ref();
        assert_eq!(r.to_string(), format!("docker.io/library/redis@sha256:{HEX}"));
        assert_eq!(Reference::parse("redis").unwrap().docker_ref().to_string(), "docker.io/library/redis:latest");
    }

    #[test]
    fn with_tag_validates_the_tag() {
        let r = Reference::parse("redis:7").unwrap();
        assert_eq!(r.with_tag("8").unwrap().familiar(), "redis:8");
        assert_eq!(r.with_tag("bad tag"), Err(ReferenceError::InvalidTag));
        assert_eq!(r.with_tag(""), Err(ReferenceError::InvalidTag));
    }

    #[test]
    fn display_round_trips_through_parse() {
        for s in ["redis:7", "user/app", "localhost:5000/x:y", "[::1]:5000/a/b"] {
            let r = Reference::parse(s).unwrap();
            assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
            assert_eq!(Reference::parse(&r.familiar()).unwrap(), r);
        }
    }

    #[test]
    fn from_parts_checks_the_grammar() {
        assert!(Reference::from_parts("localhost:5000", "a/b").is_ok());
        assert!(Reference::from_parts("localhost:5000", "A").is_err());
        assert!(Reference::from_parts("bad_host", "a").is_err());
    }
}
