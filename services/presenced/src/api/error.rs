//! [`ApiError`]: the one mapping of the api role's refusals (and the shard
//! owners' [`Refusal`]s) to gRPC statuses and HTTP answers.

use presence_core::commands::{Quota, Refusal};

/// Why a call is refused: the one place that says which gRPC status (and
/// HTTP status, for the browser's gateway) each answer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    Invalid(String),
    NotFound(String),
    Unauthenticated,
    Denied(String),
    Exhausted(String),
    Unavailable(String),
    /// The store failed.
    Internal,
}

impl ApiError {
    pub fn status(&self) -> tonic::Status {
        match self {
            ApiError::Invalid(m) => tonic::Status::invalid_argument(m),
            ApiError::NotFound(m) => tonic::Status::not_found(m),
            ApiError::Unauthenticated => {
                tonic::Status::unauthenticated("a valid bearer token is required")
            }
            ApiError::Denied(m) => tonic::Status::permission_denied(m),
            ApiError::Exhausted(m) => tonic::Status::resource_exhausted(m),
            ApiError::Unavailable(m) => tonic::Status::unavailable(m),
            ApiError::Internal => tonic::Status::internal("the store failed; retry"),
        }
    }

    /// The HTTP status of the same answer.
    pub fn http(&self) -> (u16, String) {
        let s = self.status();
        let code = match self {
            ApiError::Invalid(_) => 400,
            ApiError::NotFound(_) => 404,
            ApiError::Unauthenticated => 401,
            ApiError::Denied(_) => 403,
            ApiError::Exhausted(_) => 429,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal => 500,
        };
        (code, s.message().to_string())
    }

    /// A shard owner's refusal.
    pub(super) fn refused(why: Refusal) -> ApiError {
        match why {
            Refusal::UnknownEtag => ApiError::NotFound("no live publication has this ETag".into()),
            Refusal::NoSuchSubscription => ApiError::NotFound("no such subscription".into()),
            Refusal::UnknownUser => ApiError::NotFound("unknown user".into()),
            Refusal::NotRegistered => ApiError::NotFound("nobody is registered there".into()),
            Refusal::PolicyRejected => ApiError::Denied("the presentity's policy refuses".into()),
            Refusal::MissingBody => ApiError::Invalid("a new publication needs a state".into()),
            Refusal::TooMany { what, limit } => ApiError::Exhausted(format!(
                "at most {limit} {}",
                match what {
                    Quota::Publications => "live publications per AoR",
                    Quota::Contacts => "contacts per AoR",
                    Quota::WatcherSubscriptions => "subscriptions per watcher",
                    Quota::Watchers => "watchers per resource",
                }
            )),
            Refusal::DocumentTooLarge { limit } => {
                ApiError::Exhausted(format!("the composed document would exceed {limit} bytes"))
            }
            Refusal::StoreFailed => ApiError::Internal,
            _ => ApiError::Unavailable("the shard owner is unavailable; retry".into()),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        e.status()
    }
}
