//! `agent-runner`: the thin runner in each agent container.
//!
//! It runs one coding agent (codex by default) in a pseudo-terminal
//! ([`session`]), keeps everything it prints in a capture file
//! ([`capture`]) and on a rendered screen ([`terminal`]), and offers MCP
//! tools to start it and type into it ([`mcp`], [`runner`]) next to plain
//! HTTP endpoints to watch it ([`http`]). What a message may type is
//! decided in [`keys`]; when the machine may be given back, in [`idle`];
//! whether a killed agent ran out of memory, in [`oom`].

pub mod capture;
pub mod config;
pub mod http;
pub mod idle;
pub mod keys;
pub mod mcp;
pub mod oom;
pub mod runner;
pub mod session;
pub mod terminal;
