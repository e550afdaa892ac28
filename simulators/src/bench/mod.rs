//! Benchmarks: commands that print figures, each compared with a ceiling
//! of this machine measured in the same run.

pub mod edge;
pub mod hub;
pub mod orders;
pub mod pos;
pub mod suite;
pub mod wan;
