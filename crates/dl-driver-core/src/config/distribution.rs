//! Time fields (computation_time, eval_time, preprocess_time): a number, a number with a `_stdev` sibling, or a
//! distribution dict (`{mean, stdev}`, `{type: normal|uniform|gamma|exponential|poisson, ...}`), in seconds.

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

/// A per-step time in seconds, constant or drawn from a distribution (a drawn value is used as its absolute value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    Constant(f64),
    Normal { mean: f64, stdev: f64 },
    Uniform { min: f64, max: f64 },
    Gamma { shape: f64, scale: f64 },
    Exponential { scale: f64 },
    Poisson { lam: f64 },
}

impl Default for Distribution {
    fn default() -> Self {
        Self::Constant(0.0)
    }
}

impl Distribution {
    /// The expected value in seconds (of the signed draw; the absolute value is what is slept).
    pub fn mean(&self) -> f64 {
        match *self {
            Self::Constant(v) | Self::Normal { mean: v, .. } => v,
            Self::Uniform { min, max } => f64::midpoint(min, max),
            Self::Gamma { shape, scale } => shape * scale,
            Self::Exponential { scale } => scale,
            Self::Poisson { lam } => lam,
        }
    }

    /// Builds a distribution from DLIO's forms; `stdev` is the value of a `*_stdev` sibling key, if any.
    pub fn from_value(value: &Value, stdev: Option<f64>) -> Result<Self, String> {
        let number = |v: &Value, what: &str| {
            v.as_f64().ok_or_else(|| format!("{what} must be a number, got {}", super::error::show(v)))
        };
        let dist = match value {
            Value::Number(_) => match stdev {
                Some(s) if s != 0.0 => Self::Normal { mean: number(value, "the time")?, stdev: s },
                _ => Self::Constant(number(value, "the time")?),
            },
            Value::Null => Self::Constant(0.0),
            Value::Mapping(map) => Self::from_mapping(map, stdev, &number)?,
            other => {
                return Err(format!(
                    "expected seconds as a number or a distribution dict, got {}",
                    super::error::show(other)
                ))
            }
        };
        dist.check()?;
        Ok(dist)
    }

    fn from_mapping(
        map: &Mapping,
        stdev: Option<f64>,
        number: &dyn Fn(&Value, &str) -> Result<f64, String>,
    ) -> Result<Self, String> {
        let allowed: &[&str] = match map.get("type").and_then(Value::as_str) {
            None => &["mean", "stdev"],
            Some("normal") => &["type", "mean", "stdev"],
            Some("uniform") => &["type", "min", "max"],
            Some("gamma") => &["type", "shape", "scale"],
            Some("exponential") => &["type", "scale"],
            Some("poisson") => &["type", "lam"],
            Some(other) => {
                return Err(format!(
                    "unknown distribution type '{other}', expected normal, uniform, gamma, exponential or poisson"
                ))
            }
        };
        for key in map.keys() {
            let name = key.as_str().unwrap_or("");
            if !allowed.contains(&name) {
                return Err(format!("unexpected key '{name}' in the distribution, expected {}", allowed.join(", ")));
            }
        }
        let field = |name: &str, default: Option<f64>| match (map.get(name), default) {
            (Some(v), _) => number(v, name),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("the distribution needs '{name}'")),
        };
        Ok(match map.get("type").and_then(Value::as_str) {
            None | Some("normal") => {
                let s = field("stdev", Some(stdev.unwrap_or(0.0)))?;
                let mean = field("mean", None)?;
                if s == 0.0 && map.get("type").is_none() {
                    Self::Constant(mean)
                } else {
                    Self::Normal { mean, stdev: s }
                }
            }
            Some("uniform") => Self::Uniform { min: field("min", None)?, max: field("max", None)? },
            Some("gamma") => Self::Gamma { shape: field("shape", None)?, scale: field("scale", None)? },
            Some("exponential") => Self::Exponential { scale: field("scale", None)? },
            Some(_) => Self::Poisson { lam: field("lam", None)? },
        })
    }

    fn check(&self) -> Result<(), String> {
        let finite = |v: f64, name: &str| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be a finite number, got {v}"))
            }
        };
        match *self {
            Self::Constant(v) => finite(v, "the time"),
            Self::Normal { mean, stdev } => {
                finite(mean, "mean")?;
                finite(stdev, "stdev")?;
                if stdev < 0.0 {
                    return Err(format!("stdev must be >= 0, got {stdev}"));
                }
                Ok(())
            }
            Self::Uniform { min, max } => {
                finite(min, "min")?;
                finite(max, "max")?;
                if min > max {
                    return Err(format!("uniform needs min <= max, got min {min} and max {max}"));
                }
                Ok(())
            }
            Self::Gamma { shape, scale } => {
                if !(shape > 0.0 && scale > 0.0 && shape.is_finite() && scale.is_finite()) {
                    return Err(format!("gamma needs shape > 0 and scale > 0, got shape {shape} and scale {scale}"));
                }
                Ok(())
            }
            Self::Exponential { scale } => {
                if !(scale > 0.0 && scale.is_finite()) {
                    return Err(format!("exponential needs scale > 0, got {scale}"));
                }
                Ok(())
            }
            Self::Poisson { lam } => {
                if !(lam >= 0.0 && lam.is_finite()) {
                    return Err(format!("poisson needs lam >= 0, got {lam}"));
                }
                Ok(())
            }
        }
    }
}

impl Serialize for Distribution {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let entries: Vec<(&str, f64)> = match *self {
            Self::Constant(v) => return serializer.serialize_f64(v),
            Self::Normal { mean, stdev } => vec![("mean", mean), ("stdev", stdev)],
            Self::Uniform { min, max } => vec![("min", min), ("max", max)],
            Self::Gamma { shape, scale } => vec![("shape", shape), ("scale", scale)],
            Self::Exponential { scale } => vec![("scale", scale)],
            Self::Poisson { lam } => vec![("lam", lam)],
        };
        let kind = match self {
            Self::Normal { .. } => "normal",
            Self::Uniform { .. } => "uniform",
            Self::Gamma { .. } => "gamma",
            Self::Exponential { .. } => "exponential",
            _ => "poisson",
        };
        let mut map = serializer.serialize_map(Some(entries.len() + 1))?;
        map.serialize_entry("type", kind)?;
        for (k, v) in entries {
            map.serialize_entry(k, &v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Distribution {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_value(&value, None).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str, stdev: Option<f64>) -> Result<Distribution, String> {
        Distribution::from_value(&serde_yaml::from_str(yaml).unwrap(), stdev)
    }

    #[test]
    fn accepts_every_dlio_form() {
        assert_eq!(parse("0.323", None).unwrap(), Distribution::Constant(0.323));
        assert_eq!(parse("0.3", Some(0.1)).unwrap(), Distribution::Normal { mean: 0.3, stdev: 0.1 });
        assert_eq!(parse("{mean: 0.3, stdev: 0.1}", None).unwrap(), Distribution::Normal { mean: 0.3, stdev: 0.1 });
        assert_eq!(parse("{mean: 0.3}", None).unwrap(), Distribution::Constant(0.3));
        assert_eq!(
            parse("{type: uniform, min: 1, max: 2}", None).unwrap(),
            Distribution::Uniform { min: 1.0, max: 2.0 }
        );
        assert_eq!(parse("{type: gamma, shape: 2, scale: 0.5}", None).unwrap().mean(), 1.0);
        assert_eq!(parse("{type: exponential, scale: 0.2}", None).unwrap().mean(), 0.2);
        assert_eq!(parse("{type: poisson, lam: 3}", None).unwrap().mean(), 3.0);
    }

    #[test]
    fn rejects_bad_distributions() {
        assert!(parse("{type: weibull, a: 1}", None).unwrap_err().contains("weibull"));
        assert!(parse("{type: uniform, min: 3, max: 1}", None).unwrap_err().contains("min <= max"));
        assert!(parse("{type: normal, mean: 1, sdev: 1}", None).unwrap_err().contains("'sdev'"));
        assert!(parse("fast", None).unwrap_err().contains("'fast'"));
        assert!(parse("{type: gamma, shape: 1}", None).unwrap_err().contains("'scale'"));
    }

    #[test]
    fn serializes_to_a_form_that_parses_back() {
        for d in [
            Distribution::Constant(0.5),
            Distribution::Normal { mean: 0.3, stdev: 0.0 },
            Distribution::Uniform { min: 0.1, max: 0.2 },
            Distribution::Poisson { lam: 2.0 },
        ] {
            let text = serde_yaml::to_string(&d).unwrap();
            assert_eq!(serde_yaml::from_str::<Distribution>(&text).unwrap(), d, "{text}");
        }
    }
}
