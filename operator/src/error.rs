//! The operator's one error type.

/// Everything that can go wrong in a reconcile or in the operator process.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API call failed: {}", crate::text::api_message(.0))]
    Kube(#[from] kube::Error),
    /// Applying one child object failed: which object, and the API server's own words.
    #[error("applying {kind} {name} failed: {}", crate::text::api_message(.source))]
    Apply {
        /// The child's kind.
        kind: &'static str,
        /// The child's name.
        name: String,
        /// What the API answered.
        source: kube::Error,
    },
    /// An object could not be (de)serialised.
    #[error("serialisation failed: {0}")]
    Serialization(#[from] serde_json::Error),
    /// A child's name is taken by an object this application does not own; nothing was written.
    #[error(
        "{kind} {name} already exists and belongs to {owner}, not to this application; \
         rename the model or the application"
    )]
    NameConflict {
        /// The child's kind.
        kind: &'static str,
        /// The child's name.
        name: String,
        /// Who controls the existing object.
        owner: String,
    },
    /// Sending the usage report failed.
    #[error("usage report failed: {0}")]
    UsageReport(String),
    /// Lost or could not hold the leader lease.
    #[error("leader election: {0}")]
    Leadership(String),
}

/// Every value [`Error::metric_label`] returns (the metrics start them at zero).
pub const METRIC_LABELS: &[&str] = &[
    "conflict",
    "forbidden",
    "rejected",
    "api_error",
    "api_unreachable",
    "serialization",
    "name_conflict",
    "usage_report",
    "leadership",
];

impl Error {
    /// Stable short label for logs, metrics and Events.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(e) | Error::Apply { source: e, .. } => match e {
                kube::Error::Api(s) if s.code == 409 => "conflict",
                kube::Error::Api(s) if s.code == 403 => "forbidden",
                kube::Error::Api(s) if s.code == 422 => "rejected",
                kube::Error::Api(_) => "api_error",
                _ => "api_unreachable",
            },
            Error::Serialization(_) => "serialization",
            Error::NameConflict { .. } => "name_conflict",
            Error::UsageReport(_) => "usage_report",
            Error::Leadership(_) => "leadership",
        }
    }
}

/// Result with the operator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
