//! Who a keyless signature must come from: an OIDC issuer and subject, and
//! optionally Fulcio's other claims (the CI workflow's repository, ref,
//! trigger, build signer ...), matched against the certificate's
//! [`Identity`] once its chain verified.
//!
//! The vocabulary is sigstore policy-controller's (`issuer`,
//! `issuerRegExp`, `subject`, `subjectRegExp`) and Fulcio's claim names
//! (its certificate specification, OIDs 1.3.6.1.4.1.57264.1.*).
//! Regular expressions match the **whole** value (as if written
//! `^(?:…)$`): cosign and policy-controller match anywhere, which lets
//! `https://github.com/acme/` accept `https://evil.example/https://github.com/acme/`.

use std::fmt;

use super::cert::Identity;

/// A string matched exactly, or by a regular expression over the whole
/// value.
#[derive(Debug, Clone)]
pub enum Matcher {
    Exact(String),
    Regex(regex::Regex),
}

impl Matcher {
    /// A regular expression, anchored at both ends.
    pub fn regex(pattern: &str) -> Result<Matcher, String> {
        regex::Regex::new(&format!("^(?:{pattern})$"))
            .map(Matcher::Regex)
            .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))
    }

    /// Exactly one of `exact` and `regex`, named `what` in the error.
    pub fn one_of(exact: Option<&str>, regex: Option<&str>, what: &str) -> Result<Matcher, String> {
        match (exact, regex) {
            (Some(exact), None) if !exact.is_empty() => Ok(Matcher::Exact(exact.to_owned())),
            (None, Some(pattern)) if !pattern.is_empty() => Matcher::regex(pattern),
            (None, None) => Err(format!("{what} or {what}RegExp is required")),
            (Some(_), Some(_)) => Err(format!("set {what} or {what}RegExp, not both")),
            _ => Err(format!("{what} must not be empty")),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(want) => want == value,
            Matcher::Regex(re) => re.is_match(value),
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Exact(s) => write!(f, "{s:?}"),
            Matcher::Regex(re) => write!(f, "/{}/", re.as_str()),
        }
    }
}

/// Fulcio's certificate extensions by the names its specification gives
/// them (lower camel case), with their OIDs. The `github*` ones are the
/// deprecated GitHub-only extensions (raw strings) cosign's
/// `--certificate-github-workflow-*` flags read; the rest are the
/// provider-neutral claims Fulcio writes for every CI provider.
pub const CLAIMS: &[(&str, &str)] = &[
    ("githubWorkflowTrigger", "1.3.6.1.4.1.57264.1.2"),
    ("githubWorkflowSha", "1.3.6.1.4.1.57264.1.3"),
    ("githubWorkflowName", "1.3.6.1.4.1.57264.1.4"),
    ("githubWorkflowRepository", "1.3.6.1.4.1.57264.1.5"),
    ("githubWorkflowRef", "1.3.6.1.4.1.57264.1.6"),
    ("buildSignerURI", "1.3.6.1.4.1.57264.1.9"),
    ("buildSignerDigest", "1.3.6.1.4.1.57264.1.10"),
    ("runnerEnvironment", "1.3.6.1.4.1.57264.1.11"),
    ("sourceRepositoryURI", "1.3.6.1.4.1.57264.1.12"),
    ("sourceRepositoryDigest", "1.3.6.1.4.1.57264.1.13"),
    ("sourceRepositoryRef", "1.3.6.1.4.1.57264.1.14"),
    ("sourceRepositoryIdentifier", "1.3.6.1.4.1.57264.1.15"),
    ("sourceRepositoryOwnerURI", "1.3.6.1.4.1.57264.1.16"),
    ("sourceRepositoryOwnerIdentifier", "1.3.6.1.4.1.57264.1.17"),
    ("buildConfigURI", "1.3.6.1.4.1.57264.1.18"),
    ("buildConfigDigest", "1.3.6.1.4.1.57264.1.19"),
    ("buildTrigger", "1.3.6.1.4.1.57264.1.20"),
    ("runInvocationURI", "1.3.6.1.4.1.57264.1.21"),
    (
        "sourceRepositoryVisibilityAtSigning",
        "1.3.6.1.4.1.57264.1.22",
    ),
];

/// The OID of a claim named as in [`CLAIMS`].
pub fn claim_oid(name: &str) -> Option<&'static str> {
    CLAIMS.iter().find(|(n, _)| *n == name).map(|(_, oid)| *oid)
}

/// The name of a claim's OID, for messages.
fn claim_name(oid: &str) -> &str {
    CLAIMS
        .iter()
        .find(|(_, o)| *o == oid)
        .map_or(oid, |(name, _)| name)
}

/// One acceptable signer: all of its conditions must hold.
#[derive(Debug, Clone)]
pub struct IdentityPolicy {
    pub issuer: Matcher,
    pub subject: Matcher,
    /// Fulcio claims (by OID) and what they must be; a claim the
    /// certificate does not carry fails its condition.
    pub claims: Vec<(&'static str, Matcher)>,
}

impl IdentityPolicy {
    /// Exactly this subject from exactly this issuer (the conformance
    /// CLI's `--certificate-identity` and `--certificate-oidc-issuer`).
    pub fn exact(subject: &str, issuer: &str) -> IdentityPolicy {
        IdentityPolicy {
            issuer: Matcher::Exact(issuer.to_owned()),
            subject: Matcher::Exact(subject.to_owned()),
            claims: Vec::new(),
        }
    }

    /// Why `identity` does not satisfy this policy, if it does not.
    pub fn mismatch(&self, identity: &Identity) -> Option<String> {
        let issuer = identity.issuer.as_deref().unwrap_or_default();
        if !self.issuer.matches(issuer) {
            return Some(format!("issuer {issuer:?} is not {}", self.issuer));
        }
        let subject = identity.subject.as_deref().unwrap_or_default();
        if !self.subject.matches(subject) {
            return Some(format!("subject {subject:?} is not {}", self.subject));
        }
        for (oid, want) in &self.claims {
            match identity.claim(oid) {
                Some(got) if want.matches(got) => {}
                Some(got) => {
                    return Some(format!("{} {got:?} is not {want}", claim_name(oid)));
                }
                None => {
                    return Some(format!(
                        "the certificate has no {} claim (wanted {want})",
                        claim_name(oid)
                    ));
                }
            }
        }
        None
    }
}

impl fmt::Display for IdentityPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subject {} from issuer {}", self.subject, self.issuer)?;
        for (oid, want) in &self.claims {
            write!(f, ", {} {want}", claim_name(oid))?;
        }
        Ok(())
    }
}

/// Checks `identity` against `policies` (any one suffices); the error
/// says what the certificate names and why each policy refused it.
pub fn check(identity: &Identity, policies: &[IdentityPolicy]) -> Result<(), String> {
    let mut reasons = Vec::new();
    for policy in policies {
        match policy.mismatch(identity) {
            None => return Ok(()),
            Some(reason) => reasons.push(reason),
        }
    }
    Err(format!(
        "the certificate was issued to {:?} by {:?}, which no expected identity matches ({})",
        identity.subject.as_deref().unwrap_or_default(),
        identity.issuer.as_deref().unwrap_or_default(),
        reasons.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn github(subject: &str) -> Identity {
        Identity {
            subject: Some(subject.into()),
            issuer: Some("https://token.actions.githubusercontent.com".into()),
            claims: vec![
                (
                    "1.3.6.1.4.1.57264.1.12".into(),
                    "https://github.com/acme/app".into(),
                ),
                ("1.3.6.1.4.1.57264.1.20".into(), "push".into()),
            ],
        }
    }

    const WORKFLOW: &str =
        "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.2.3";

    #[test]
    fn regular_expressions_match_the_whole_value() {
        let m = Matcher::regex("https://github.com/acme/.*").expect("regex");
        assert!(m.matches(WORKFLOW));
        assert!(!m.matches(&format!("https://evil.example/{WORKFLOW}")));
        let m = Matcher::regex("github").expect("regex");
        assert!(!m.matches("https://github.com/login/oauth"));
        assert!(Matcher::regex("(").is_err());
    }

    #[test]
    fn exactly_one_of_value_and_regexp() {
        assert!(Matcher::one_of(Some("a"), None, "issuer").is_ok());
        assert!(Matcher::one_of(None, Some("a.*"), "issuer").is_ok());
        for (exact, regex) in [(None, None), (Some("a"), Some("b")), (Some(""), None)] {
            let e = Matcher::one_of(exact, regex, "issuer").expect_err("refused");
            assert!(e.contains("issuer"), "{e}");
        }
    }

    #[test]
    fn every_condition_must_hold_and_any_identity_suffices() {
        let repo = claim_oid("sourceRepositoryURI").expect("known claim");
        let trigger = claim_oid("buildTrigger").expect("known claim");
        let policy = IdentityPolicy {
            issuer: Matcher::Exact("https://token.actions.githubusercontent.com".into()),
            subject: Matcher::regex("https://github.com/acme/app/.*").expect("regex"),
            claims: vec![
                (repo, Matcher::Exact("https://github.com/acme/app".into())),
                (trigger, Matcher::Exact("push".into())),
            ],
        };
        assert_eq!(policy.mismatch(&github(WORKFLOW)), None);

        let mut other_issuer = github(WORKFLOW);
        other_issuer.issuer = Some("https://accounts.google.com".into());
        assert!(policy
            .mismatch(&other_issuer)
            .expect("refused")
            .contains("issuer"));
        let other_subject = github("https://github.com/evil/app/.github/workflows/x.yml@main");
        assert!(policy
            .mismatch(&other_subject)
            .expect("refused")
            .contains("subject"));
        let mut pull_request = github(WORKFLOW);
        pull_request.claims[1].1 = "pull_request_target".into();
        assert!(policy
            .mismatch(&pull_request)
            .expect("refused")
            .contains("buildTrigger"));
        let mut no_claims = github(WORKFLOW);
        no_claims.claims.clear();
        assert!(policy
            .mismatch(&no_claims)
            .expect("refused")
            .contains("no sourceRepositoryURI claim"));

        let email = IdentityPolicy::exact("a@example.com", "https://accounts.google.com");
        assert!(check(&github(WORKFLOW), std::slice::from_ref(&email)).is_err());
        assert!(check(&github(WORKFLOW), &[email, policy]).is_ok());
        assert!(check(&github(WORKFLOW), &[]).is_err());
    }
}
