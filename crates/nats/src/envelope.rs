//! How a value travels on the bus: bytes in, bytes out.
//!
//! Core types travel as the protobuf messages of `proto/presence.proto`;
//! `u32` (the contract suites' payload) as 4 big-endian bytes. Decoding never
//! panics: anything that is not a valid envelope is a [`DecodeError`].

use crate::convert::DecodeError;
use crate::pb;
use presence_core::commands::{Command, NotifyJob, Reply};
use prost::Message;

/// A value that can be put on the bus.
pub trait Envelope: Sized {
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;
}

impl Envelope for Command {
    fn encode(&self) -> Vec<u8> {
        pb::Command::from(self).encode_to_vec()
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        pb::Command::decode(bytes)?.try_into()
    }
}

impl Envelope for Reply {
    fn encode(&self) -> Vec<u8> {
        pb::Reply::from(self).encode_to_vec()
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        pb::Reply::decode(bytes)?.try_into()
    }
}

impl Envelope for NotifyJob {
    fn encode(&self) -> Vec<u8> {
        pb::NotifyJob::from(self).encode_to_vec()
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        pb::NotifyJob::decode(bytes)?.try_into()
    }
}

/// The notifier → edge messages travel as their protobuf form until their
/// Rust types move into presence-core (then they get conversions like the
/// others).
impl Envelope for pb::OutRequest {
    fn encode(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(<pb::OutRequest as Message>::decode(bytes)?)
    }
}

impl Envelope for pb::Outcome {
    fn encode(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(<pb::Outcome as Message>::decode(bytes)?)
    }
}

/// For the contract suites.
impl Envelope for u32 {
    fn encode(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let b: [u8; 4] = bytes.try_into().map_err(|_| DecodeError::Invalid {
            field: "u32",
            reason: format!("{} bytes, want 4", bytes.len()),
        })?;
        Ok(u32::from_be_bytes(b))
    }
}
