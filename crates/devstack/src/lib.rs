//! Local stand-ins: being written.
