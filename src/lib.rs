//! twofa-authz: answers Envoy (gRPC ext_authz) and nginx (auth_request) from a
//! Keycloak access token and whether that Keycloak session passed a second
//! factor; serves the `/user` API with which users enroll and use factors.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod authz;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod delivery;
pub mod error;
pub mod factor;
pub mod grpc;
pub mod http;
pub mod keycloak;
pub mod metrics;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token;
