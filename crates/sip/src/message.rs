//! Parsed messages: rsip's `Uri` and `Headers`, with a method type that also
//! holds extension methods (rsip's `Method` is a closed set, and an unknown
//! method must be answered with 501, not fail to parse).

use crate::headers::{
    self, ContactValue, EventHeader, MediaType, NameAddr, SubscriptionState, Via,
};
use crate::rsip;
use bytes::Bytes;

/// A request method: one rsip knows, or an extension token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Known(rsip::Method),
    Extension(String),
}

impl Method {
    /// Method names are case-sensitive (RFC 3261 §7.1), unlike rsip's parser.
    pub fn from_token(token: &str) -> Method {
        use rsip::Method as M;
        Method::Known(match token {
            "ACK" => M::Ack,
            "BYE" => M::Bye,
            "CANCEL" => M::Cancel,
            "INFO" => M::Info,
            "INVITE" => M::Invite,
            "MESSAGE" => M::Message,
            "NOTIFY" => M::Notify,
            "OPTIONS" => M::Options,
            "PRACK" => M::PRack,
            "PUBLISH" => M::Publish,
            "REFER" => M::Refer,
            "REGISTER" => M::Register,
            "SUBSCRIBE" => M::Subscribe,
            "UPDATE" => M::Update,
            other => return Method::Extension(other.to_string()),
        })
    }

    pub fn as_str(&self) -> &str {
        use rsip::Method as M;
        match self {
            Method::Known(m) => match m {
                M::Ack => "ACK",
                M::Bye => "BYE",
                M::Cancel => "CANCEL",
                M::Info => "INFO",
                M::Invite => "INVITE",
                M::Message => "MESSAGE",
                M::Notify => "NOTIFY",
                M::Options => "OPTIONS",
                M::PRack => "PRACK",
                M::Publish => "PUBLISH",
                M::Refer => "REFER",
                M::Register => "REGISTER",
                M::Subscribe => "SUBSCRIBE",
                M::Update => "UPDATE",
            },
            Method::Extension(s) => s,
        }
    }

    pub fn is(&self, m: rsip::Method) -> bool {
        matches!(self, Method::Known(k) if *k == m)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: rsip::Uri,
    /// The Request-URI exactly as it was on the wire.
    pub uri_text: String,
    pub headers: rsip::Headers,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub reason: String,
    pub headers: rsip::Headers,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// Typed header accessors shared by requests and responses. Lookups are by
/// canonical (long) name: the parser normalises compact forms.
pub trait HeaderAccess {
    fn headers(&self) -> &rsip::Headers;

    /// First value of a header, by case-insensitive name.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))
            .map(|h| h.value())
    }

    /// All values of a header (each header line once; comma lists not split).
    fn header_all<'a>(&'a self, name: &'a str) -> Box<dyn Iterator<Item = &'a str> + 'a> {
        Box::new(
            self.headers()
                .iter()
                .filter(move |h| h.name().eq_ignore_ascii_case(name))
                .map(|h| h.value()),
        )
    }

    /// All elements of a comma-separated list header, over every header line.
    fn list(&self, name: &str) -> Vec<String> {
        self.header_all(name)
            .flat_map(|v| headers::split_list(v).into_iter().map(str::to_string))
            .collect()
    }

    fn call_id(&self) -> Option<&str> {
        self.header("Call-ID")
    }

    /// CSeq number and method.
    fn cseq(&self) -> Option<(u32, String)> {
        headers::parse_cseq(self.header("CSeq")?)
    }

    fn from_addr(&self) -> Option<NameAddr> {
        NameAddr::parse(self.header("From")?)
    }

    fn to_addr(&self) -> Option<NameAddr> {
        NameAddr::parse(self.header("To")?)
    }

    fn vias(&self) -> Vec<String> {
        self.list("Via")
    }

    /// The first Via element over all Via lines, parsed (see [`headers::top_via`]).
    fn top_via(&self) -> Option<Via> {
        headers::top_via(self.headers())
    }

    /// `Expires` as seconds: `None` if absent, `Some(Err)` if malformed.
    fn expires(&self) -> Option<Result<u32, ()>> {
        self.header("Expires").map(headers::parse_delta)
    }

    fn min_expires(&self) -> Option<u32> {
        self.header("Min-Expires")
            .and_then(|v| headers::parse_delta(v).ok())
    }

    fn max_forwards(&self) -> Option<Result<u32, ()>> {
        self.header("Max-Forwards").map(headers::parse_delta)
    }

    fn event(&self) -> Option<EventHeader> {
        EventHeader::parse(self.header("Event")?)
    }

    fn sip_etag(&self) -> Option<&str> {
        self.header("SIP-ETag").map(str::trim)
    }

    fn sip_if_match(&self) -> Option<&str> {
        self.header("SIP-If-Match").map(str::trim)
    }

    fn subscription_state(&self) -> Option<SubscriptionState> {
        SubscriptionState::parse(self.header("Subscription-State")?)
    }

    fn allow_events(&self) -> Vec<String> {
        self.list("Allow-Events")
            .into_iter()
            .map(|e| e.trim().to_ascii_lowercase())
            .collect()
    }

    /// Media types in Accept, lower-cased, parameters dropped. `None` if no
    /// Accept header at all (which is not the same as an empty Accept).
    fn accept(&self) -> Option<Vec<MediaType>> {
        self.header("Accept")?;
        Some(
            self.list("Accept")
                .iter()
                .filter_map(|v| MediaType::parse(v))
                .collect(),
        )
    }

    fn content_type(&self) -> Option<MediaType> {
        MediaType::parse(self.header("Content-Type")?)
    }

    /// Contacts: `*` or name-addrs, over every Contact header line.
    fn contacts(&self) -> Result<Vec<ContactValue>, ()> {
        self.list("Contact")
            .iter()
            .map(|v| ContactValue::parse(v).ok_or(()))
            .collect()
    }
}

impl HeaderAccess for Request {
    fn headers(&self) -> &rsip::Headers {
        &self.headers
    }
}

impl HeaderAccess for Response {
    fn headers(&self) -> &rsip::Headers {
        &self.headers
    }
}

impl Request {
    /// Transaction key of RFC 3261 §17.2.3: branch + sent-by + method (ACK
    /// and CANCEL are not special here: we serve no INVITE).
    pub fn transaction_key(&self) -> Option<String> {
        let via = self.top_via()?;
        // No branch at all is the commonest RFC 2543 case.
        let branch = via.branch.as_deref().unwrap_or("");
        if !branch.starts_with("z9hG4bK") {
            // RFC 2543 peer: fall back on Call-ID + CSeq + From tag.
            let from_tag = self.from_addr().and_then(|f| f.tag).unwrap_or_default();
            return Some(format!(
                "2543|{}|{}|{}|{}",
                self.call_id()?,
                self.header("CSeq")?,
                from_tag,
                via.sent_by()
            ));
        }
        Some(format!("{}|{}|{}", branch, via.sent_by(), self.method))
    }
}
