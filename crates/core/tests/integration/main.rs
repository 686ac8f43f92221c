//! Integration tests of the core library against real local services: moto_server (DynamoDB,
//! S3, ECS, Lambda), anvil nodes, nginx, the CloudWatch recorder, and scripted (often hostile)
//! HTTP nodes inside the test. Everything is started by `devstack`; a missing program fails
//! the test with instructions (`scripts/install-deps.sh`), never skips it.

mod admin;
mod clients;
mod ecs;
mod health;
mod hostile;
mod renderer;
