//! `local-fly`: a local double of the parts of Fly.io's platform the
//! project's three apps depend on, so their whole deploy path runs in tests
//! on one machine (a QEMU guest, whose kernel has an NFS client), faithful
//! to Fly's documented behaviour rather than to any one proxy version:
//!
//! | module | job |
//! |---|---|
//! | [`backends`] | the proxy's view of an app's machines (state, address, services) |
//! | [`app`] | an app's `fly.toml`, and the machine config flyctl makes of it |
//! | [`network`] | the private network: a bridge, a network namespace and `fdaa:` address per machine, the names |
//! | [`runtime`] | one boot of a machine: namespaces, the image's root under a fresh layer, the volume, `/.fly` |
//! | [`platform`] | machines, volumes and apps with Fly's states; start, stop, suspend, update, destroy, wait |
//! | [`api`] | the Machines API subset (and `/.fly/api` in each machine), plus the tests' deploy and push calls |
//! | [`deploy`] | `fly deploy`: first deploy, canary, rolling, immediate; machine checks in throwaway machines |
//! | [`spec`] | what a local Fly runs: region, API token, images, apps |
//! | [`proxy`] | Fly's proxy: HTTP services (`fly-force-instance-id`, `fly-prefer-instance-id`, `fly-replay` in header and JSON form, autostart, concurrency) and raw TCP passed through from the proxy's own address |
//!
//! What it does not model is listed in `fly/local-fly/README.md`.

pub mod api;
pub mod app;
pub mod backends;
pub mod deploy;
pub mod network;
pub mod platform;
pub mod proxy;
pub mod runtime;
pub mod spec;
