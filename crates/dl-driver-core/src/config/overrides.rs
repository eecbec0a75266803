//! DLIO's Hydra-style command-line overrides: `++workload.a.b=v`, `+workload.a.b=v`, `workload.a.b=v`, `~workload.a.b`.
//!
//! Values are typed the way Hydra types them: int, float, bool (any case), null, `[lists]`, `{dicts}`,
//! quoted strings; anything else is a string. `hydra.*` overrides are accepted and kept aside.

use serde_yaml::{Mapping, Value};

use super::error::ConfigError;

/// How an override treats a key that is (or is not) already in the workload YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideKind {
    /// `key=v`: the key must already exist (Hydra's rule).
    Replace,
    /// `+key=v`: the key must not exist yet.
    Add,
    /// `++key=v`: set, creating the key and its parents if needed.
    Force,
    /// `~key`: delete the key.
    Delete,
}

/// Which config an override addresses.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `workload.a.b`: a key of the workload config, stored without the `workload.` prefix.
    Workload(Vec<String>),
    /// `hydra.a.b`: Hydra's own settings (run dir, output subdir, ...).
    Hydra(Vec<String>),
}

/// One parsed command-line override.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub text: String,
    pub kind: OverrideKind,
    pub target: Target,
    pub value: Value,
}

impl Override {
    /// Parses one override as written on DLIO's command line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let err = |problem: String| ConfigError::Override { text: redact(text), problem };
        let (kind, rest) = if let Some(r) = text.strip_prefix("++") {
            (OverrideKind::Force, r)
        } else if let Some(r) = text.strip_prefix('+') {
            (OverrideKind::Add, r)
        } else if let Some(r) = text.strip_prefix('~') {
            (OverrideKind::Delete, r)
        } else {
            (OverrideKind::Replace, text)
        };
        let (key, raw_value) = match (kind, rest.split_once('=')) {
            (_, Some((k, v))) => (k, Some(v)),
            (OverrideKind::Delete, None) => (rest, None),
            (_, None) => return Err(err("expected KEY=VALUE, e.g. ++workload.train.epochs=1".into())),
        };
        let key = key.trim();
        let parts: Vec<String> = key.split('.').map(str::to_string).collect();
        if key.is_empty() || parts.iter().any(|p| p.is_empty() || !p.chars().all(is_key_char)) {
            return Err(err(format!(
                "'{key}' is not a valid key path (dot-separated names of letters, digits, '_' and '-')"
            )));
        }
        let value = match raw_value {
            Some(v) => parse_value(v).map_err(err)?,
            None => Value::Null,
        };
        let target = match parts[0].as_str() {
            "workload" if parts.len() > 1 => Target::Workload(parts[1..].to_vec()),
            "hydra" => Target::Hydra(parts[1..].to_vec()),
            "workload" => return Err(err("replacing the whole workload is not supported; use workload=NAME".into())),
            first => {
                return Err(err(format!(
                    "unknown config group '{first}': overrides address workload.<section>.<key> (or hydra.*)"
                )))
            }
        };
        Ok(Self { text: text.to_string(), kind, target, value })
    }

    /// A `++workload.<path>=value` override with an already-typed value (from Python's `overrides={...}`).
    pub fn force(path: &str, value: Value) -> Result<Self, ConfigError> {
        let path = path.strip_prefix("workload.").unwrap_or(path);
        let mut parsed = Self::parse(&format!("++workload.{path}=null"))?;
        parsed.text = format!("++workload.{path}={}", super::error::show(&value));
        parsed.value = value;
        Ok(parsed)
    }

    /// The override as written, with the value hidden when the key holds a credential.
    pub fn redacted_text(&self) -> String {
        if super::schema::contains_secret(&self.value) {
            let key = self.text.split_once('=').map_or(self.text.as_str(), |(k, _)| k);
            return format!("{key}=***");
        }
        redact(&self.text)
    }

    /// Applies a workload override to the raw YAML tree with Hydra's rules.
    pub fn apply(&self, root: &mut Value) -> Result<(), ConfigError> {
        let Target::Workload(path) = &self.target else { return Ok(()) };
        let err = |problem: String| ConfigError::Override { text: self.redacted_text(), problem };
        let dotted = path.join(".");
        if !root.is_mapping() {
            *root = Value::Mapping(Mapping::new());
        }
        let (last, parents) = path.split_last().expect("override paths are never empty");
        let mut node = root;
        for (depth, part) in parents.iter().enumerate() {
            let map = node
                .as_mapping_mut()
                .ok_or_else(|| err(format!("workload.{} is a value, not a section", parents[..depth].join("."))))?;
            let key = Value::String(part.clone());
            if !map.contains_key(&key) {
                if self.kind == OverrideKind::Replace || self.kind == OverrideKind::Delete {
                    return Err(err(missing_key_message(&dotted)));
                }
                map.insert(key.clone(), Value::Mapping(Mapping::new()));
            }
            node = map.get_mut(&key).expect("inserted above");
        }
        let map = node
            .as_mapping_mut()
            .ok_or_else(|| err(format!("workload.{} is a value, not a section", parents.join("."))))?;
        let key = Value::String(last.clone());
        let exists = map.contains_key(&key);
        match self.kind {
            OverrideKind::Replace | OverrideKind::Delete if !exists => return Err(err(missing_key_message(&dotted))),
            OverrideKind::Add if exists => {
                return Err(err(format!(
                    "workload.{dotted} is already set in the workload; use ++workload.{dotted}=... to override it"
                )))
            }
            OverrideKind::Delete => {
                map.remove(&key);
            }
            _ => {
                map.insert(key, self.value.clone());
            }
        }
        Ok(())
    }
}

/// Hides the value of `key=value` when the key names a credential.
/// Hides the value of `key=value` when the key names a credential or the value text mentions one (a dict).
fn redact(text: &str) -> String {
    match text.split_once('=') {
        Some((key, value))
            if super::schema::is_secret_key(key.rsplit('.').next().unwrap_or(key))
                || value.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(super::schema::is_secret_key) =>
        {
            format!("{key}=***")
        }
        _ => text.to_string(),
    }
}

fn missing_key_message(dotted: &str) -> String {
    format!("workload.{dotted} is not in the workload YAML, so it cannot be replaced; use ++workload.{dotted}=... to add it")
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Parses an override value with Hydra's typing rules.
pub fn parse_value(text: &str) -> Result<Value, String> {
    let mut parser = ValueParser { chars: text.chars().collect(), pos: 0 };
    parser.skip_ws();
    if parser.at_end() {
        // `key=` is an empty string in Hydra.
        return Ok(Value::String(String::new()));
    }
    let value = parser.element(true)?;
    parser.skip_ws();
    if !parser.at_end() {
        return Err(format!("unexpected '{}' at position {} of the value", parser.chars[parser.pos], parser.pos + 1));
    }
    Ok(value)
}

struct ValueParser {
    chars: Vec<char>,
    pos: usize,
}

impl ValueParser {
    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn element(&mut self, top_level: bool) -> Result<Value, String> {
        self.skip_ws();
        match self.peek() {
            Some('[') => self.list(),
            Some('{') => self.dict(),
            Some(q @ ('\'' | '"')) => self.quoted(q),
            Some(_) => self.primitive(top_level),
            None => Err("a value is missing".into()),
        }
    }

    fn list(&mut self) -> Result<Value, String> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(']') {
            self.pos += 1;
            return Ok(Value::Sequence(items));
        }
        loop {
            items.push(self.element(false)?);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(']') => {
                    self.pos += 1;
                    return Ok(Value::Sequence(items));
                }
                _ => return Err("a list is not closed: expected ',' or ']'".into()),
            }
        }
    }

    fn dict(&mut self) -> Result<Value, String> {
        self.pos += 1;
        let mut map = Mapping::new();
        self.skip_ws();
        if self.peek() == Some('}') {
            self.pos += 1;
            return Ok(Value::Mapping(map));
        }
        loop {
            self.skip_ws();
            let start = self.pos;
            while self.peek().is_some_and(is_key_char) {
                self.pos += 1;
            }
            let key: String = self.chars[start..self.pos].iter().collect();
            self.skip_ws();
            if key.is_empty() || self.peek() != Some(':') {
                return Err("a dict entry must look like key: value".into());
            }
            self.pos += 1;
            let value = self.element(false)?;
            map.insert(Value::String(key), value);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {
                    self.pos += 1;
                    return Ok(Value::Mapping(map));
                }
                _ => return Err("a dict is not closed: expected ',' or '}'".into()),
            }
        }
    }

    fn quoted(&mut self, quote: char) -> Result<Value, String> {
        self.pos += 1;
        let mut out = String::new();
        while let Some(c) = self.peek() {
            self.pos += 1;
            if c == '\\' && matches!(self.peek(), Some(n) if n == quote || n == '\\') {
                out.push(self.peek().expect("checked"));
                self.pos += 1;
            } else if c == quote {
                return Ok(Value::String(out));
            } else {
                out.push(c);
            }
        }
        Err(format!("the quoted string is not closed: a {quote} is missing"))
    }

    fn primitive(&mut self, top_level: bool) -> Result<Value, String> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            match c {
                '\\' => {
                    self.pos += 1;
                    let escaped = self.peek().ok_or("the value ends with a lone backslash")?;
                    out.push(escaped);
                    self.pos += 1;
                }
                ',' if top_level => {
                    return Err("comma-separated values are a Hydra sweep, which needs --multirun; \
                                use [a,b] for a list or quote the value"
                        .into())
                }
                ',' | ']' | '}' => break,
                '[' | '{' | '\'' | '"' => {
                    return Err(format!("unexpected '{c}' inside an unquoted value; quote the value"))
                }
                _ => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        Ok(type_primitive(out.trim()))
    }
}

/// Types an unquoted Hydra primitive: int, float, bool, null, else string.
fn type_primitive(text: &str) -> Value {
    let lower = text.to_ascii_lowercase();
    match lower.as_str() {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        "null" => return Value::Null,
        _ => {}
    }
    let digits = text.replace('_', "");
    if is_int(text) {
        if let Ok(i) = digits.parse::<i64>() {
            return Value::Number(i.into());
        }
        if let Ok(u) = digits.parse::<u64>() {
            return Value::Number(u.into());
        }
    }
    if is_float(&lower) {
        let unsigned = lower.trim_start_matches(['+', '-']);
        let negative = lower.starts_with('-');
        let f = match unsigned {
            "inf" => f64::INFINITY,
            "nan" => f64::NAN,
            _ => digits.parse::<f64>().unwrap_or(f64::NAN),
        };
        return Value::Number(if negative && unsigned == "inf" { -f } else { f }.into());
    }
    Value::String(text.to_string())
}

fn is_int(text: &str) -> bool {
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    !body.is_empty()
        && body.chars().next().is_some_and(|c| c.is_ascii_digit())
        && body.chars().all(|c| c.is_ascii_digit() || c == '_')
        && (body == "0" || !body.starts_with('0'))
}

fn is_float(lower: &str) -> bool {
    let body = lower.strip_prefix(['+', '-']).unwrap_or(lower);
    if body == "inf" || body == "nan" {
        return true;
    }
    let (mantissa, exponent) = match body.split_once('e') {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '_');
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => (digits(a) || a.is_empty()) && (digits(b) || b.is_empty()) && !(a.is_empty() && b.is_empty()),
        None => digits(mantissa) && exponent.is_some(),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Value {
        parse_value(text).unwrap()
    }

    #[test]
    fn types_primitives_like_hydra() {
        assert_eq!(v("16"), Value::Number(16.into()));
        assert_eq!(v("-3"), Value::Number((-3).into()));
        assert_eq!(v("1_000"), Value::Number(1000.into()));
        assert_eq!(v("0.5"), Value::Number(0.5.into()));
        assert_eq!(v("1e3"), Value::Number(1000.0.into()));
        assert_eq!(v(".5"), Value::Number(0.5.into()));
        assert_eq!(v("True"), Value::Bool(true));
        assert_eq!(v("false"), Value::Bool(false));
        assert_eq!(v("FALSE"), Value::Bool(false));
        assert_eq!(v("null"), Value::Null);
        assert_eq!(v("/data/unet3d"), Value::String("/data/unet3d".into()));
        assert_eq!(v("s3://bucket/x"), Value::String("s3://bucket/x".into()));
        assert_eq!(v("007"), Value::String("007".into()));
        assert_eq!(v("'16'"), Value::String("16".into()));
        assert_eq!(v("\"true\""), Value::String("true".into()));
        assert_eq!(v(""), Value::String(String::new()));
    }

    #[test]
    fn parses_lists_and_dicts() {
        assert_eq!(v("[1, 2.5, a]"), serde_yaml::from_str::<Value>("[1, 2.5, a]").unwrap());
        assert_eq!(v("[]"), Value::Sequence(vec![]));
        assert_eq!(v("[[1,2],[3]]"), serde_yaml::from_str::<Value>("[[1,2],[3]]").unwrap());
        assert_eq!(v("{mean: 1.5, stdev: 0.1}"), serde_yaml::from_str::<Value>("{mean: 1.5, stdev: 0.1}").unwrap());
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in ["[1,2", "{a 1}", "'abc", "1,2", "a[b", "{a: 1"] {
            assert!(parse_value(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn parses_override_kinds_and_targets() {
        let o = Override::parse("++workload.train.epochs=3").unwrap();
        assert_eq!(o.kind, OverrideKind::Force);
        assert_eq!(o.target, Target::Workload(vec!["train".into(), "epochs".into()]));
        assert_eq!(o.value, Value::Number(3.into()));
        assert_eq!(Override::parse("+workload.a.b=1").unwrap().kind, OverrideKind::Add);
        assert_eq!(Override::parse("workload.a.b=1").unwrap().kind, OverrideKind::Replace);
        assert_eq!(Override::parse("~workload.a.b").unwrap().kind, OverrideKind::Delete);
        assert!(matches!(Override::parse("++hydra.run.dir=/x").unwrap().target, Target::Hydra(_)));
    }

    #[test]
    fn rejects_malformed_overrides() {
        for (bad, needle) in [
            ("++workload.train.epochs", "KEY=VALUE"),
            ("++workload..epochs=1", "not a valid key path"),
            ("++dataset.num_files_train=4", "unknown config group 'dataset'"),
            ("++workload=3", "whole workload"),
            ("++workload.train.epochs=[1", "not closed"),
        ] {
            let e = Override::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn never_shows_credentials_inside_dict_values() {
        let text = "++workload.storage.storage_options={region: x, secret_access_key: s3cr3t}";
        assert_eq!(Override::parse(text).unwrap().redacted_text(), "++workload.storage.storage_options=***");
        let broken = "++workload.storage.storage_options={secret_access_key: s3cr3t";
        assert!(!Override::parse(broken).unwrap_err().to_string().contains("s3cr3t"));
        let typed: Value = serde_yaml::from_str("{account_key: s3cr3t}").unwrap();
        let o = Override::force("storage.storage_options", typed).unwrap();
        assert!(!o.redacted_text().contains("s3cr3t"));
        assert!(super::super::schema::is_secret_key("azure_storage_master_key"));
        assert!(!super::super::schema::is_secret_key("region"));
    }

    #[test]
    fn never_shows_credentials() {
        let e = Override::parse("++workload.storage.storage_options.secret_access_key=[s3cr3t").unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let o = Override::parse("++workload.storage.storage_options.secret_access_key=s3cr3t").unwrap();
        assert_eq!(o.redacted_text(), "++workload.storage.storage_options.secret_access_key=***");
        let o = Override::parse("++workload.train.epochs=3").unwrap();
        assert_eq!(o.redacted_text(), "++workload.train.epochs=3");
    }

    #[test]
    fn applies_with_hydra_rules() {
        let mut root: Value = serde_yaml::from_str("train: {epochs: 5}").unwrap();
        Override::parse("workload.train.epochs=2").unwrap().apply(&mut root).unwrap();
        Override::parse("++workload.dataset.num_files_train=4").unwrap().apply(&mut root).unwrap();
        assert_eq!(root["train"]["epochs"], Value::Number(2.into()));
        assert_eq!(root["dataset"]["num_files_train"], Value::Number(4.into()));
        let e = Override::parse("workload.train.seed=1").unwrap().apply(&mut root).unwrap_err();
        assert!(e.to_string().contains("++workload.train.seed"), "{e}");
        let e = Override::parse("+workload.train.epochs=1").unwrap().apply(&mut root).unwrap_err();
        assert!(e.to_string().contains("already set"), "{e}");
        Override::parse("~workload.train.epochs").unwrap().apply(&mut root).unwrap();
        assert!(root["train"].get("epochs").is_none());
        let e = Override::parse("++workload.train.epochs.x=1").unwrap();
        let mut scalar: Value = serde_yaml::from_str("train: {epochs: 5}").unwrap();
        assert!(e.apply(&mut scalar).unwrap_err().to_string().contains("is a value, not a section"));
    }
}
