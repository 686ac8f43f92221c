//! The records and values everything else is made of: a backend and its URL, a client and its
//! key. Pure; imports nothing above it (docs/architecture.md, "Layers of the core crate").

pub mod backend;
pub mod backend_url;
pub mod client;
