//! Arbitrary bytes as a DNS query from a container to the embedded DNS
//! server: it may drop or refuse them but must not panic, and whatever it
//! answers is a well-formed DNS response that fits a UDP datagram.

#![no_main]

use std::net::Ipv4Addr;
use std::sync::Arc;

use berth_engine::network::dns::{answer_locally, Resolver};
use libfuzzer_sys::fuzz_target;

/// Knows every name (several addresses) and every address.
struct Everything;

impl Resolver for Everything {
    fn lookup_a(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        Some(vec![Ipv4Addr::new(10, 0, 0, (name.len() % 250) as u8 + 1); 1 + name.len() % 40])
    }
    fn lookup_ptr(&self, ip: Ipv4Addr) -> Option<String> {
        Some(format!("c{}.net", u32::from(ip)))
    }
}

fuzz_target!(|data: &[u8]| {
    for udp in [true, false] {
        if let Some(resp) = answer_locally(data, Arc::new(Everything), udp) {
            if udp {
                assert!(resp.len() <= 512, "UDP answer of {} bytes", resp.len());
            }
            assert!(resp.len() >= 12, "answer shorter than a DNS header");
            assert_eq!(resp[..2], data[..2], "answer with another query ID");
            assert!(resp[2] & 0x80 != 0, "answer without the QR bit");
        }
    }
});
