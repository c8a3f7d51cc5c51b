//! `fly-coordinator`: a small, always-on service on Fly's private network
//! that routes requests for a named agent to that agent's Fly Machine (an
//! `agent-runner` machine), waking the machine first.
//!
//! The coordinator keeps no state of its own: which machine belongs to which
//! agent, and which repository a machine serves, live in the machines'
//! `metadata` and `config.env` in the Machines API. A restart loses nothing,
//! and `fly machine list` shows the same truth the coordinator acts on.
//!
//! ```text
//!  client ──▶ Fly proxy ──▶ fly-coordinator ── Machines API: list, start, wait
//!                ▲                │
//!                └── replay ◀─────┘ 409 + fly-replay: app=<runner>;instance=<id>
//!                 │
//!                 ▼
//!          agent-runner machine
//! ```
//!
//! | module | job |
//! |---|---|
//! | [`config`] | CLI and environment → [`config::Config`]; the token is a [`config::Secret`] |
//! | [`machines`] | the Machines API client: typed requests and answers, retries, [`machines::ApiError`] |
//! | [`backoff`] | how long to wait before retrying a Machines API call |
//! | [`agents`] | agent names, and the policy: look up, wake, reuse, create, update, release |
//! | [`releases`] | which runner image agents run: the one the runner app's deploy promoted |
//! | [`routes`] | the axum router: `/agents/{name}` management, replay routing, `/healthz` |
//!
//! Tests drive [`routes::app`] over real HTTP against a mock Machines API.

pub mod agents;
pub mod backoff;
pub mod config;
pub mod machines;
pub mod releases;
pub mod routes;
