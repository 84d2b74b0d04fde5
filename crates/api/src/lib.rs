//! `presence.v1.PresenceApi`, the public gRPC API (proto/presence_api.proto):
//! the generated messages (which also derive serde for the web address
//! book's JSON gateway), the server trait, the client, and the descriptor
//! set for gRPC server reflection.
#![forbid(unsafe_code)]

#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/presence.v1.rs"));
}

/// The encoded `FileDescriptorSet` of proto/presence_api.proto.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/presence_api_descriptor.bin"));

/// The service's full name, as health checks and reflection know it.
pub const SERVICE: &str = "presence.v1.PresenceApi";
