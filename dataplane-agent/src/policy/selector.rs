//! Label selectors (`matchLabels` + `matchExpressions`), validated and in a canonical form:
//! two selectors that match the same way compare equal, so identical peers of different
//! policies share one identity class.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::model::{Ctx, Problem, ValidationError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One requirement; a selector matches when all of its requirements do.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
    /// Non-empty for `In`/`NotIn`, empty otherwise.
    pub values: BTreeSet<String>,
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // As in Kubernetes: an absent label satisfies NotIn.
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values = || self.values.iter().cloned().collect::<Vec<_>>().join(",");
        match self.op {
            Operator::In if self.values.len() == 1 => write!(f, "{}={}", self.key, values()),
            Operator::In => write!(f, "{} in ({})", self.key, values()),
            Operator::NotIn if self.values.len() == 1 => {
                write!(f, "{}!={}", self.key, values())
            }
            Operator::NotIn => write!(f, "{} notin ({})", self.key, values()),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A validated label selector. Empty: matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    /// Sorted and deduplicated.
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches everything.
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Validate `sel`; `field` is its path, for errors.
    pub(crate) fn from_k8s(
        ctx: &Ctx,
        field: &str,
        sel: &LabelSelector,
    ) -> Result<Selector, ValidationError> {
        let mut requirements = BTreeSet::new();
        for (key, value) in sel.match_labels.iter().flatten() {
            requirements.insert(Requirement {
                key: key.clone(),
                op: Operator::In,
                values: BTreeSet::from([value.clone()]),
            });
        }
        for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            if expr.key.is_empty() {
                return Err(ctx.err(format!("{at}.key"), Problem::Missing));
            }
            let op = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(ctx.err(
                        format!("{at}.operator"),
                        Problem::UnknownValue {
                            value: other.into(),
                            expected: "In, NotIn, Exists or DoesNotExist",
                        },
                    ))
                }
            };
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            match op {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err(ctx.err(
                        format!("{at}.values"),
                        Problem::Constraint("must be non-empty when operator is In or NotIn"),
                    ))
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err(ctx.err(
                        format!("{at}.values"),
                        Problem::Constraint(
                            "must be empty when operator is Exists or DoesNotExist",
                        ),
                    ))
                }
                _ => {}
            }
            requirements.insert(Requirement {
                key: expr.key.clone(),
                op,
                values,
            });
        }
        Ok(Selector {
            requirements: requirements.into_iter().collect(),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("<all>");
        }
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(yaml: &str) -> Result<Selector, ValidationError> {
        let ctx = Ctx::new("NetworkPolicy", Some("ns"), Some("p"));
        Selector::from_k8s(
            &ctx,
            "spec.podSelector",
            &serde_yaml::from_str(yaml).unwrap(),
        )
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = sel("{}").unwrap();
        assert!(s.is_everything());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
        assert_eq!(s.to_string(), "<all>");
    }

    #[test]
    fn each_operator() {
        let none = labels(&[]);
        let web = labels(&[("app", "web")]);
        let db = labels(&[("app", "db")]);
        let cases = [
            ("{matchLabels: {app: web}}", [false, true, false]),
            (
                "{matchExpressions: [{key: app, operator: In, values: [web, api]}]}",
                [false, true, false],
            ),
            (
                "{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}",
                [true, false, true],
            ),
            (
                "{matchExpressions: [{key: app, operator: Exists}]}",
                [false, true, true],
            ),
            (
                "{matchExpressions: [{key: app, operator: DoesNotExist}]}",
                [true, false, false],
            ),
        ];
        for (yaml, expect) in cases {
            let s = sel(yaml).unwrap();
            let got = [s.matches(&none), s.matches(&web), s.matches(&db)];
            assert_eq!(got, expect, "{yaml}");
        }
    }

    #[test]
    fn labels_and_expressions_are_anded_and_canonical() {
        let a = sel("{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In, values: [b, a]}]}")
            .unwrap();
        let b = sel("{matchExpressions: [{key: tier, operator: In, values: [a, b]}, {key: app, operator: In, values: [web]}]}")
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "app=web,tier in (a,b)");
        assert!(a.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!a.matches(&labels(&[("app", "web"), ("tier", "c")])));
        assert!(!a.matches(&labels(&[("tier", "a")])));
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        let check = |yaml: &str, field: &str| {
            let err = sel(yaml).unwrap_err();
            assert_eq!(err.field, field, "{yaml}");
            assert_eq!(err.object, "ns/p");
        };
        check(
            "{matchExpressions: [{key: a, operator: Equals, values: [x]}]}",
            "spec.podSelector.matchExpressions[0].operator",
        );
        check(
            "{matchExpressions: [{key: a, operator: Exists}, {key: a, operator: In}]}",
            "spec.podSelector.matchExpressions[1].values",
        );
        check(
            "{matchExpressions: [{key: a, operator: NotIn, values: []}]}",
            "spec.podSelector.matchExpressions[0].values",
        );
        check(
            "{matchExpressions: [{key: a, operator: Exists, values: [x]}]}",
            "spec.podSelector.matchExpressions[0].values",
        );
        check(
            "{matchExpressions: [{key: '', operator: Exists}]}",
            "spec.podSelector.matchExpressions[0].key",
        );
    }
}
