pub mod gateway;
pub mod simulator;
