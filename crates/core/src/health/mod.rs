//! What a node says and what it is judged: [`probe`] asks it over HTTP, [`judgement`] turns the
//! answers into verdicts without I/O. Imports only [`crate::model`] and the support modules.

pub mod judgement;
pub mod probe;
