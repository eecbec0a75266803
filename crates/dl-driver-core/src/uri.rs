//! Storage locations: a local path or a `scheme://bucket/prefix` URI, parsed and checked once.

use std::fmt;

/// The storage backends dl-driver addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Local files through the page cache (`file://` or a bare path).
    File,
    /// Local files with O_DIRECT (`direct://`).
    Direct,
    S3,
    /// Azure Blob Storage (`az://container/prefix`).
    Az,
    /// Google Cloud Storage (`gs://bucket/prefix`): opens, but no test covers it (no installable GCS emulator
    /// accepts object_store's uploads; docs/storage.md), so messages do not offer it.
    Gs,
    /// An in-process store (`memory://prefix`), for tests and overhead measurements.
    Memory,
}

impl Scheme {
    /// The URI prefix, e.g. `s3://`.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::File => "file://",
            Self::Direct => "direct://",
            Self::S3 => "s3://",
            Self::Az => "az://",
            Self::Gs => "gs://",
            Self::Memory => "memory://",
        }
    }

    fn has_bucket(self) -> bool {
        matches!(self, Self::S3 | Self::Az | Self::Gs)
    }
}

/// A parsed storage location.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StorageUri {
    pub scheme: Scheme,
    /// Bucket or container for object stores; empty for local and memory locations.
    pub bucket: String,
    /// The path: a filesystem path for local schemes, an object key prefix (no leading or trailing `/`) otherwise.
    pub path: String,
}

impl StorageUri {
    /// Parses a location; a string without `scheme://` is a local path.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((scheme_text, rest)) = text.split_once("://") else {
            if text.is_empty() {
                return Err("expected a path or a URI, got an empty string".into());
            }
            return Ok(Self { scheme: Scheme::File, bucket: String::new(), path: trim_local(text) });
        };
        let scheme = match scheme_text {
            "file" => Scheme::File,
            "direct" => Scheme::Direct,
            "s3" => Scheme::S3,
            "az" | "azure" => Scheme::Az,
            "gs" | "gcs" => Scheme::Gs,
            "memory" => Scheme::Memory,
            other => {
                return Err(format!(
                    "unsupported URI scheme '{other}://' in '{text}': expected file://, direct://, s3://, az://, \
                     memory:// or a local path"
                ))
            }
        };
        if !scheme.has_bucket() {
            if rest.is_empty() && scheme != Scheme::Memory {
                return Err(format!("'{text}' has no path after {}", scheme.prefix()));
            }
            return Ok(Self { scheme, bucket: String::new(), path: trim_local(rest) });
        }
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket).map_err(|why| format!("'{text}': {why}"))?;
        let path = path.trim_matches('/').to_string();
        if path.split('/').any(|p| p == "." || p == "..") {
            return Err(format!("'{text}': object keys cannot contain '.' or '..' segments"));
        }
        Ok(Self { scheme, bucket: bucket.to_string(), path })
    }

    /// The location `child` below this one (`child` is relative).
    pub fn join(&self, child: &str) -> Self {
        let child = child.trim_matches('/');
        let path = match (self.path.is_empty(), child.is_empty()) {
            (_, true) => self.path.clone(),
            (true, false) => child.to_string(),
            (false, false) => format!("{}/{child}", self.path.trim_end_matches('/')),
        };
        Self { path, ..self.clone() }
    }
}

/// A local path without trailing slashes (as DLIO strips them), keeping `/` itself.
fn trim_local(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() && path.starts_with('/') {
        "/".into()
    } else {
        trimmed.to_string()
    }
}

fn check_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("the bucket (or container) name is missing".into());
    }
    let ok_chars = bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'));
    if !(3..=63).contains(&bucket.len()) || !ok_chars {
        return Err(format!(
            "bucket '{bucket}' is not a valid name: expected 3-63 lowercase letters, digits, '-', '.' or '_'"
        ));
    }
    Ok(())
}

impl fmt::Display for StorageUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::S3 | Scheme::Az | Scheme::Gs if self.path.is_empty() => {
                write!(f, "{}{}", self.scheme.prefix(), self.bucket)
            }
            Scheme::S3 | Scheme::Az | Scheme::Gs => write!(f, "{}{}/{}", self.scheme.prefix(), self.bucket, self.path),
            // A relative local path has no URI form (`file://data` would name host `data`): show it bare.
            Scheme::File if !self.path.starts_with('/') => f.write_str(&self.path),
            _ => write!(f, "{}{}", self.scheme.prefix(), self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        let u = StorageUri::parse("s3://my-bucket/data/unet3d/").unwrap();
        assert_eq!((u.scheme, u.bucket.as_str(), u.path.as_str()), (Scheme::S3, "my-bucket", "data/unet3d"));
        assert_eq!(u.to_string(), "s3://my-bucket/data/unet3d");
        assert_eq!(StorageUri::parse("az://ctr").unwrap().to_string(), "az://ctr");
        assert_eq!(StorageUri::parse("gs://bkt/x").unwrap().scheme, Scheme::Gs);
        let d = StorageUri::parse("direct:///mnt/nvme/data").unwrap();
        assert_eq!((d.scheme, d.path.as_str()), (Scheme::Direct, "/mnt/nvme/data"));
        let bare = StorageUri::parse("data/unet3d").unwrap();
        assert_eq!((bare.scheme, bare.path.as_str()), (Scheme::File, "data/unet3d"));
        assert_eq!(StorageUri::parse("memory://").unwrap().scheme, Scheme::Memory);
    }

    #[test]
    fn rejects_bad_uris() {
        for (bad, needle) in [
            ("http://host/x", "unsupported URI scheme 'http://'"),
            ("s3://", "bucket (or container) name is missing"),
            ("s3://Bad_Bucket/x", "not a valid name"),
            ("az://a/x", "not a valid name"),
            ("file://", "no path"),
            ("s3://bkt/a/../b", "'..'"),
            ("", "empty"),
        ] {
            let e = StorageUri::parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn joins_children() {
        let u = StorageUri::parse("s3://bkt").unwrap();
        assert_eq!(u.join("train/").to_string(), "s3://bkt/train");
        assert_eq!(u.join("train").join("img_0.npz").to_string(), "s3://bkt/train/img_0.npz");
        assert_eq!(StorageUri::parse("file:///d/").unwrap().join("x").to_string(), "file:///d/x");
    }
}
