//! A real `nats-server` with JetStream on a free port.
