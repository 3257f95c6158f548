//! zenml-rotator: rotates ZenML service-account API keys into the stores workloads read them from.
//! The binary (`src/main.rs`) is only the command line; everything it does lives in these modules.

pub mod backoff;
pub mod config;
pub mod cron;
pub mod daemon;
pub mod decide;
pub mod durable;
pub mod fault;
pub mod http;
pub mod hygiene;
pub mod inventory;
pub mod journal;
pub mod metrics;
pub mod replace;
pub mod report;
pub mod rotation;
pub mod schedule;
pub mod secret;
pub mod store;
pub mod zenml;
