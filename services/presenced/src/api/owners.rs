//! The shard owners as the api role and the admin route reach them: every
//! change is a command to `shard.<k>`, and documents are checked first.

use super::ApiError;
use crate::names::shard_subject;
use bytes::Bytes;
use presence_core::commands::{Command, Reply};
use presence_core::packages::Registry;
use presence_core::{shard_of, Aor};
use presence_store::{BusError, Requests};
use std::sync::Arc;

use super::SHARD_WAIT;

/// The owners of the shards: where every change goes, from the api role
/// and from the operations server's `/admin/hard-state` alike.
#[derive(Clone)]
pub struct Owners {
    pub bus: Arc<dyn Requests<Command, Reply>>,
    pub shards: u32,
}

impl Owners {
    /// Ask `aor`'s shard owner to do `cmd`; its refusal as an [`ApiError`].
    pub async fn ask(&self, aor: &str, cmd: Command) -> Result<Reply, ApiError> {
        let subject = shard_subject(shard_of(aor, self.shards));
        match self.bus.request(&subject, cmd, SHARD_WAIT).await {
            Ok(Reply::Refused(why)) => Err(ApiError::refused(why)),
            Ok(r) => Ok(r),
            Err(BusError::NoResponders(_)) | Err(BusError::Timeout) => Err(ApiError::Unavailable(
                "the shard owner is unavailable; retry".into(),
            )),
            Err(e) => Err(ApiError::Unavailable(e.to_string())),
        }
    }

    /// Set (`Some`, a document [`check_document`] accepted) or clear
    /// `aor`'s hard state for `event`.
    pub async fn hard_state(
        &self,
        aor: &Aor,
        event: String,
        body: Option<Bytes>,
    ) -> Result<(), ApiError> {
        let cmd = Command::SetHardState {
            aor: aor.to_string(),
            event,
            body,
        };
        self.ask(aor.as_str(), cmd).await.map(|_| ())
    }
}

/// A document given for `event` (a publication or hard state): its content
/// type (`content_type`, or the package's first when empty) must be one the
/// package takes and the body must parse. The content type and the body.
pub fn check_document(
    packages: &Registry,
    event: &str,
    content_type: &str,
    document: &[u8],
) -> Result<(String, Bytes), ApiError> {
    let package = packages
        .get(event)
        .ok_or_else(|| ApiError::Invalid(format!("event {event:?} is not served")))?;
    let ct = if content_type.is_empty() {
        package.publish_types().first().copied().unwrap_or("")
    } else {
        content_type
    };
    if !package.publish_types().contains(&ct) {
        return Err(ApiError::Invalid(format!(
            "content type {ct:?} is not accepted for {event} (accepted: {})",
            package.publish_types().join(", ")
        )));
    }
    package
        .check_body(document)
        .map_err(|why| ApiError::Invalid(format!("malformed document: {why}")))?;
    Ok((ct.to_string(), Bytes::copy_from_slice(document)))
}
