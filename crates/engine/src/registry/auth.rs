//! Registry authentication: the credentials a request carries, decoding
//! them from the API's `X-Registry-Auth` header, parsing `WWW-Authenticate`
//! challenges, and fetching and caching bearer tokens.
//!
//! Does not read `~/.docker/config.json` (see `docker_config`) and does not
//! decide when to authenticate (see `client`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{StatusCode, Url};
use sha2::{Digest as _, Sha256};

use super::error::{parse_error_body, RegistryError};

/// What to authenticate with, chosen per request by the engine.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (`docker login` to a token server that issues
    /// them); exchanged for an access token at the realm.
    IdentityToken(String),
    /// A bearer token to send to the registry as is (`registrytoken`).
    RegistryToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(***)"),
            Credentials::RegistryToken(_) => f.write_str("RegistryToken(***)"),
        }
    }
}

fn lenient(alphabet: &base64::alphabet::Alphabet) -> GeneralPurpose {
    GeneralPurpose::new(alphabet, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent))
}

impl Credentials {
    /// Decodes the API's `X-Registry-Auth` header: base64url of JSON
    /// `{username, password, auth, serveraddress, identitytoken,
    /// registrytoken}` (keys matched case-insensitively, as Go does). An
    /// empty header or `{}` is anonymous. Standard base64 and missing
    /// padding are tolerated.
    pub fn from_x_registry_auth(header: &str) -> Result<Self, RegistryError> {
        let header = header.trim();
        if header.is_empty() {
            return Ok(Credentials::Anonymous);
        }
        let bad = |why: String| RegistryError::Credentials(format!("invalid X-Registry-Auth header: {why}"));
        let json = lenient(&base64::alphabet::URL_SAFE)
            .decode(header)
            .or_else(|_| lenient(&base64::alphabet::STANDARD).decode(header))
            .map_err(|e| bad(e.to_string()))?;
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
        let field = |name: &str| -> String {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        Credentials::from_fields(&field("username"), &field("password"), &field("auth"), &field("identitytoken"), &field("registrytoken"))
            .map_err(bad)
    }

    /// Picks credentials from the fields of a Docker auth config, by
    /// dockerd's precedence: identity token, registry token, username and
    /// password, then the `auth` (base64 `user:pass`) field.
    pub(crate) fn from_fields(
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Self, String> {
        if !identity_token.is_empty() {
            return Ok(Credentials::IdentityToken(identity_token.to_owned()));
        }
        if !registry_token.is_empty() {
            return Ok(Credentials::RegistryToken(registry_token.to_owned()));
        }
        if !username.is_empty() || !password.is_empty() {
            return Ok(Credentials::Basic { username: username.to_owned(), password: password.to_owned() });
        }
        if !auth.is_empty() {
            let decoded = lenient(&base64::alphabet::STANDARD)
                .decode(auth)
                .map_err(|e| format!("invalid auth field: {e}"))?;
            let text = String::from_utf8(decoded).map_err(|_| "invalid auth field: not UTF-8".to_owned())?;
            let (user, pass) = text.split_once(':').ok_or_else(|| "invalid auth field: expected user:password".to_owned())?;
            return Ok(Credentials::Basic { username: user.to_owned(), password: pass.to_owned() });
        }
        Ok(Credentials::Anonymous)
    }

    /// A stable, non-reversible key so tokens obtained with one user's
    /// credentials are never handed to another.
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        match self {
            Credentials::Anonymous => h.update(b"anonymous"),
            Credentials::Basic { username, password } => {
                h.update(b"basic\0");
                h.update(username.as_bytes());
                h.update(b"\0");
                h.update(password.as_bytes());
            }
            Credentials::IdentityToken(t) => {
                h.update(b"identity\0");
                h.update(t.as_bytes());
            }
            Credentials::RegistryToken(t) => {
                h.update(b"registry\0");
                h.update(t.as_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            _ => None,
        }
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased: `bearer`, `basic`.
    pub scheme: String,
    /// Parameter names lowercased.
    pub params: BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` value such as `Bearer realm="https://auth",
/// service="registry",scope="repository:x:pull"`. Several challenges in one
/// value are split; malformed parts are skipped.
pub fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut p = Lexer { s: value.as_bytes(), i: 0 };
    loop {
        p.skip(|b| b == b' ' || b == b'\t' || b == b',');
        let Some(word) = p.token() else { break };
        p.skip(|b| b == b' ' || b == b'\t');
        if p.peek() == Some(b'=') && !out.is_empty() {
            p.i += 1;
            p.skip(|b| b == b' ' || b == b'\t');
            let value = if p.peek() == Some(b'"') { p.quoted() } else { p.token().unwrap_or_default() };
            if let Some(last) = out.last_mut() {
                last.params.insert(word.to_ascii_lowercase(), value);
            }
        } else if p.peek() == Some(b'=') {
            // A parameter before any scheme: malformed, skip its value.
            p.i += 1;
            if p.peek() == Some(b'"') {
                p.quoted();
            } else {
                p.token();
            }
        } else {
            out.push(Challenge { scheme: word.to_ascii_lowercase(), params: BTreeMap::new() });
        }
    }
    out
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
    }
    /// An HTTP token; `None` (consuming one byte) if there is none here.
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        self.skip(|b| b.is_ascii_graphic() && !b"\"(),/:;<=>?@[\\]{}".contains(&b) || b == b'/' || b == b':');
        if self.i == start {
            if self.i < self.s.len() {
                self.i += 1;
            }
            return None;
        }
        Some(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn quoted(&mut self) -> String {
        self.i += 1; // opening quote
        let mut v = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        v.push(n);
                        self.i += 1;
                    }
                }
                _ => v.push(b),
            }
        }
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// The challenges of every `WWW-Authenticate` header of a response.
pub(crate) fn challenges_of(headers: &reqwest::header::HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .collect()
}

/// How an origin (scheme://host:port) asked to be authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    Bearer { realm: String, service: String },
    Basic,
}

#[derive(Hash, PartialEq, Eq)]
struct TokenKey {
    realm: String,
    service: String,
    scope: String,
    credentials: String,
}

/// Tokens live at least this long (the distribution client's minimum).
const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are dropped this long before they expire, so a request in flight
/// does not carry a dead one.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// Largest token response read.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

/// Remembers how each origin authenticates and the tokens obtained, per
/// (realm, service, scope, credentials), until they expire.
#[derive(Default)]
pub(crate) struct AuthCache {
    schemes: Mutex<HashMap<String, Scheme>>,
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
}

impl AuthCache {
    /// An `Authorization` value for `origin` known to work for `scope`,
    /// so the request need not first be refused with 401.
    pub(crate) fn cached_header(&self, origin: &str, scope: &str, creds: &Credentials) -> Option<String> {
        let scheme = lock(&self.schemes).get(origin).cloned()?;
        match scheme {
            Scheme::Basic => creds.basic_header(),
            Scheme::Bearer { realm, service } => {
                if let Credentials::RegistryToken(t) = creds {
                    return Some(format!("Bearer {t}"));
                }
                let key = TokenKey { realm, service, scope: scope.to_owned(), credentials: creds.fingerprint() };
                let mut tokens = lock(&self.tokens);
                match tokens.get(&key) {
                    Some((token, expiry)) if Instant::now() < *expiry => Some(format!("Bearer {token}")),
                    Some(_) => {
                        tokens.remove(&key);
                        None
                    }
                    None => None,
                }
            }
        }
    }

    /// Answers the challenges of a 401 from `origin` for `scope`: fetches a
    /// fresh token (bearer) or uses the password (basic). `None` when there
    /// is nothing to answer with (e.g. basic auth without credentials).
    pub(crate) async fn authorize(
        &self,
        http: &reqwest::Client,
        origin: &str,
        challenges: &[Challenge],
        scope: &str,
        creds: &Credentials,
    ) -> Result<Option<String>, RegistryError> {
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = bearer.params.get("realm").cloned().unwrap_or_default();
            let service = bearer.params.get("service").cloned().unwrap_or_default();
            lock(&self.schemes)
                .insert(origin.to_owned(), Scheme::Bearer { realm: realm.clone(), service: service.clone() });
            if let Credentials::RegistryToken(t) = creds {
                return Ok(Some(format!("Bearer {t}")));
            }
            let mut scopes = vec![scope.to_owned()];
            if let Some(extra) = bearer.params.get("scope") {
                scopes.extend(extra.split(' ').filter(|s| !s.is_empty() && *s != scope).map(str::to_owned));
            }
            let (token, lifetime) = fetch_token(http, &realm, &service, &scopes, creds).await?;
            let expiry = Instant::now() + lifetime.max(MIN_TOKEN_LIFETIME) - EXPIRY_MARGIN;
            let key = TokenKey { realm, service, scope: scope.to_owned(), credentials: creds.fingerprint() };
            lock(&self.tokens).insert(key, (token.clone(), expiry));
            return Ok(Some(format!("Bearer {token}")));
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            lock(&self.schemes).insert(origin.to_owned(), Scheme::Basic);
            return Ok(creds.basic_header());
        }
        Ok(None)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain maps in a usable state.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
}

/// Asks the token server at `realm` for a token covering `scopes`. A GET
/// (with Basic credentials if any) for passwords and anonymous access; the
/// OAuth2 refresh-token POST for identity tokens.
async fn fetch_token(
    http: &reqwest::Client,
    realm: &str,
    service: &str,
    scopes: &[String],
    creds: &Credentials,
) -> Result<(String, Duration), RegistryError> {
    let url = Url::parse(realm)
        .ok()
        .filter(|u| u.scheme() == "https" || u.scheme() == "http")
        .ok_or_else(|| RegistryError::Registry { status: 401, message: format!("invalid token realm {realm:?}") })?;
    let req = match creds {
        Credentials::IdentityToken(refresh) => {
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("service", service),
                ("client_id", "berth"),
            ];
            let joined = scopes.join(" ");
            form.push(("scope", &joined));
            http.post(url.clone()).form(&form)
        }
        _ => {
            let mut query: Vec<(&str, &str)> = Vec::new();
            if !service.is_empty() {
                query.push(("service", service));
            }
            for s in scopes {
                query.push(("scope", s));
            }
            let mut req = http.get(url.clone()).query(&query);
            if let Credentials::Basic { username, password } = creds {
                req = req.basic_auth(username, Some(password));
            }
            req
        }
    };
    let resp = req.send().await.map_err(|e| RegistryError::transport(&e))?;
    let status = resp.status();
    let body = super::client::read_capped(resp, MAX_TOKEN_RESPONSE, "token response").await?;
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(RegistryError::Unauthorized(token_error_message(&body)));
    }
    if !status.is_success() {
        return Err(RegistryError::Registry {
            status: status.as_u16(),
            message: format!("token server at {realm} answered {status}: {}", token_error_message(&body)),
        });
    }
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| RegistryError::Registry { status: status.as_u16(), message: format!("malformed token response: {e}") })?;
    let token = if !parsed.token.is_empty() { parsed.token } else { parsed.access_token };
    if token.is_empty() {
        return Err(RegistryError::Registry { status: status.as_u16(), message: "token server returned no token".into() });
    }
    let lifetime = Duration::from_secs(parsed.expires_in.filter(|s| *s > 0).unwrap_or(60) as u64);
    Ok((token, lifetime))
}

/// `unauthorized: incorrect username or password`, from the token server's
/// `{"details": ...}` (Docker Hub) or errcode body.
fn token_error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Details {
        details: String,
    }
    if let Ok(d) = serde_json::from_slice::<Details>(body) {
        return format!("unauthorized: {}", d.details);
    }
    match parse_error_body(body).first() {
        Some(e) => e.describe(),
        None => "unauthorized: authentication required".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};

    #[test]
    fn bearer_challenge_is_parsed() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/redis:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:library/redis:pull");
    }

    #[test]
    fn challenge_parsing_tolerates_spacing_escapes_and_several_schemes() {
        let c = parse_challenges(r#"Basic realm="Registry \"R\"" , Bearer  realm = https://a/token , error="insufficient_scope""#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params["realm"], "Registry \"R\"");
        assert_eq!(c[1].params["realm"], "https://a/token");
        assert_eq!(c[1].params["error"], "insufficient_scope");
        assert!(parse_challenges("").is_empty());
        assert!(parse_challenges("=,=\"").is_empty());
    }

    fn encode(json: &str) -> String {
        URL_SAFE.encode(json)
    }

    #[test]
    fn x_registry_auth_username_password() {
        let c = Credentials::from_x_registry_auth(&encode(r#"{"username":"u","password":"p?>","serveraddress":"localhost:5000"}"#)).unwrap();
        assert_eq!(c, Credentials::Basic { username: "u".into(), password: "p?>".into() });
    }

    #[test]
    fn x_registry_auth_accepts_padding_variants_and_standard_alphabet() {
        let json = r#"{"username":"u","password":"p?>>"}"#;
        for h in [URL_SAFE.encode(json), URL_SAFE_NO_PAD.encode(json), STANDARD.encode(json)] {
            assert!(matches!(Credentials::from_x_registry_auth(&h).unwrap(), Credentials::Basic { .. }), "{h}");
        }
    }

    #[test]
    fn x_registry_auth_auth_field_and_tokens() {
        let auth = STANDARD.encode("user:pa:ss");
        let c = Credentials::from_x_registry_auth(&encode(&format!(r#"{{"auth":"{auth}"}}"#))).unwrap();
        assert_eq!(c, Credentials::Basic { username: "user".into(), password: "pa:ss".into() });
        let c = Credentials::from_x_registry_auth(&encode(r#"{"username":"u","identitytoken":"refresh"}"#)).unwrap();
        assert_eq!(c, Credentials::IdentityToken("refresh".into()));
        let c = Credentials::from_x_registry_auth(&encode(r#"{"RegistryToken":"tok"}"#)).unwrap();
        assert_eq!(c, Credentials::RegistryToken("tok".into()));
    }

    #[test]
    fn x_registry_auth_empty_is_anonymous() {
        assert_eq!(Credentials::from_x_registry_auth("").unwrap(), Credentials::Anonymous);
        assert_eq!(Credentials::from_x_registry_auth(&encode("{}")).unwrap(), Credentials::Anonymous);
    }

    #[test]
    fn x_registry_auth_garbage_is_refused() {
        for bad in ["!!!", &encode("not json"), &encode(r#"{"auth":"bm9jb2xvbg=="}"#)] {
            let e = Credentials::from_x_registry_auth(bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid X-Registry-Auth header"), "{e}");
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = Credentials::Basic { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn fingerprints_differ_per_credential() {
        let a = Credentials::Basic { username: "a".into(), password: "b".into() };
        let b = Credentials::Basic { username: "a".into(), password: "c".into() };
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(Credentials::Anonymous.fingerprint(), a.fingerprint());
    }
}
