//! Upstream authentication: HTTP Basic and the bearer-token challenge flow
//! (`WWW-Authenticate: Bearer realm=…,service=…,scope=…` → token endpoint →
//! `Authorization: Bearer`), with tokens cached per scope until they expire
//! or the upstream refuses them. Credentials come from
//! [`super::credentials`], resolved afresh for every token fetched and
//! after every refusal; an identity token goes to the token endpoint as an
//! OAuth2 refresh token (`POST`, `grant_type=refresh_token`).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use tokio::sync::Mutex;

use super::body::{read_bounded, UpstreamBody};
pub use super::credentials::Credentials;
use super::credentials::{CredentialError, CredentialSource};
use super::{UpstreamError, MAX_TOKEN_RESPONSE};

/// At most this many scopes keep a cached token; past it, expired tokens are
/// dropped and, if that is not enough, the cache starts over. One scope is
/// one repository, so this covers far more repositories than a proxy sees
/// in a token lifetime.
pub const MAX_CACHED_TOKENS: usize = 4096;
/// Tokens without `expires_in` live 60 s (the token spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Refresh a token this long before the upstream says it expires, so a
/// request never races the expiry (capped at half the lifetime).
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// A credential header. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret(HeaderValue);

impl Secret {
    pub(super) fn new(mut value: HeaderValue) -> Secret {
        value.set_sensitive(true);
        Secret(value)
    }

    pub fn header(&self) -> &HeaderValue {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses `Basic realm="x"` or `Bearer realm="…",service="…",scope="…"`.
    /// Parameters may come in any order, with spaces after commas, and
    /// quoted values may contain commas.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

fn parse_params(mut s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        let Some(eq) = s.find('=') else { break };
        let key = s[..eq].trim().to_owned();
        s = &s[eq + 1..];
        let value;
        if let Some(quoted) = s.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            v.push(next);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => v.push(c),
                }
            }
            value = v;
            s = &quoted[end.min(quoted.len())..];
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_owned();
            s = &s[end..];
        }
        out.push((key, value));
    }
    out
}

/// What the upstream told us about how it wants to be authenticated.
#[derive(Debug, Clone)]
pub enum Scheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

/// Per-upstream authentication state: where the credentials come from,
/// the scheme learned from the first challenge, and the token cache.
pub struct AuthState {
    pub credentials: Option<CredentialSource>,
    scheme: std::sync::Mutex<Option<Scheme>>,
    tokens: Mutex<HashMap<String, CachedToken>>,
}

impl fmt::Debug for AuthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthState")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl AuthState {
    pub fn new(credentials: Option<CredentialSource>) -> AuthState {
        AuthState {
            credentials,
            scheme: std::sync::Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    pub fn scheme(&self) -> Option<Scheme> {
        self.scheme.lock().map(|s| s.clone()).unwrap_or(None)
    }

    pub fn learn(&self, scheme: Scheme) {
        if let Ok(mut s) = self.scheme.lock() {
            *s = Some(scheme);
        }
    }

    /// A cached, unexpired token for `scope`.
    pub async fn cached_token(&self, scope: &str) -> Option<Secret> {
        let tokens = self.tokens.lock().await;
        tokens
            .get(scope)
            .filter(|t| t.refresh_at > Instant::now())
            .map(|t| t.token.clone())
    }

    /// Drops the token cached for `scope` (the upstream refused it).
    pub async fn forget_token(&self, scope: &str) {
        self.tokens.lock().await.remove(scope);
    }

    /// Remembers a token for `scope` for `lifetime` (less a margin).
    pub async fn store_token(
        &self,
        scope: &str,
        token: &str,
        lifetime: Option<Duration>,
    ) -> Option<Secret> {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        let secret = Secret::new(value);
        let lifetime = lifetime.unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let margin = EXPIRY_MARGIN.min(lifetime / 2);
        let refresh_at = Instant::now() + (lifetime - margin);
        let mut tokens = self.tokens.lock().await;
        if tokens.len() >= MAX_CACHED_TOKENS {
            let now = Instant::now();
            tokens.retain(|_, t| t.refresh_at > now);
            if tokens.len() >= MAX_CACHED_TOKENS {
                tokens.clear();
            }
        }
        tokens.insert(
            scope.to_owned(),
            CachedToken {
                token: secret.clone(),
                refresh_at,
            },
        );
        Some(secret)
    }
}

/// The token endpoint's answer; either field name occurs in the wild.
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

/// Token authentication: what an upstream's challenges ask for.
impl super::Upstream {
    /// The `Authorization` to send before any challenge, when an earlier
    /// challenge told us the scheme.
    pub(super) async fn proactive_authorization(
        &self,
        scope: &str,
    ) -> Result<Option<Secret>, UpstreamError> {
        match self.auth.scheme() {
            None => Ok(None),
            Some(Scheme::Basic) => match &self.auth.credentials {
                None => Ok(None),
                Some(source) => {
                    let credentials = source
                        .current()
                        .await
                        .map_err(|e| self.credential_error(e))?;
                    self.basic(&credentials).map(Some)
                }
            },
            Some(Scheme::Bearer { realm, service }) => {
                if let Some(token) = self.auth.cached_token(scope).await {
                    return Ok(Some(token));
                }
                self.fetch_token(&realm, service.as_deref(), scope, scope)
                    .await
                    .map(Some)
            }
        }
    }

    /// Answers a 401 challenge; `None` when we have nothing to answer with.
    /// The credentials are resolved afresh (a 401 may mean they changed),
    /// and a bearer token is fetched anew.
    pub(super) async fn answer_challenge(
        &self,
        challenge: Challenge,
        scope: &str,
    ) -> Result<Option<Secret>, UpstreamError> {
        match challenge {
            Challenge::Basic => {
                let Some(source) = &self.auth.credentials else {
                    return Ok(None);
                };
                self.auth.learn(Scheme::Basic);
                let credentials = source.fresh().await.map_err(|e| self.credential_error(e))?;
                self.basic(&credentials).map(Some)
            }
            Challenge::Bearer {
                realm,
                service,
                scope: asked,
            } => {
                self.auth.learn(Scheme::Bearer {
                    realm: realm.clone(),
                    service: service.clone(),
                });
                let asked = asked.unwrap_or_else(|| scope.to_owned());
                self.fetch_token(&realm, service.as_deref(), &asked, scope)
                    .await
                    .map(Some)
            }
        }
    }

    fn basic(&self, credentials: &Credentials) -> Result<Secret, UpstreamError> {
        credentials
            .basic_header()
            .ok_or_else(|| UpstreamError::Auth {
                upstream: self.registry.clone(),
                reason: "the upstream asks for Basic auth, and the configured credential is an \
                     identity token, which only a bearer token endpoint takes"
                    .into(),
            })
    }

    /// The operator's log gets the whole story (which file, which helper,
    /// its first line of output); the client only learns that the proxy's
    /// own credentials are unavailable: paths and helper output describe
    /// the proxy's host, not the pull.
    fn credential_error(&self, e: CredentialError) -> UpstreamError {
        tracing::warn!(upstream = %self.registry, error = %e, "upstream credentials unavailable");
        UpstreamError::Auth {
            upstream: self.registry.clone(),
            reason: "the proxy's credentials for it are unavailable (its log says why)".into(),
        }
    }

    /// Gets a token for `scope` from the token endpoint and caches it under
    /// `cache_key`; within `timeouts.read` in all (a token response is a
    /// few hundred bytes: a token endpoint trickling it must not hold a
    /// blob request, which has no total deadline of its own). A credential
    /// helper runs before that clock starts, under its own bound.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        cache_key: &str,
    ) -> Result<Secret, UpstreamError> {
        let credentials = self.credentials_for_realm(realm).await?;
        self.within(
            self.timeouts.read,
            "read",
            || "a token".to_owned(),
            self.fetch_token_now(realm, service, scope, cache_key, credentials.as_ref()),
        )
        .await
    }

    /// The credentials resolved now, if `realm` may receive them; `None`
    /// for a realm that gets an anonymous request (warned about once).
    async fn credentials_for_realm(
        &self,
        realm: &str,
    ) -> Result<Option<Credentials>, UpstreamError> {
        let Some(source) = &self.auth.credentials else {
            return Ok(None);
        };
        if !self.realm_gets_credentials(realm) {
            if !self.warned_foreign_realm.swap(true, Ordering::Relaxed) {
                let shown: String = realm.chars().take(200).collect();
                tracing::warn!(
                    upstream = %self.registry,
                    realm = %shown,
                    "token realm is not on the upstream's own origin and not in \
                     upstreams[].auth.tokenRealms: asking it for an anonymous token, \
                     without the configured credentials (logged once)"
                );
            }
            return Ok(None);
        }
        source
            .fresh()
            .await
            .map(Some)
            .map_err(|e| self.credential_error(e))
    }

    async fn fetch_token_now(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        cache_key: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Secret, UpstreamError> {
        let auth_error = |reason: String| UpstreamError::Auth {
            upstream: self.registry.clone(),
            reason,
        };
        let not_a_url = || auth_error(format!("token realm {realm:?} is not a URL"));
        let response = match credentials {
            // An identity token is an OAuth2 refresh token: POSTed as a
            // form, as docker and containers/image do.
            Some(credentials) if credentials.refresh_token().is_some() => {
                let form = {
                    let mut form = form_urlencoded::Serializer::new(String::new());
                    form.append_pair("grant_type", "refresh_token");
                    form.append_pair(
                        "refresh_token",
                        credentials.refresh_token().unwrap_or_default(),
                    );
                    form.append_pair("client_id", OAUTH_CLIENT_ID);
                    if let Some(service) = service {
                        form.append_pair("service", service);
                    }
                    form.append_pair("scope", scope);
                    form.finish()
                };
                let uri: Uri = realm.parse().map_err(|_| not_a_url())?;
                let mut headers = HeaderMap::new();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                self.send(Method::POST, uri, &headers, None, Bytes::from(form))
                    .await?
            }
            _ => {
                let query = {
                    let mut query = form_urlencoded::Serializer::new(String::new());
                    if let Some(service) = service {
                        query.append_pair("service", service);
                    }
                    query.append_pair("scope", scope);
                    query.finish()
                };
                let separator = if realm.contains('?') { '&' } else { '?' };
                let uri: Uri = format!("{realm}{separator}{query}")
                    .parse()
                    .map_err(|_| not_a_url())?;
                let basic = credentials.and_then(Credentials::basic_header);
                self.send(
                    Method::GET,
                    uri,
                    &HeaderMap::new(),
                    basic.as_ref(),
                    Bytes::new(),
                )
                .await?
            }
        };
        let status = response.status();
        if !status.is_success() {
            return Err(auth_error(format!("token endpoint answered {status}")));
        }
        let body = UpstreamBody::new(
            response.into_body(),
            self.timeouts.read,
            self.registry.clone(),
        );
        let bytes = read_bounded(body, MAX_TOKEN_RESPONSE)
            .await
            .map_err(|e| auth_error(format!("reading token response: {e}")))?;
        let parsed: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| auth_error(format!("token response is not JSON: {e}")))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| auth_error("token response has no token".into()))?;
        self.auth
            .store_token(
                cache_key,
                &token,
                parsed.expires_in.map(Duration::from_secs),
            )
            .await
            .ok_or_else(|| auth_error("token is not a valid header value".into()))
    }
}

/// The OAuth2 `client_id` sent with an identity token (docker sends
/// `docker`, containers/image `containers/image`).
const OAUTH_CLIENT_ID: &str = "portcullis";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
        // Any order, spaces, commas inside quotes, extra error param.
        assert_eq!(
            Challenge::parse(
                r#"bearer scope="repository:a:pull,push", realm="http://x/t" ,error="insufficient_scope""#
            ),
            Some(Challenge::Bearer {
                realm: "http://x/t".into(),
                service: None,
                scope: Some("repository:a:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[tokio::test]
    async fn token_cache_expires() {
        let auth = AuthState::new(None);
        auth.store_token("s", "t", Some(Duration::from_secs(300)))
            .await
            .unwrap();
        assert!(auth.cached_token("s").await.is_some());
        assert!(auth.cached_token("other").await.is_none());
        auth.store_token("short", "t", Some(Duration::ZERO))
            .await
            .unwrap();
        assert!(auth.cached_token("short").await.is_none());
    }
}
