//! Requirements on attestation contents: a predicate type, and conditions
//! on the signed predicate addressed by JSON pointers. Pure and total:
//! every condition evaluates to satisfied or not, with a reason.
//!
//! ```yaml
//! attestations:
//!   - predicateType: https://slsa.dev/provenance/v1
//!     conditions:
//!       - {path: /runDetails/builder/id, in: ["https://ci.example.com/builder@v1"]}
//!       - {path: /buildDefinition/externalParameters/source, matches: "^git\\+https://git.example.com/team/.*"}
//! ```
//! Operators: `equals` (any JSON value), `in` (list of values), `matches`
//! (a regular expression, anchored at both ends, on a string), `exists`
//! (`true`: the path is present; `false`: it is absent).

/// The predicate type of cosign v3 image *signatures* (a DSSE statement
/// with no predicate): evidence of this type is a signature, not an
/// attestation.
pub const SIGNATURE_PREDICATE_TYPE: &str = "https://sigstore.dev/cosign/sign/v1";

use crate::config::policy::{ConditionDoc, RequirementDoc};

#[derive(Debug, Clone)]
enum Operator {
    Equals(serde_json::Value),
    In(Vec<serde_json::Value>),
    Matches(regex::Regex, String),
    Exists(bool),
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub struct Condition {
    path: String,
    operator: Operator,
}

/// A compiled requirement.
#[derive(Debug, Clone)]
pub struct Requirement {
    pub predicate_type: String,
    pub conditions: Vec<Condition>,
}

impl Requirement {
    /// Compiles a requirement; errors name the problem.
    pub fn compile(doc: &RequirementDoc) -> Result<Requirement, String> {
        if doc.predicate_type.is_empty() {
            return Err("predicateType must not be empty".into());
        }
        let conditions = doc
            .conditions
            .iter()
            .enumerate()
            .map(|(i, c)| Condition::compile(c).map_err(|e| format!("conditions[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Requirement {
            predicate_type: doc.predicate_type.clone(),
            conditions,
        })
    }

    /// The first condition `predicate` fails, with why; `None` if all hold.
    pub fn first_failure(&self, predicate: &serde_json::Value) -> Option<String> {
        self.conditions
            .iter()
            .find_map(|c| c.check(predicate).err())
    }
}

impl Condition {
    fn compile(doc: &ConditionDoc) -> Result<Condition, String> {
        if !(doc.path.is_empty() || doc.path.starts_with('/')) {
            return Err(format!(
                "path {:?} must be a JSON pointer (start with /)",
                doc.path
            ));
        }
        let mut operators = Vec::new();
        if let Some(v) = &doc.equals {
            operators.push(Operator::Equals(v.clone()));
        }
        if let Some(v) = &doc.one_of {
            operators.push(Operator::In(v.clone()));
        }
        if let Some(pattern) = &doc.matches {
            let anchored = format!("^(?:{pattern})$");
            let re = regex::Regex::new(&anchored).map_err(|e| {
                format!("matches {pattern:?} is not a valid regular expression: {e}")
            })?;
            operators.push(Operator::Matches(re, pattern.clone()));
        }
        if let Some(e) = doc.exists {
            operators.push(Operator::Exists(e));
        }
        if operators.len() != 1 {
            return Err(format!(
                "condition on {:?} needs exactly one of equals, in, matches, exists",
                doc.path
            ));
        }
        Ok(Condition {
            path: doc.path.clone(),
            operator: operators.remove(0),
        })
    }

    /// Evaluates against a predicate; `Err` says why it does not hold.
    pub fn check(&self, predicate: &serde_json::Value) -> Result<(), String> {
        let found = predicate.pointer(&self.path);
        let path = &self.path;
        match (&self.operator, found) {
            (Operator::Exists(true), Some(_)) | (Operator::Exists(false), None) => Ok(()),
            (Operator::Exists(true), None) => Err(format!("{path} is absent")),
            (Operator::Exists(false), Some(_)) => Err(format!("{path} is present")),
            (_, None) => Err(format!("{path} is absent")),
            (Operator::Equals(want), Some(v)) if v == want => Ok(()),
            (Operator::Equals(want), Some(v)) => Err(format!("{path} is {v}, not {want}")),
            (Operator::In(list), Some(v)) if list.contains(v) => Ok(()),
            (Operator::In(list), Some(v)) => Err(format!(
                "{path} is {v}, not one of {}",
                serde_json::Value::Array(list.clone())
            )),
            (Operator::Matches(re, pattern), Some(serde_json::Value::String(s))) => {
                if re.is_match(s) {
                    Ok(())
                } else {
                    Err(format!("{path} is {s:?}, which does not match {pattern:?}"))
                }
            }
            (Operator::Matches(_, pattern), Some(v)) => {
                Err(format!("{path} is {v}, not a string matching {pattern:?}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(yaml: &str) -> Result<Requirement, String> {
        let doc: RequirementDoc = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        Requirement::compile(&doc)
    }

    #[test]
    fn built_by_ci_on_slsa_v1_and_v02() {
        let v1 = req(r#"
predicateType: https://slsa.dev/provenance/v1
conditions:
  - {path: /runDetails/builder/id, in: ["https://ci.example.com/builder@v1"]}
  - {path: /buildDefinition/externalParameters/source, matches: "git\\+https://git.example.com/team/.*"}
"#)
        .unwrap();
        let good = json!({"buildDefinition": {"externalParameters": {"source": "git+https://git.example.com/team/app"}},
                          "runDetails": {"builder": {"id": "https://ci.example.com/builder@v1"}}});
        assert_eq!(v1.first_failure(&good), None);
        let other_builder = json!({"buildDefinition": {"externalParameters": {"source": "git+https://git.example.com/team/app"}},
                                   "runDetails": {"builder": {"id": "https://evil.example/builder"}}});
        let why = v1.first_failure(&other_builder).unwrap();
        assert!(
            why.contains("/runDetails/builder/id") && why.contains("evil"),
            "{why}"
        );
        // Anchored: a prefix match is not a match.
        let fork = json!({"buildDefinition": {"externalParameters": {"source": "xgit+https://git.example.com/team/app"}},
                          "runDetails": {"builder": {"id": "https://ci.example.com/builder@v1"}}});
        assert!(v1.first_failure(&fork).unwrap().contains("does not match"));
        let v02 = req("predicateType: https://slsa.dev/provenance/v0.2\nconditions:\n  - {path: /builder/id, equals: \"2\"}\n").unwrap();
        assert_eq!(v02.first_failure(&json!({"builder": {"id": "2"}})), None);
        assert!(v02
            .first_failure(&json!({"builder": {}}))
            .unwrap()
            .contains("absent"));
    }

    #[test]
    fn operators_are_total() {
        let r = req("predicateType: t\nconditions:\n  - {path: /a, exists: true}\n  - {path: /b, exists: false}\n  - {path: /c, matches: \"x+\"}\n").unwrap();
        assert_eq!(r.first_failure(&json!({"a": 1, "c": "xx"})), None);
        assert!(r
            .first_failure(&json!({"a": 1, "b": 2, "c": "xx"}))
            .is_some());
        assert!(r
            .first_failure(&json!({"a": 1, "c": 5}))
            .unwrap()
            .contains("not a string"));
        assert!(r
            .first_failure(&json!({"a": 1}))
            .unwrap()
            .contains("absent"));
    }

    #[test]
    fn invalid_requirements() {
        assert!(req("predicateType: t\nconditions:\n  - {path: /a}\n")
            .unwrap_err()
            .contains("exactly one"));
        assert!(
            req("predicateType: t\nconditions:\n  - {path: /a, exists: true, equals: 1}\n")
                .is_err()
        );
        assert!(
            req("predicateType: t\nconditions:\n  - {path: a, exists: true}\n")
                .unwrap_err()
                .contains("JSON pointer")
        );
        assert!(
            req("predicateType: t\nconditions:\n  - {path: /a, matches: \"(\"}\n")
                .unwrap_err()
                .contains("regular expression")
        );
        assert!(req("predicateType: t\nconditions:\n  - {path: /a, contains: 1}\n").is_err());
        assert!(req("predicateType: \"\"\n").is_err());
    }
}
