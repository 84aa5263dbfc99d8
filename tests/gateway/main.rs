//! Integration tests: the gateway, echo upstreams and clients on 127.0.0.1, port 0, real HTTP.
//!
//! One test binary (cargo links one executable per file under tests/), modules by concern.

mod support;

mod admin;
mod auth;
mod child;
mod cli;
mod demo;
mod forward;
mod h2;
mod jwt_attacks;
mod keys;
mod operations;
mod paths;
mod ratelimit;
mod redis;
mod slow_clients;
mod smuggling;
mod tls;
mod upgrade;
mod upstream_conns;
