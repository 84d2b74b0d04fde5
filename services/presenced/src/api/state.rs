//! A stored document as the API shows it (`PresenceState`), and the PIDF
//! an API status (basic, activity, note) publishes.

use super::ApiError;
use presence_api::pb;
use presence_core::pidf::escape;
use presence_core::summary::{self, Availability};
use presence_core::View;
use presence_store::Store;

/// The state of (aor, event) now: the composed document if there is one
/// (read in one go with the publications, for the last change time).
pub async fn read(
    store: &dyn Store,
    aor: &str,
    event: &str,
    now_ms: u64,
) -> Result<pb::PresenceState, ApiError> {
    let doc = store
        .document(aor, event)
        .await
        .map_err(|_| ApiError::Internal)?;
    let changed_at_ms = match &doc {
        Some(_) => store
            .publications(aor, event)
            .await
            .map_err(|_| ApiError::Internal)?
            .iter()
            .filter(|p| p.expires_at_ms > now_ms)
            .map(|p| p.modified_ms)
            .max()
            .unwrap_or(0),
        None => 0,
    };
    Ok(of_document(
        aor,
        event,
        doc.as_ref()
            .map(|d| (d.version, d.content_type.as_str(), d.body.as_ref())),
        changed_at_ms,
    ))
}

/// The state a document (version, content type, body) says; `None`: no
/// document, offline.
pub fn of_document(
    aor: &str,
    event: &str,
    doc: Option<(u64, &str, &[u8])>,
    changed_at_ms: u64,
) -> pb::PresenceState {
    let mut s = pb::PresenceState {
        aor: aor.to_string(),
        event: event.to_string(),
        availability: pb::Availability::Offline as i32,
        basic: pb::Basic::Unspecified as i32,
        changed_at_ms,
        ..Default::default()
    };
    let Some((version, content_type, body)) = doc else {
        return s;
    };
    s.version = version;
    s.content_type = content_type.to_string();
    s.document = body.to_vec();
    match event {
        "presence" => {
            let p = summary::presence(body);
            if let Some(p) = &p {
                s.basic = match p.basic {
                    Some(true) => pb::Basic::Open,
                    Some(false) => pb::Basic::Closed,
                    None => pb::Basic::Unspecified,
                } as i32;
                s.activities = p.activities.clone();
                s.note = p.note.clone();
                s.tuples = p
                    .tuples
                    .iter()
                    .map(|t| pb::Tuple {
                        id: t.id.clone(),
                        basic: match t.open {
                            Some(true) => pb::Basic::Open,
                            Some(false) => pb::Basic::Closed,
                            None => pb::Basic::Unspecified,
                        } as i32,
                        contact: t.contact.clone(),
                        note: t.note.clone(),
                    })
                    .collect();
            }
            s.availability = lamp(summary::availability(p.as_ref(), None));
        }
        "dialog" => {
            let d = summary::dialogs(body);
            if let Some(d) = &d {
                s.dialogs = d
                    .iter()
                    .map(|d| pb::DialogState {
                        id: d.id.clone(),
                        state: d.state.clone(),
                        direction: d.direction.clone(),
                        remote: d.remote.clone(),
                    })
                    .collect();
            }
            s.availability = lamp(summary::availability(None, d.as_deref()));
        }
        "message-summary" => {
            if let Some(m) = summary::message_summary(body) {
                s.message_summary = Some(pb::MessageSummary {
                    messages_waiting: m.waiting,
                    account: m.account,
                    voice_message: m.voice,
                });
            }
            s.availability = pb::Availability::Unspecified as i32;
        }
        _ => s.availability = pb::Availability::Unspecified as i32,
    }
    s
}

fn lamp(a: Availability) -> i32 {
    (match a {
        Availability::Available => pb::Availability::Available,
        Availability::Away => pb::Availability::Away,
        Availability::Busy => pb::Availability::Busy,
        Availability::OnThePhone => pb::Availability::OnThePhone,
        Availability::Offline => pb::Availability::Offline,
    }) as i32
}

/// A subscription's state as listed.
pub fn view_name(v: View) -> &'static str {
    match v {
        View::Full => "active",
        View::Neutral => "active (polite-block)",
        View::Pending => "pending",
    }
}

/// The PIDF a status publishes: one tuple (`api`) with the basic status
/// and the note, and an RPID person with the activity (RFC 4480).
pub fn status_pidf(aor: &str, open: bool, activity: &str, note: &str) -> Result<String, ApiError> {
    if activity.len() > 64
        || !activity
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        || activity.starts_with(|c: char| !c.is_ascii_alphabetic()) && !activity.is_empty()
    {
        return Err(ApiError::Invalid(format!(
            "activity {activity:?} is not an RPID activity name (away, busy, on-the-phone, ...)"
        )));
    }
    if note.len() > 1024
        || note
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApiError::Invalid(
            "note is at most 1024 bytes of text".into(),
        ));
    }
    let basic = if open { "open" } else { "closed" };
    let tuple_note = if note.is_empty() {
        String::new()
    } else {
        format!("<note>{}</note>", escape(note))
    };
    let person = if activity.is_empty() {
        String::new()
    } else {
        format!(
            "<dm:person id=\"p-api\"><rpid:activities><rpid:{activity}/></rpid:activities></dm:person>"
        )
    };
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" entity=\"{}\"><tuple id=\"api\"><status><basic>{basic}</basic></status>{tuple_note}</tuple>{person}</presence>",
        escape(aor)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_publishes_a_pidf_that_reads_back() {
        let doc = status_pidf("sip:alice@example.com", true, "away", "back at <3> & 4").unwrap();
        presence_core::pidf::parse(doc.as_bytes()).expect("valid PIDF");
        let s = of_document(
            "sip:alice@example.com",
            "presence",
            Some((3, "application/pidf+xml", doc.as_bytes())),
            0,
        );
        assert_eq!(s.version, 3);
        assert_eq!(s.basic, pb::Basic::Open as i32);
        assert_eq!(s.activities, vec!["away".to_string()]);
        assert_eq!(s.note, "back at <3> & 4");
        assert_eq!(s.availability, pb::Availability::Away as i32);
        let closed = status_pidf("sip:alice@example.com", false, "", "").unwrap();
        let s = of_document(
            "sip:alice@example.com",
            "presence",
            Some((1, "application/pidf+xml", closed.as_bytes())),
            0,
        );
        assert_eq!(s.availability, pb::Availability::Offline as i32);
    }

    #[test]
    fn bad_statuses_are_refused() {
        for activity in ["a b", "<x/>", "9lives", &"a".repeat(65)] {
            assert!(
                status_pidf("sip:a@example.com", true, activity, "").is_err(),
                "{activity:?}"
            );
        }
        assert!(status_pidf("sip:a@example.com", true, "", "\u{0}").is_err());
        assert!(status_pidf("sip:a@example.com", true, "on-the-phone", "").is_ok());
    }

    #[test]
    fn no_document_is_offline() {
        let s = of_document("sip:a@example.com", "presence", None, 0);
        assert_eq!(s.version, 0);
        assert_eq!(s.availability, pb::Availability::Offline as i32);
    }
}
