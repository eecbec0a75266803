//! Failed HTTP attempts of the object stores, counted by kind. object_store retries throttling, server errors and
//! broken connections inside its client, so a run that succeeded may still have waited on many of them; every
//! `s3://`, `az://` and `gs://` store of the process sends its requests through [`CountingConnector`], and a run
//! reports the difference of [`snapshot`]s taken at its start and end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::ClientOptions;

/// The kinds, in report order: answers by HTTP status, then failures to get an answer.
pub const KINDS: [&str; 7] =
    ["throttled", "server_error", "client_error", "connect", "timeout", "interrupted", "other"];

static COUNTS: [AtomicU64; KINDS.len()] = [const { AtomicU64::new(0) }; KINDS.len()];

/// Counts per kind (every kind present, zeros included).
pub type RequestErrors = BTreeMap<String, u64>;

/// The kind of a response's status, or `None` for an answer that is not a failure: success, redirects, and the
/// "not found" and "precondition failed" answers that existence checks and conditional writes expect.
pub fn status_kind(status: u16) -> Option<&'static str> {
    match status {
        429 | 503 => Some("throttled"),
        500..=599 => Some("server_error"),
        404 | 412 => None,
        400..=499 => Some("client_error"),
        _ => None,
    }
}

/// The kind of a request that got no answer.
pub fn error_kind(kind: HttpErrorKind) -> &'static str {
    match kind {
        HttpErrorKind::Connect => "connect",
        HttpErrorKind::Timeout => "timeout",
        HttpErrorKind::Request | HttpErrorKind::Interrupted => "interrupted",
        _ => "other",
    }
}

fn count(kind: &str) {
    if let Some(i) = KINDS.iter().position(|k| *k == kind) {
        COUNTS[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The process's counts so far.
pub fn snapshot() -> RequestErrors {
    KINDS.iter().zip(&COUNTS).map(|(k, c)| ((*k).to_string(), c.load(Ordering::Relaxed))).collect()
}

/// What was counted between two snapshots.
pub fn since(before: &RequestErrors) -> RequestErrors {
    snapshot().into_iter().map(|(k, v)| (k.clone(), v.saturating_sub(before.get(&k).copied().unwrap_or(0)))).collect()
}

/// object_store's reqwest client with every failed attempt counted.
#[derive(Debug, Default)]
pub struct CountingConnector;

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Counting(ReqwestConnector::default().connect(options)?)))
    }
}

#[derive(Debug)]
struct Counting(HttpClient);

#[async_trait]
impl HttpService for Counting {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let result = self.0.execute(req).await;
        match &result {
            Ok(response) => {
                if let Some(kind) = status_kind(response.status().as_u16()) {
                    count(kind);
                }
            }
            Err(e) => count(error_kind(e.kind())),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_sort_into_kinds_and_expected_answers_are_not_failures() {
        assert_eq!(status_kind(503), Some("throttled"));
        assert_eq!(status_kind(429), Some("throttled"));
        assert_eq!(status_kind(500), Some("server_error"));
        assert_eq!(status_kind(403), Some("client_error"));
        for fine in [200, 206, 304, 404, 412] {
            assert_eq!(status_kind(fine), None, "{fine}");
        }
        assert_eq!(error_kind(HttpErrorKind::Connect), "connect");
        assert_eq!(error_kind(HttpErrorKind::Interrupted), "interrupted");
        assert_eq!(error_kind(HttpErrorKind::Decode), "other");
    }

    #[test]
    fn a_count_shows_in_the_difference_of_snapshots() {
        assert_eq!(snapshot().len(), KINDS.len());
        let start = snapshot();
        count("throttled");
        count("connect");
        let delta = since(&start);
        // Other tests of this binary may count too: at least these.
        assert!(delta["throttled"] >= 1 && delta["connect"] >= 1);
    }
}
