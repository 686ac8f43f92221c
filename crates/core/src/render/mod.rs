//! What nginx runs, computed without I/O: the [`routing`] plan, the [`options`] of a
//! deployment, the [`gate`]'s policy and Lua configuration, and the [`nginx`] text that holds
//! them. Imports only [`crate::model`] and the support modules.

pub mod gate;
pub mod nginx;
pub mod options;
pub mod routing;
