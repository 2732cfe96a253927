//! `breakGlass:` as written: whether it is on, the request header, and who
//! may break glass (a name and the file holding their token). The token
//! files are read, and the credentials compiled, by
//! `breakglass::BreakGlass::from_config` (called once, by the
//! composition root).
//!
//! May use: std, serde, http. Must never use: any other module of the
//! crate (in particular not the `breakglass` module, which builds on this).

use std::path::PathBuf;

use serde::Deserialize;

/// `breakGlass:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BreakGlassConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_header")]
    pub header: String,
    /// Who may break glass: a name (recorded as the identity) and a file
    /// holding the secret token.
    #[serde(default)]
    pub credentials: Vec<CredentialConfig>,
}

fn default_header() -> String {
    "X-Portcullis-Break-Glass".to_owned()
}

/// One break-glass credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CredentialConfig {
    pub name: String,
    pub token_file: PathBuf,
}

impl BreakGlassConfig {
    /// The request header, parsed. Errors name the field
    /// (`breakGlass.header: …`).
    pub fn header_name(&self) -> Result<http::HeaderName, String> {
        http::HeaderName::try_from(self.header.as_str())
            .map_err(|_| format!("breakGlass.header: {:?} is not a header name", self.header))
    }

    /// What can be checked without reading the token files: when enabled,
    /// a valid header name and at least one credential. Errors name the
    /// field (`breakGlass.credentials: …`).
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        self.header_name()?;
        if self.credentials.is_empty() {
            return Err("breakGlass.credentials: enabled but no credentials configured".into());
        }
        Ok(())
    }
}
