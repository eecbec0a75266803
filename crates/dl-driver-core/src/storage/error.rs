//! Storage errors: each names the URI involved; credentials never appear in them.

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist.
    #[error("{uri}: not found")]
    NotFound { uri: String },
    /// The location cannot be addressed.
    #[error("invalid storage location: {problem}")]
    Location { problem: String },
    /// A storage option is unknown or has a bad value.
    #[error("storage option '{key}' for {uri}: {problem}")]
    Option { uri: String, key: String, problem: String },
    /// The filesystem refuses O_DIRECT.
    #[error("{path}: the filesystem refuses O_DIRECT ({source}); use file:// for this location")]
    DirectUnsupported { path: String, source: std::io::Error },
    /// Anything the backend or the operating system reports.
    #[error("{uri}: {operation} failed: {message}")]
    Backend { uri: String, operation: &'static str, message: String },
}

impl StorageError {
    /// Maps an object_store error, removing every secret value from its message.
    pub fn from_object_store(
        uri: &str,
        operation: &'static str,
        error: &object_store::Error,
        secrets: &[String],
    ) -> Self {
        match error {
            object_store::Error::NotFound { .. } => Self::NotFound { uri: uri.to_string() },
            other => Self::Backend { uri: uri.to_string(), operation, message: redact(&error_chain(other), secrets) },
        }
    }

    /// Maps an I/O error on a local file.
    pub fn from_io(uri: &str, operation: &'static str, error: &std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::NotFound {
            Self::NotFound { uri: uri.to_string() }
        } else {
            Self::Backend { uri: uri.to_string(), operation, message: error.to_string() }
        }
    }

    /// Whether this is a not-found error.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// The error and its sources, joined (object_store puts the useful part in the sources).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// `text` with every occurrence of a secret replaced by `***`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    secrets.iter().filter(|s| s.len() >= 4).fold(text.to_string(), |t, s| t.replace(s.as_str(), "***"))
}
