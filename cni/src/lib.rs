// SPDX-License-Identifier: Apache-2.0
//! The pod-pacemaker CNI plugin as a library, and the socket protocol it shares with the agent.
//!
//! The binary in `main.rs` is a thin shell over [`plugin::run`]; the agent links this crate only
//! for [`protocol`].

pub mod client;
pub mod cni;
pub mod error;
pub mod heartbeat;
pub mod logger;
pub mod plugin;
pub mod protocol;
