//! zenml-rotator: rotates ZenML service-account API keys into the stores workloads read them from.
//! The binary (`src/main.rs`) only parses the command line; everything it does lives here.
//!
//! Layers, top to bottom (a module uses the ones below it, never one above):
//! - face: `cli` (one file per command), `output` (tables and JSON)
//! - daemon: `daemon` (the loop, signals, reload, backoff)
//! - pass: `pass` (what one pass is, for `once`, `rotate` and `run`)
//! - audit: `audit` (inventory, hygiene)
//! - engine: `engine` (observe, act, write, journal, key guard, events) and `strategy` (rotate, replace)
//! - rules (pure): `engine::decide`, `schedule`
//! - clients: `zenml`, `store`, `notify` (webhooks and audit files)
//! - config: `config`
//! - base: `cron`, `naming`, `time`, `secret`, `durable`, `metrics`, `http`, `fault`, `host`

pub mod audit;
pub mod cli;
pub mod config;
pub mod cron;
pub mod daemon;
pub mod durable;
pub mod engine;
pub mod fault;
pub mod host;
pub mod http;
pub mod metrics;
pub mod naming;
pub mod notify;
pub mod output;
pub mod pass;
pub mod schedule;
pub mod secret;
pub mod store;
pub mod strategy;
#[cfg(test)]
mod testing;
pub mod time;
pub mod trust;
pub mod zenml;
