//! Fuzz target: any bytes as a `POST /v1/reports` body must parse to an
//! incident or a message (answered 400), never a panic. The same function the
//! HTTP handler calls, without a server.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opcenter_proto::client::parse_report;

fuzz_target!(|data: &[u8]| {
    let _ = parse_report(data);
});
