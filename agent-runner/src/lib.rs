//! `agent-runner`: the thin runner in each agent container.
//!
//! Built so far: [`keys`], what a `message` may type into the agent's
//! terminal. The MCP server (`start`, `message`), the pty session, the
//! capture and `/live` are the rest of issue 4.

pub mod keys;
