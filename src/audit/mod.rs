//! Looking beyond the managed keys: `inventory` lists every service account and key on the server,
//! `hygiene` (opt-in) retires keys nobody uses and reports the rest. Both work on one listing and
//! never touch a key a store holds (the engine's key guard).

pub mod hygiene;
pub mod inventory;
