//! Proxy config YAML helpers: `upstreams:` entries and the config built from them.

use std::path::Path;

/// One `upstreams:` entry.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub registry: String,
    pub url: String,
    pub prefix: Option<String>,
    pub default: bool,
    pub auth: Option<(String, String)>,
    /// `auth.tokenRealms` (with `auth`).
    pub token_realms: Vec<String>,
}

impl Upstream {
    pub fn new(registry: &str, url: &str) -> Upstream {
        Upstream {
            registry: registry.to_string(),
            url: url.to_string(),
            prefix: None,
            default: false,
            auth: None,
            token_realms: Vec::new(),
        }
    }

    /// Lists a token endpoint on another host that may get the credentials.
    pub fn token_realm(mut self, realm: &str) -> Upstream {
        self.token_realms.push(realm.to_string());
        self
    }

    pub fn with_default(mut self) -> Upstream {
        self.default = true;
        self
    }

    pub fn prefix(mut self, prefix: &str) -> Upstream {
        self.prefix = Some(prefix.to_string());
        self
    }

    pub fn auth(mut self, username: &str, password_file: &Path) -> Upstream {
        self.auth = Some((username.to_string(), password_file.display().to_string()));
        self
    }
}

/// Builds a proxy config (`listen: {listen}` left for `Proxy::start`).
/// `timeouts` is `(connect, read)`, e.g. `("2s", "3s")`.
pub fn proxy_yaml(upstreams: &[Upstream], timeouts: Option<(&str, &str)>) -> String {
    let mut y = String::from("listen: {listen}\nupstreams:\n");
    for u in upstreams {
        y.push_str(&format!(
            "  - registry: {}\n    url: {}\n",
            u.registry, u.url
        ));
        if let Some(p) = &u.prefix {
            y.push_str(&format!("    prefix: {p}\n"));
        }
        if u.default {
            y.push_str("    default: true\n");
        }
        if let Some((user, file)) = &u.auth {
            let realms = if u.token_realms.is_empty() {
                String::new()
            } else {
                format!(
                    ", tokenRealms: {}",
                    serde_json::to_string(&u.token_realms).expect("json list")
                )
            };
            y.push_str(&format!(
                "    auth: {{username: {}, passwordFile: {}{realms}}}\n",
                serde_json::to_string(user).expect("json string"),
                serde_json::to_string(file).expect("json string"),
            ));
        }
    }
    if let Some((connect, read)) = timeouts {
        y.push_str(&format!("timeouts: {{connect: {connect}, read: {read}}}\n"));
    }
    y
}
