//! The function bodies, each with its settings and event: [`admin`] (`add_backend`,
//! `list_backends`, `remove_backend`), [`clients`] (`add_client`, `list_clients`,
//! `remove_client`), [`health_checker`], [`config_renderer`], [`ecs_updater`], and [`usage`]
//! (what the config agent publishes of the gate's counters). The top layer: nothing imports it.

pub mod admin;
pub mod clients;
pub mod config_renderer;
pub mod ecs_updater;
pub mod health_checker;
pub mod usage;
