//! Break-glass, as in Binary Authorization: a client holding a configured
//! credential may pull an image the policy denies by sending a
//! justification. Every use is audited (verdict `breakglass`, with the
//! credential's name and the justification) and alerted. Off by default.
//!
//! The request header (default `X-Portcullis-Break-Glass`) carries
//! `<token> <justification>`; containerd can send it from `hosts.toml`
//! (`[host."…".header]`), and any HTTP client can.
//!
//! May use: `config` (and the layers below it). Must never use: verify, serve or
//! anything above; verify uses it (a break-glass admission needs a
//! [`Use`]).

use std::fmt;

use http::HeaderMap;

use crate::config::BreakGlassConfig;

/// Shortest token accepted: break-glass tokens must not be guessable.
pub const MIN_TOKEN_LEN: usize = 16;

struct Credential {
    name: String,
    token: Vec<u8>,
}

/// Compiled break-glass settings. `Debug` never shows tokens.
pub struct BreakGlass {
    header: http::HeaderName,
    credentials: Vec<Credential>,
}

impl fmt::Debug for BreakGlass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakGlass")
            .field("header", &self.header)
            .field(
                "credentials",
                &self.credentials.iter().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A break-glass request whose credential checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
///
/// The proof a break-glass admission needs: its fields are private and
/// only [`BreakGlass::check`] makes one, from a credential that checked
/// out.
pub struct Use {
    /// The credential's name: who broke the glass.
    identity: String,
    justification: String,
}

impl Use {
    /// The credential's name: who broke the glass.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Why, as the request said it (at most 500 characters).
    pub fn justification(&self) -> &str {
        &self.justification
    }
}

/// What a request's break-glass header amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// No header (or break-glass is off).
    None,
    Valid(Use),
    /// A header that did not check out: why (never the token).
    Invalid(String),
}

impl BreakGlass {
    /// Compiles the config; `None` when disabled. Token files are read now.
    pub fn from_config(config: &BreakGlassConfig) -> Result<Option<BreakGlass>, String> {
        if !config.enabled {
            return Ok(None);
        }
        config.validate()?;
        let header = config.header_name()?;
        let mut credentials = Vec::new();
        for (i, c) in config.credentials.iter().enumerate() {
            let token = std::fs::read_to_string(&c.token_file).map_err(|e| {
                format!(
                    "breakGlass.credentials[{i}].tokenFile: cannot read {}: {e}",
                    c.token_file.display()
                )
            })?;
            let token = token.trim().as_bytes().to_vec();
            if token.len() < MIN_TOKEN_LEN || token.iter().any(|b| b.is_ascii_whitespace()) {
                return Err(format!(
                    "breakGlass.credentials[{i}].tokenFile: the token must be at least {MIN_TOKEN_LEN} characters without spaces"
                ));
            }
            credentials.push(Credential {
                name: c.name.clone(),
                token,
            });
        }
        Ok(Some(BreakGlass {
            header,
            credentials,
        }))
    }

    /// Checks a request's break-glass header.
    pub fn check(&self, headers: &HeaderMap) -> Attempt {
        let Some(value) = headers.get(&self.header) else {
            return Attempt::None;
        };
        let Ok(text) = value.to_str() else {
            return Attempt::Invalid("header is not text".into());
        };
        let (token, justification) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
        let justification = justification.trim();
        let Some(credential) = self
            .credentials
            .iter()
            .find(|c| constant_time_eq(&c.token, token.as_bytes()))
        else {
            return Attempt::Invalid("unknown break-glass credential".into());
        };
        if justification.is_empty() {
            return Attempt::Invalid(format!(
                "break-glass by {} without a justification",
                credential.name
            ));
        }
        Attempt::Valid(Use {
            identity: credential.name.clone(),
            justification: justification.chars().take(500).collect(),
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::breakglass::CredentialConfig;

    fn default_header() -> String {
        "X-Portcullis-Break-Glass".to_owned()
    }

    fn glass() -> (tempfile::TempDir, BreakGlass) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "s3cret-token-0123456789\n").unwrap();
        let config = BreakGlassConfig {
            enabled: true,
            header: default_header(),
            credentials: vec![CredentialConfig {
                name: "oncall".into(),
                token_file: file,
            }],
        };
        let g = BreakGlass::from_config(&config).unwrap().unwrap();
        (dir, g)
    }

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-portcullis-break-glass", v.parse().unwrap());
        h
    }

    #[test]
    fn attempts() {
        let (_d, g) = glass();
        assert_eq!(g.check(&HeaderMap::new()), Attempt::None);
        assert_eq!(
            g.check(&headers("s3cret-token-0123456789 INC-42: prod outage")),
            Attempt::Valid(Use {
                identity: "oncall".into(),
                justification: "INC-42: prod outage".into()
            })
        );
        assert!(matches!(
            g.check(&headers("s3cret-token-0123456789")),
            Attempt::Invalid(m) if m.contains("justification")
        ));
        assert!(matches!(
            g.check(&headers("wrong-token-0123456789 why")),
            Attempt::Invalid(m) if !m.contains("wrong-token")
        ));
        assert!(!format!("{g:?}").contains("s3cret"));
    }

    #[test]
    fn config_rules() {
        let off = BreakGlassConfig {
            enabled: false,
            header: default_header(),
            credentials: vec![],
        };
        assert!(BreakGlass::from_config(&off).unwrap().is_none());
        let none = BreakGlassConfig {
            enabled: true,
            ..off.clone()
        };
        assert!(BreakGlass::from_config(&none).is_err());
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc").unwrap();
        let weak = BreakGlassConfig {
            enabled: true,
            header: default_header(),
            credentials: vec![CredentialConfig {
                name: "x".into(),
                token_file: short,
            }],
        };
        assert!(BreakGlass::from_config(&weak)
            .unwrap_err()
            .contains("at least"));
    }
}
