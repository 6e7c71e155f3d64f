//! The `filters` query parameter of list endpoints: JSON, either
//! `{"key":["v1","v2"]}` or the legacy `{"key":{"v1":true}}`.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Parsed filters: key to accepted values.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filters(pub BTreeMap<String, Vec<String>>);

impl Filters {
    /// Parses the raw parameter and refuses keys outside `allowed` with
    /// dockerd's message.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self> {
        let raw = match raw {
            None => return Ok(Filters::default()),
            Some(r) if r.trim().is_empty() => return Ok(Filters::default()),
            Some(r) => r,
        };
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| Error::invalid(format!("invalid filter: {e}")))?;
        let obj = value.as_object().ok_or_else(|| Error::invalid("invalid filter: not an object"))?;
        let mut out = BTreeMap::new();
        for (k, v) in obj {
            if !allowed.contains(&k.as_str()) {
                return Err(Error::invalid(format!("invalid filter '{k}'")));
            }
            let values: Vec<String> = match v {
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
                serde_json::Value::Object(m) => m.iter().filter(|(_, on)| on.as_bool() == Some(true)).map(|(k, _)| k.clone()).collect(),
                serde_json::Value::String(s) => vec![s.clone()],
                _ => return Err(Error::invalid(format!("invalid filter '{k}'"))),
            };
            out.insert(k.clone(), values);
        }
        Ok(Filters(out))
    }

    pub fn get(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// A boolean filter such as `dangling=true`; errors on other values as
    /// dockerd does.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            [] => Ok(None),
            [v] if v.eq_ignore_ascii_case("true") || v == "1" => Ok(Some(true)),
            [v] if v.eq_ignore_ascii_case("false") || v == "0" => Ok(Some(false)),
            [v] => Err(Error::invalid(format!("Invalid filter '{key}={v}'"))),
            _ => Err(Error::invalid(format!("invalid filter '{key}': only one value allowed"))),
        }
    }

    /// The `until` filter of prune endpoints (a timestamp or a duration
    /// before now) as Unix seconds.
    pub fn until(&self) -> Result<Option<i64>> {
        match self.get("until") {
            [] => Ok(None),
            [v] => Ok(Some(crate::timefmt::parse_time_arg(v).ok_or_else(|| Error::invalid(format!("invalid filter 'until={v}'")))?.0)),
            _ => Err(Error::invalid("only one value allowed for until")),
        }
    }

    /// Whether `labels` satisfy every `label=k` / `label=k=v` filter.
    pub fn labels_match(&self, key: &str, labels: &BTreeMap<String, String>) -> bool {
        self.get(key).iter().all(|f| match f.split_once('=') {
            Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
            None => labels.contains_key(f.as_str()),
        })
    }

    /// Whether a negated filter (`label!=k`, `label!=k=v`) excludes
    /// `labels`: as dockerd's `matchLabels`, when it is given and `labels`
    /// satisfy every one of its values.
    pub fn labels_excluded(&self, key: &str, labels: &BTreeMap<String, String>) -> bool {
        self.contains(key) && self.labels_match(key, labels)
    }
}

/// Go's `path.Match` glob: `*`, `?`, `[...]` classes, `\` escapes; `*` does
/// not cross `/`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).take_while(|&i| i == 0 || n[i - 1] != '/').any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && n[0] != '/' && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(c) = n.first() else { return false };
                let mut i = 1;
                let negate = p.get(1) == Some(&'^');
                if negate {
                    i += 1;
                }
                let mut matched = false;
                while i < p.len() && p[i] != ']' {
                    if p.get(i + 1) == Some(&'-') && i + 2 < p.len() && p[i + 2] != ']' {
                        matched |= p[i] <= *c && *c <= p[i + 2];
                        i += 3;
                    } else {
                        matched |= p[i] == *c;
                        i += 1;
                    }
                }
                i < p.len() && matched != negate && go(&p[i + 1..], &n[1..])
            }
            Some('\\') if p.len() > 1 => !n.is_empty() && n[0] == p[1] && go(&p[2..], &n[1..]),
            Some(c) => !n.is_empty() && n[0] == *c && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filter_encodings_parse() {
        let a = Filters::parse(Some(r#"{"label":["a=b"]}"#), &["label"]).unwrap();
        let b = Filters::parse(Some(r#"{"label":{"a=b":true}}"#), &["label"]).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn unknown_filter_key_is_refused_with_dockerds_words() {
        let e = Filters::parse(Some(r#"{"bogus":["x"]}"#), &["label"]).unwrap_err();
        assert_eq!(e.message, "invalid filter 'bogus'");
    }

    #[test]
    fn negated_label_filter_excludes_key_or_key_value() {
        let labels = BTreeMap::from([("keep".to_owned(), "yes".to_owned())]);
        let f = |raw: &str| Filters::parse(Some(raw), &["label!"]).unwrap();
        assert!(f(r#"{"label!":["keep"]}"#).labels_excluded("label!", &labels));
        assert!(f(r#"{"label!":["keep=yes"]}"#).labels_excluded("label!", &labels));
        assert!(!f(r#"{"label!":["keep=no"]}"#).labels_excluded("label!", &labels));
        assert!(!f(r#"{"label!":["other"]}"#).labels_excluded("label!", &labels));
        assert!(!Filters::default().labels_excluded("label!", &labels));
    }

    #[test]
    fn glob_star_stops_at_slash() {
        assert!(glob_match("busy*", "busybox:latest"));
        assert!(!glob_match("*", "library/busybox"));
        assert!(glob_match("*/*", "berth/labels"));
        assert!(glob_match("b?sybox", "busybox"));
        assert!(glob_match("[a-c]usybox", "busybox"));
    }
}
