//! The integration tests, in one test binary (`cargo test --test it`): one module per area, so
//! that GStreamer, ONNX Runtime and the rest are linked once rather than once per file. A test is
//! named `module::test`; `cargo test --test it gpu_probe::` runs one module's tests.
//!
//! The tests run on parallel threads of this one process: a test must not change process-wide
//! state (environment variables, the working directory), and must name its temporary
//! directories after itself (they all end in this process's id). The long end-to-end tests run
//! alone ([`common::exclusive`]); the short ones that load the CPU run beside one another, not
//! beside those ([`common::shared`]).

mod common;

mod cli;
mod config_errors;
mod config_limits;
mod deb_package;
mod detection;
mod determinism;
mod e2e_ground_truth;
mod e2e_http;
mod e2e_kill_vigil;
mod e2e_ota;
mod e2e_reload;
mod e2e_resilience;
mod eval;
mod fleet;
mod fleet_rollout;
mod gpu_probe;
mod homeassistant;
mod http_auth;
mod http_events;
mod http_limits;
mod image_boot;
mod live_browser;
mod live_limits;
mod motion_gate;
mod mqtt_faults;
mod mqtt_tls;
mod ota_hostile;
mod ota_kill;
mod partitions;
mod recording_end;
mod restream;
mod rtsp_loop;
mod rtsp_transport;
mod spool_broker_kill;
mod stream_roles;
mod system_update;
mod systemd_unit;
mod systemd_watchdog;
