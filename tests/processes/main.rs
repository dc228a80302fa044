//! The relay binary as operators run it: start-up refusals, secrets in its output,
//! shutdown, its Jelou simulator, and several replicas sharing real redis-server processes.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod new_user;
mod secrets;
mod shared_store;
mod shutdown;
mod simulator;
mod startup;
