//! Fuzz target: any bytes, as either encoding, must decode to a command or a
//! protocol error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opcenter_proto::{Encoding, decode_frame};

fuzz_target!(|data: &[u8]| {
    for encoding in Encoding::ALL {
        let _ = decode_frame(encoding, data);
    }
});
